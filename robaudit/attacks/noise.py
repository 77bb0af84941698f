"""Random controls: perturbations of the UAP's norm with no adversarial direction.

kind="uniform" (robaudit's default):
  * L-inf: each pixel uniform in [-eps, eps]; its L-inf norm is just below eps (the largest of
    C*H*W uniforms, about eps * (1 - 1 / (C*H*W))).
  * L2: a uniform direction on the sphere (normalised Gaussian) scaled to exactly ``norm_value``,
    meant to be the UAP's achieved L2 norm.
kind="art": the published draw, ART's ``random_sphere`` as the authors' code used it: L-inf as above;
  L2 uniform in the ball of radius ``norm_value`` (Gaussian direction, radius scaled by the regularised
  incomplete gamma function), whose norm is slightly below ``norm_value`` in high dimension.
Draws come from ``generator`` only (torch), so the same generator state gives the same controls.
"""

from __future__ import annotations

import torch
from torch import Tensor

from robaudit.core.errors import BadInput
from robaudit.core.specs import canonical_norm

KINDS = ("uniform", "art")


def random_controls(shape: tuple[int, ...], norm: str, norm_value: float, draws: int, kind: str = "uniform",
                    generator: torch.Generator | None = None) -> Tensor:
    """``draws`` random perturbations of ``shape`` (C, H, W) or (1, C, H, W): a float32 tensor (K, C, H, W) on CPU."""
    norm = canonical_norm(norm)
    if kind not in KINDS:
        raise BadInput(f"unknown control kind {kind!r}", "choose uniform or art")
    if draws < 1 or not norm_value >= 0:
        raise BadInput("need draws >= 1 and norm_value >= 0")
    shape = tuple(shape[1:]) if len(shape) == 4 else tuple(shape)
    if norm == "linf":
        u = torch.rand((draws, *shape), generator=generator, dtype=torch.float64)
        return ((2 * u - 1) * norm_value).float()
    g = torch.randn((draws, *shape), generator=generator, dtype=torch.float64).flatten(1)
    s2 = (g * g).sum(1, keepdim=True)
    if kind == "uniform":
        scale = norm_value / s2.sqrt()
    else:  # ART's random_sphere, norm 2
        d = g.shape[1]
        scale = torch.special.gammainc(torch.tensor(d / 2.0, dtype=torch.float64), s2 / 2) ** (1 / d) \
            * norm_value / s2.sqrt()
    return (g * scale).view(draws, *shape).float()
