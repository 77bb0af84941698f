"""Keep the strongest perturbation seen during a build, judged on held-out images, and stop once more gain is unlikely.

The fooling rate on the attacker's own photos is the wrong number to tune on: a UAP driven to fool
97 % of a few hundred photos overfits them. A :class:`Selection` scores ``v`` every ``every`` images
on held-out images (the audited task's selection split, or, for a zero-knowledge attacker, held-out
photos on the surrogate), keeps the best ``v`` and stops the build by a :class:`StopRule` (the gain
of the best v over the last checks is, at a stated confidence, below ``delta``) and/or after
``patience`` checks in a row without improvement. The auditor chooses this procedure; the report says so.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.stats import beta
from torch import Tensor


class Plateau(Exception):
    """Raised inside a method loop when the selection score stopped improving (not an interruption)."""


@dataclass(frozen=True)
class StopRule:
    """Stop when the best v's gain over the last ``window`` checks is below ``delta`` at ``confidence``.

    The gain is paired: the best v now and the best v ``window`` checks ago are scored on the same
    selection images; of the m images on which they disagree, b are fooled by the newer one only, so
    the gain is (2b - m) / n. Its upper bound is the exact conditional one (as in McNemar's exact
    test): (m / n) * (2 p_hi - 1), with p_hi the one-sided Clopper-Pearson bound of b / m. A best v
    unchanged for ``window`` checks has bound 0 and stops (``patience = window``, in the flat case);
    a rising best keeps the build going until its gain is statistically small, not merely unseen
    for a few checks. Parameters are chosen in ``benchmarks/bench_stopping.py`` (benchmarks/README.md).
    """

    window: int = 4
    delta: float = 0.01
    confidence: float = 0.9

    def upper_gain(self, new: np.ndarray, old: np.ndarray) -> float:
        """Upper confidence bound of rate(new) - rate(old) for paired per-image successes."""
        new, old = np.asarray(new, bool), np.asarray(old, bool)
        n, b = len(new), int((new & ~old).sum())
        m = b + int((old & ~new).sum())
        if n == 0 or m == 0:
            return 0.0
        p_hi = 1.0 if b == m else float(beta.ppf(self.confidence, b + 1, m - b))
        return m / n * (2 * p_hi - 1)

    def info(self) -> dict:
        return {"window": self.window, "delta": self.delta, "confidence": self.confidence}


def _as_success(out) -> np.ndarray:
    """A scorer's answer as per-image success (bool array); a bare rate (older scorers) as one pseudo-image."""
    if isinstance(out, Tensor):
        out = out.detach().cpu().numpy()
    arr = np.asarray(out)
    return arr.astype(bool).ravel() if arr.ndim else np.array([], bool)


@dataclass
class Selection:
    """``score(v)`` -> per-image success (bool array) or a success rate on the held-out images; checked
    every ``every`` images seen (and whenever :meth:`check` is called, e.g. at a racing rung)."""

    score: Callable[[Tensor], object]
    every: int = 512
    patience: int | None = None
    rule: StopRule | None = None
    best_v: Tensor | None = None
    best_rate: float = -1.0
    best_at: int = 0
    best_success: np.ndarray | None = None
    trajectory: list[tuple[int, float, float]] = field(default_factory=list)  # (images seen, rate, seconds)
    keep: bool = False  # keep every checked v (``snapshots``), e.g. to measure each on the test split later
    snapshots: list[Tensor] = field(default_factory=list)
    clock: Callable[[], float] | None = None  # seconds for the trajectory (default: since this object was made)
    check_seconds: float = 0.0  # time spent scoring
    upper_gains: list[float | None] = field(default_factory=list)  # the stop rule's bound at each check
    successes: list[np.ndarray] = field(default_factory=list)  # per-image success of every checked v (``keep``)
    stop_reason: str | None = None
    stop_after: int = 0  # images seen before which neither the rule nor patience stops (the flat-then-jump case)

    def __post_init__(self):
        self._next, self._stale, self._t0 = self.every, 0, time.perf_counter()
        self._best_hist: list[np.ndarray] = []

    def due(self, images_seen: int) -> bool:
        return images_seen >= self._next

    def _now(self) -> float:
        return self.clock() if self.clock is not None else time.perf_counter() - self._t0

    def check(self, v: Tensor, images_seen: int) -> None:
        """Score ``v``; keep it if it beats every earlier one; raise :class:`Plateau` when the stop rule or
        ``patience`` says so."""
        if self.trajectory and self.trajectory[-1][0] == images_seen:
            return
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = self.score(v)
        success = _as_success(out)
        rate = float(success.mean()) if success.size else float(out)
        self.check_seconds += time.perf_counter() - t0
        self.trajectory.append((images_seen, rate, self._now()))
        if self.keep:
            self.snapshots.append(v.detach().cpu().clone())
            self.successes.append(success)
        while self._next <= images_seen:
            self._next += self.every
        if rate > self.best_rate:
            self.best_v, self.best_rate, self.best_at, self._stale = v.detach().clone(), rate, images_seen, 0
            self.best_success = success
        else:
            self._stale += 1
        self._best_hist.append(self.best_success if self.best_success is not None else success)
        bound = None
        if self.rule is not None and len(self._best_hist) > self.rule.window and success.size:
            bound = self.rule.upper_gain(self._best_hist[-1], self._best_hist[-1 - self.rule.window])
        self.upper_gains.append(bound)
        if images_seen < self.stop_after:
            return
        if bound is not None and bound < self.rule.delta:
            self.stop_reason = (f"gain of the best v over the last {self.rule.window} checks <= {bound:.3f} at "
                                f"{self.rule.confidence:.0%} confidence (< delta {self.rule.delta:g})")
            raise Plateau
        if self.patience is not None and self._stale >= self.patience:
            self.stop_reason = f"{self.patience} checks without gain"
            raise Plateau
