"""Model wrappers: models own their normalisation (attacks and metrics work in [0, 1] pixel space),
and run in channels-last memory format, or under bfloat16 autocast (``--amp``), where that is faster."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from robaudit.core.errors import BadInput


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


class _ChannelsLastInput(nn.Module):
    """Feeds ``model`` its 4-D inputs in channels-last memory format; mirrors the model's train/eval mode."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.training = model.training  # its own flag only: Module.train() would recurse into ``model``

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x)


@contextmanager
def channels_last_model(model: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """``model`` with channels-last weights and inputs for the duration (weights restored to NCHW after).

    oneDNN and cuDNN convolutions run faster in NHWC: forward + backward to the input at batch 32,
    64 px, 2 CPU cores: tf_efficientnet_lite0 1.5-2.4x, resnet18/50 1.0-1.2x (benchmarks/README.md).
    Numbers differ from NCHW's only in float rounding. Yields ``model`` itself when disabled, when it
    has no convolution weights, or when they are channels-last already (the caller owns that state).
    """
    convs = [p for p in model.parameters() if p.dim() == 4]
    if not enabled or not convs or all(p.is_contiguous(memory_format=torch.channels_last) for p in convs):
        yield model
        return
    model.to(memory_format=torch.channels_last)
    try:
        yield _ChannelsLastInput(model)
    finally:
        model.to(memory_format=torch.contiguous_format)


def amp_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 where the device has it. float16 would need loss scaling for input gradients; refused."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise BadInput("--amp needs bfloat16, which this GPU lacks", "drop --amp (Ampere or newer GPUs have it)")
    if device.type not in ("cuda", "cpu"):
        raise BadInput(f"--amp is available on cuda and cpu, not {device.type}", "drop --amp")
    return torch.bfloat16


class Autocast(nn.Module):
    """``model`` under autocast; returns float32 logits."""

    def __init__(self, model: nn.Module, device_type: str, dtype: torch.dtype):
        super().__init__()
        self.model, self.device_type, self.dtype = model, device_type, dtype

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.model(x).float()


@contextmanager
def fast_model(model: nn.Module, device, amp: bool = False):
    """Yield ``model`` (amp off) or an :class:`Autocast` wrapper of it; on CUDA the weights are made
    channels-last for the duration and restored afterwards, so later float32 metrics are unchanged."""
    if not amp:
        yield model
        return
    device = torch.device(device)
    dtype = amp_dtype(device)
    with channels_last_model(model, enabled=device.type == "cuda") as net:
        yield Autocast(net, device.type, dtype).eval()
