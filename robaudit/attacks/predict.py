"""Predictions of a model on images with a perturbation added: the one place attacks and metrics ask the model.

Images are a float tensor (N, C, H, W) in [0, 1] or an iterable of such chunks; a perturbation ``v``
(1, C, H, W) is added and, with ``clip``, x + v clipped to [0, 1].
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from robaudit.attacks.lp import perturb

Images = Tensor | Iterable[Tensor]


def model_device(model: nn.Module, device=None) -> torch.device:
    """``device`` if given, else the device of the model's first parameter (CPU for a parameterless model)."""
    if device is not None:
        return torch.device(device)
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _chunks(images: Images) -> Iterable[Tensor]:
    return [images] if isinstance(images, Tensor) else images


def predict_draws(model: nn.Module, images: Images, vs: Sequence[Tensor | None], clip: bool = True,
                  batch_size: int = 128, device=None) -> Tensor:
    """Predictions on ``x + v`` for every ``v`` in ``vs`` (None = clean): LongTensor (len(vs), N) on CPU.

    Each batch of images is read once and evaluated under every draw, so a one-pass chunk iterable works.
    """
    dev = model_device(model, device)
    vs_dev = [None if v is None else v.to(dev) for v in vs]
    out: list[Tensor] = []
    with torch.inference_mode():
        for chunk in _chunks(images):
            for i in range(0, len(chunk), batch_size):
                x = chunk[i:i + batch_size].to(dev, torch.float32)
                preds = [model(x if v is None else perturb(x, v, clip)).argmax(1) for v in vs_dev]
                out.append(torch.stack(preds).cpu())
    if not out:
        return torch.empty(len(vs), 0, dtype=torch.long)
    return torch.cat(out, dim=1)


def predict(model: nn.Module, images: Images, v: Tensor | None = None, clip: bool = True,
            batch_size: int = 128, device=None) -> Tensor:
    """Predicted classes (LongTensor (N,), CPU) on ``x`` or ``x + v`` (clipped to [0, 1] when ``clip``)."""
    return predict_draws(model, images, [v], clip=clip, batch_size=batch_size, device=device)[0]
