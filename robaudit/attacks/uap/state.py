"""What every UAP method loop shares: its settings, the run state (v, counters, progress) and the outcome.

A method (see :mod:`robaudit.attacks.uap.registry`) is called once per source chunk with the state,
the chunk and its labels; it updates ``state.v`` and uses :meth:`UAPState.passes`, ``batches``,
``tick`` and the group's sums, so that counting, stopping and distribution live here, not in methods.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from robaudit.attacks.lp import project
from robaudit.attacks.predict import predict
from robaudit.attacks.uap.group import DistributedGroup, LocalGroup
from robaudit.attacks.uap.select import Selection


@dataclass(frozen=True)
class UAPSettings:
    """What a UAP build is asked for (``build_uap``'s keyword arguments, validated there).

    ``eps`` and ``step_size`` are in [0, 1] pixel units; ``max_iter`` counts passes over each chunk;
    ``delta``: stop a chunk once its success rate reaches 1 - delta; ``target``: a class index.
    """

    norm: str
    eps: float
    max_iter: int
    target: int | None = None
    step_size: float | None = None
    batch_size: int = 32
    clip: bool = True
    delta: float = 1e-6
    seed: int = 0

    @property
    def targeted(self) -> bool:
        return self.target is not None


@dataclass
class UAPOutcome:
    """A built UAP.

    ``source_fooling_rate``: non-targeted, the fraction of source images whose prediction on x + v
    differs from the clean one; targeted, the fraction predicted as the target. A tensor source is
    measured with the final v; a chunked source chunk by chunk, right after each chunk was attacked
    (a one-pass stream cannot be re-read), weighted by chunk size. ``history`` holds
    ``(images_seen, rate on the current chunk)`` after every chunk (every pass in reference mode).
    ``iterations`` counts passes, summed over chunks.
    """

    v: Tensor
    source_fooling_rate: float
    iterations: int
    images_seen: int
    seconds: float
    interrupted: bool = False
    history: list[tuple[int, float]] = field(default_factory=list)
    final_v: Tensor | None = None  # with a selection: the last v (``v`` is the best one)
    selection: Selection | None = None
    plateau: bool = False


class Stopped(Exception):
    """Raised inside a method loop when ``should_stop()`` returns True."""


@dataclass
class UAPState:
    """The state the method loops share: ``v`` lives on ``device``, shape (1, C, H, W)."""

    model: nn.Module
    cfg: UAPSettings
    device: torch.device
    group: LocalGroup | DistributedGroup = field(default_factory=LocalGroup)
    progress: Callable | None = None
    should_stop: Callable[[], bool] | None = None
    selection: Selection | None = None
    v: Tensor | None = None
    iterations: int = 0
    images_seen: int = 0
    history: list[tuple[int, float]] = field(default_factory=list)

    def __post_init__(self):
        self.generator = torch.Generator().manual_seed(self.cfg.seed)  # mini-batch order
        self.py_random = random.Random(self.cfg.seed)  # reference mode: ART's random.sample order
        self._pass_fooled: Tensor | int = 0
        self._pass_seen = 0
        self._pass_rate: float | None = None

    @property
    def targeted(self) -> bool:
        return self.cfg.targeted

    def fooled(self, pred: Tensor, y: Tensor) -> Tensor:
        """Success per image: predicted as the target (targeted) or away from the clean prediction."""
        return pred == y if self.targeted else pred != y

    def set_v(self, v: Tensor) -> None:
        self.v = project(v.detach(), self.cfg.norm, self.cfg.eps)

    def base_step(self, x: Tensor) -> float:
        """``step_size`` if set, else a tenth of the per-pixel radius (eps, or eps / sqrt(d) for L2)."""
        cfg = self.cfg
        if cfg.step_size is not None:
            return cfg.step_size
        return cfg.eps / 10 if cfg.norm == "linf" else cfg.eps / x.shape[1:].numel() ** 0.5 / 10  # x may be empty

    def tick(self, n: int, fooled: Tensor | int = 0) -> None:
        """Count ``n`` images visited (``fooled`` of them already fooled), report progress, honour should_stop."""
        n = self.group.batch_count(n)
        self.images_seen += n
        self._pass_seen += n
        self._pass_fooled = self._pass_fooled + fooled
        if self.progress is not None:
            self.progress(n)
        if self.selection is not None and self.selection.due(self.images_seen):
            self.selection.check(self.v, self.images_seen)
        if self.should_stop is not None and self.should_stop():
            raise Stopped

    def checkpoint(self, rate: float) -> None:
        self.history.append((self.images_seen, rate))
        if self.progress is not None:
            self.progress(0, f"fooling {rate:.1%}")

    def pass_fooled(self) -> int:
        """Images of the current (or last) pass already fooled when visited, on this rank."""
        return int(self._pass_fooled)

    def end_pass(self, rate: float) -> None:
        """A method that measures the success rate at the end of a pass (reference fgsm) hands it to the stop rule."""
        self._pass_rate = rate

    def passes(self) -> Iterator[int]:
        """Up to ``max_iter`` passes; stop early once the pass's success rate reaches 1 - delta.

        The rate is the one given to :meth:`end_pass`, else the in-pass rate: images already fooled
        when visited (free to measure), a slight underestimate of the pass-end rate that ART's stop
        rule uses.
        """
        for i in range(self.cfg.max_iter):
            self._pass_fooled, self._pass_seen, self._pass_rate = 0, 0, None
            yield i
            self.iterations += 1
            if self._pass_rate is not None:
                rate = self._pass_rate
            elif self._pass_seen:
                rate = self.group.sum_count(self._pass_fooled) / self._pass_seen
            else:
                continue
            if rate >= 1 - self.cfg.delta:
                return

    def labels(self, y: Tensor) -> Tensor:
        """The label each image is judged against: the target (targeted) or its clean prediction."""
        return torch.full_like(y, self.cfg.target) if self.targeted else y

    def batches(self, x: Tensor, y: Tensor) -> Iterator[tuple[Tensor, Tensor]]:
        """Shuffled mini-batches ``(x, label)`` of a chunk (this rank's share of each), on the device."""
        yield from self.group.batches(self, x, y)

    def evaluate(self, x: Tensor, y: Tensor) -> Tensor:
        """Per-image success (bool, CPU) of the current v on a chunk, clipped as ``clip`` says."""
        pred = predict(self.model, x, self.v, clip=self.cfg.clip, batch_size=self.cfg.batch_size, device=self.device)
        return self.fooled(pred, self.labels(y))

    def clean_labels(self, x: Tensor) -> Tensor:
        """What a chunk's images are judged against: clean predictions (a targeted run needs none)."""
        if self.targeted:
            return torch.zeros(len(x), dtype=torch.long)
        return predict(self.model, x, batch_size=self.cfg.batch_size, device=self.device)
