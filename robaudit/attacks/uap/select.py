"""Keep the strongest perturbation seen during a build, judged on held-out images, and stop on a plateau.

The fooling rate on the attacker's own photos is the wrong number to tune on: a UAP driven to fool
97 % of a few hundred photos overfits them. A :class:`Selection` scores ``v`` every ``every`` images
on held-out images (the audited task's selection split, or, for a zero-knowledge attacker, held-out
photos on the surrogate), keeps the best ``v`` and stops the build once ``patience`` checks in a row
brought no improvement. The auditor chooses this procedure; the report says so.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import Tensor


class Plateau(Exception):
    """Raised inside a method loop when the selection score stopped improving (not an interruption)."""


@dataclass
class Selection:
    """``score(v)`` -> success rate on the held-out images; checked every ``every`` images seen."""

    score: Callable[[Tensor], float]
    every: int = 512
    patience: int | None = None
    best_v: Tensor | None = None
    best_rate: float = -1.0
    best_at: int = 0
    trajectory: list[tuple[int, float, float]] = field(default_factory=list)  # (images seen, rate, seconds)
    keep: bool = False  # keep every checked v (``snapshots``), e.g. to measure each on the test split later
    snapshots: list[Tensor] = field(default_factory=list)

    def __post_init__(self):
        self._next, self._stale, self._t0 = self.every, 0, time.perf_counter()

    def due(self, images_seen: int) -> bool:
        return images_seen >= self._next

    def check(self, v: Tensor, images_seen: int) -> None:
        """Score ``v``; keep it if it beats every earlier one; raise :class:`Plateau` after ``patience`` misses."""
        if self.trajectory and self.trajectory[-1][0] == images_seen:
            return
        rate = float(self.score(v))
        self.trajectory.append((images_seen, rate, time.perf_counter() - self._t0))
        if self.keep:
            self.snapshots.append(v.detach().cpu().clone())
        while self._next <= images_seen:
            self._next += self.every
        if rate > self.best_rate:
            self.best_v, self.best_rate, self.best_at, self._stale = v.detach().clone(), rate, images_seen, 0
            return
        self._stale += 1
        if self.patience is not None and self._stale >= self.patience:
            raise Plateau
