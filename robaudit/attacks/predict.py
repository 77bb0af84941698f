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


def _draws(model: nn.Module, images: Images, vs: Sequence[Tensor | None], clip: bool, batch_size: int, device,
           out) -> list[Tensor]:
    """``out(logits)`` -> tuple of (B,) tensors, for every draw: each a (len(vs), N) tensor on CPU."""
    dev = model_device(model, device)
    vs_dev = [None if v is None else v.to(dev) for v in vs]
    parts: list[list[Tensor]] = []
    with torch.inference_mode():
        for chunk in _chunks(images):
            for i in range(0, len(chunk), batch_size):
                x = chunk[i:i + batch_size].to(dev, torch.float32)
                outs = [out(model(x if v is None else perturb(x, v, clip))) for v in vs_dev]
                parts.append([torch.stack(col).cpu() for col in zip(*outs, strict=True)])
    if not parts:
        return [torch.empty(len(vs), 0, dtype=torch.long), torch.empty(len(vs), 0)]
    return [torch.cat(col, dim=1) for col in zip(*parts, strict=True)]


def predict_draws(model: nn.Module, images: Images, vs: Sequence[Tensor | None], clip: bool = True,
                  batch_size: int = 128, device=None) -> Tensor:
    """Predictions on ``x + v`` for every ``v`` in ``vs`` (None = clean): LongTensor (len(vs), N) on CPU.

    Each batch of images is read once and evaluated under every draw, so a one-pass chunk iterable works.
    """
    return _draws(model, images, vs, clip, batch_size, device, lambda logits: (logits.argmax(1),))[0]


def score_draws(model: nn.Module, images: Images, vs: Sequence[Tensor | None], clip: bool = True,
                batch_size: int = 128, device=None) -> tuple[Tensor, Tensor]:
    """Predicted class and its softmax score on ``x + v`` for every ``v`` (None = clean): (len(vs), N) each.

    Measuring a UAP, its noise controls and its trajectory is then one pass over the images (eval.run.measure).
    """
    def top(logits: Tensor) -> tuple[Tensor, Tensor]:
        s, k = logits.float().softmax(1).max(1)
        return k, s

    preds, scores = _draws(model, images, vs, clip, batch_size, device, top)
    return preds, scores


def predict(model: nn.Module, images: Images, v: Tensor | None = None, clip: bool = True,
            batch_size: int = 128, device=None) -> Tensor:
    """Predicted classes (LongTensor (N,), CPU) on ``x`` or ``x + v`` (clipped to [0, 1] when ``clip``)."""
    return predict_draws(model, images, [v], clip=clip, batch_size=batch_size, device=device)[0]
