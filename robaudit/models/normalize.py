"""Models own their normalisation: attacks and metrics work in [0, 1] pixel space."""

from __future__ import annotations

import torch
from torch import nn


class Normalized(nn.Module):
    """Wrap ``net`` so that ``forward(x)`` takes images in [0, 1] and applies (x - mean) / std.

    Models whose forward returns something other than a logits tensor (a tuple, a dict with
    ``logits``, timm/torchvision aux outputs) are reduced to the logits tensor here, once.
    """

    def __init__(self, net: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return logits_of(self.net((x - self.mean) / self.std))


def logits_of(out) -> torch.Tensor:
    """The logits tensor of a model output (tensor, tuple/list, dict or an object with ``.logits``)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        for key in ("logits", "out", "output"):
            if key in out:
                return out[key]
        raise TypeError(f"model returned a dict without logits (keys: {sorted(out)})")
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"model returned {type(out).__name__}, not a logits tensor")
