"""Throughput helpers for the benchmarks: the model's own forward + backward rate, and the batch-size knee.

The batch size changes a UAP (it is part of the cell hash), so the product never picks it silently;
these measure what a user would pass explicitly (``--batch-size``).
"""

from __future__ import annotations

import time

import torch
from torch import nn


def grad_throughput(model: nn.Module, shape: tuple[int, int, int], batch_size: int, device, steps: int = 10,
                    warmup: int = 2) -> float:
    """Images per second of the model's own forward + backward to the input (the UAP loop's core)."""
    device = torch.device(device)
    x = torch.rand((batch_size, *shape), device=device)
    label = torch.zeros(batch_size, dtype=torch.long, device=device)

    def step():
        xa = x.clone().requires_grad_(True)
        loss = nn.functional.cross_entropy(model(xa), label)
        torch.autograd.grad(loss, xa)

    for _ in range(warmup):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return steps * batch_size / (time.perf_counter() - t0)


def suggest_batch_size(model: nn.Module, shape: tuple[int, int, int], device, candidates=(16, 32, 64, 128, 256, 512),
                       gain: float = 1.1) -> tuple[int, dict[int, float]]:
    """The smallest batch size past which throughput grows by less than ``gain`` x, and the images/s of
    each size tried (a size that runs out of GPU memory ends the search)."""
    device = torch.device(device)
    rates: dict[int, float] = {}
    for b in candidates:
        try:
            rates[b] = grad_throughput(model, shape, b, device, steps=5)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            break
    if not rates:
        raise RuntimeError(f"no batch size in {list(candidates)} fits on {device}")
    sizes = sorted(rates)
    best = sizes[0]
    for b in sizes[1:]:
        if rates[b] < gain * rates[best]:
            break
        best = b
    return best, rates


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
