"""Lp geometry in [0, 1] pixel space: norms, projection onto the ball, applying a perturbation.

``project`` reproduces ART's ``art.utils.projection`` (1.20) bit for bit, so that the reference UAP
loop follows ART's trajectory (a one-ulp difference in v can flip a later gradient sign): L-inf
clamps each pixel to [-eps, eps]; L2 multiplies by ``min(1, eps / ||v||_2)``, the norm summed in
float32 in NumPy's pairwise order, the factor and product in float64, rounded to float32; a zero
vector stays zero. (Older ART releases added a 1e-7 tolerance to the norm; 1.20 has none.)
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

from robaudit.core.specs import canonical_norm


def lp_norm(v: Tensor, norm: str) -> Tensor:
    """Per-sample Lp norms of a batch (N, ...) -> (N,)."""
    flat = v.reshape(len(v), -1)
    if canonical_norm(norm) == "linf":
        return flat.abs().amax(dim=1)
    return torch.linalg.vector_norm(flat, ord=2, dim=1)


def project(v: Tensor, norm: str, eps: float) -> Tensor:
    """Project each sample of ``v`` onto the Lp ball of radius ``eps`` (ART's ``projection``, same bits)."""
    if canonical_norm(norm) == "linf":
        return v.clamp(-eps, eps)
    flat = v.reshape(len(v), -1)
    n = _numpy_sum(flat * flat).double().sqrt().float().double()[:, None]  # torch's float32 sqrt is not exact
    scale = torch.where(n > 0, torch.clamp(torch.full_like(n, eps) / n, max=1.0), torch.zeros_like(n))
    return (flat.double() * scale).to(v.dtype).view_as(v)


@lru_cache(maxsize=16)
def _pairwise_plan(n: int, device: str):
    """NumPy's pairwise summation tree for rows of length n, as index tensors on ``device``.

    NumPy sums blocks of <= 128 with 8 running accumulators and joins halves (split at a multiple of 8)
    recursively. Returns the leaf gathers by block length, the order putting the leaf sums back in place,
    the merge stages (node, left, right) by height, and the root's index.
    """
    leaves: list[tuple[int, int]] = []
    merges: list[tuple[int, int, int]] = []  # (left, right, height); leaves are ids -1, -2, ...

    def build(start: int, m: int) -> tuple[int, int]:
        if m <= 128:
            leaves.append((start, m))
            return -len(leaves), 0
        half = m // 2 - (m // 2) % 8
        (left, hl), (right, hr) = build(start, half), build(start + half, m - half)
        merges.append((left, right, max(hl, hr) + 1))
        return len(merges) - 1, max(hl, hr) + 1

    root = build(0, n)[0]

    def idx(i: int) -> int:  # leaves first, then merge nodes
        return -i - 1 if i < 0 else len(leaves) + i

    def t(values) -> Tensor:
        return torch.tensor(values, dtype=torch.long, device=device)

    lengths = sorted({m for _, m in leaves})
    gathers = [(m, t([[s + j for j in range(m)] for s, mm in leaves if mm == m])) for m in lengths]
    grouped = [i for m in lengths for i, (_, mm) in enumerate(leaves) if mm == m]
    back = t(sorted(range(len(grouped)), key=grouped.__getitem__))
    stages = []
    for h in range(1, max((mg[2] for mg in merges), default=0) + 1):
        level = [(len(leaves) + i, idx(a), idx(b)) for i, (a, b, hh) in enumerate(merges) if hh == h]
        stages.append(tuple(t(col) for col in zip(*level, strict=True)))
    return gathers, back, stages, idx(root), len(leaves) + len(merges)


def _numpy_sum(s: Tensor) -> Tensor:
    """Row sums of a float32 (N, n) tensor in exactly NumPy's pairwise order (``np.add.reduce(axis=1)``)."""
    gathers, back, stages, root, size = _pairwise_plan(s.shape[1], str(s.device))
    parts = []
    for m, index in gathers:
        a = s[:, index]  # (N, blocks, m)
        if m < 8:
            res = a[..., 0]
            for i in range(1, m):
                res = res + a[..., i]
        else:
            r, full = a[..., :8], m - m % 8
            for i in range(8, full, 8):
                r = r + a[..., i:i + 8]
            res = (r[..., 0] + r[..., 1]) + (r[..., 2] + r[..., 3])
            res = res + ((r[..., 4] + r[..., 5]) + (r[..., 6] + r[..., 7]))
            for i in range(full, m):
                res = res + a[..., i]
        parts.append(res)
    vals = s.new_zeros(len(s), size)
    vals[:, :len(back)] = torch.cat(parts, dim=1)[:, back]
    for node, left, right in stages:
        vals[:, node] = vals[:, left] + vals[:, right]
    return vals[:, root]


def perturb(x: Tensor, v: Tensor, clip: bool) -> Tensor:
    """``x + v``, clipped to [0, 1] when ``clip`` (clip=False is the published, unclipped setting)."""
    xv = x + v
    return xv.clamp(0.0, 1.0) if clip else xv
