"""Universal adversarial perturbations: the outcome, the shared run state, and ``build_uap``.

A source is a float tensor (N, C, H, W) in [0, 1] or an iterable of such chunks. Each chunk is
attacked for up to ``max_iter`` passes, the perturbation ``v`` carried over (warm start) from one
chunk to the next, as the published method did with chunks of 1000 natural images. Every method
file (``uap_fgsm``, ``uap_deepfool``, ``uap_sgd``) provides one function ``(run, x, y) -> None``
that updates ``run.v`` on one chunk; this module drives the chunks, timing, progress and stopping.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from robaudit.attacks.lp import check_norm, project
from robaudit.errors import BadInput
from robaudit.eval.metrics import model_device, predict
from robaudit.models.normalize import channels_last_model

Source = Tensor | Iterable[Tensor]
METHODS = ("fgsm", "deepfool", "sgd")


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


class Stopped(Exception):
    """Raised inside a method loop when ``should_stop()`` returns True."""


@dataclass
class UAPRun:
    """Settings and state shared by the method loops: ``v`` lives on ``device``, shape (1, C, H, W)."""

    model: nn.Module
    norm: str
    eps: float
    target: int | None
    max_iter: int
    step_size: float | None
    batch_size: int
    clip: bool
    delta: float
    seed: int
    device: torch.device
    progress: Callable | None = None
    should_stop: Callable[[], bool] | None = None
    dist: Any = None  # robaudit.distributed.Group when the run spans several processes
    v: Tensor | None = None
    iterations: int = 0
    images_seen: int = 0
    history: list[tuple[int, float]] = field(default_factory=list)

    def __post_init__(self):
        self.generator = torch.Generator().manual_seed(self.seed)  # mini-batch order
        self.py_random = random.Random(self.seed)  # reference mode: ART's random.sample order
        self._pass_fooled: Tensor | int = 0
        self._pass_seen = 0

    @property
    def targeted(self) -> bool:
        return self.target is not None

    def fooled(self, pred: Tensor, y: Tensor) -> Tensor:
        """Success per image: predicted as the target (targeted) or away from the clean prediction."""
        return pred == y if self.targeted else pred != y

    def set_v(self, v: Tensor) -> None:
        self.v = project(v.detach(), self.norm, self.eps)

    def tick(self, n: int, fooled: Tensor | int = 0) -> None:
        """Count ``n`` images visited (``fooled`` of them already fooled), report progress, honour should_stop."""
        if self.dist is not None:  # one call per global mini-batch: count it whole
            n = self.dist.batch_n
        self.images_seen += n
        self._pass_seen += n
        self._pass_fooled = self._pass_fooled + fooled
        if self.progress is not None:
            self.progress(n)
        if self.should_stop is not None and self.should_stop():
            raise Stopped

    def checkpoint(self, rate: float) -> None:
        self.history.append((self.images_seen, rate))
        if self.progress is not None:
            self.progress(0, f"fooling {rate:.1%}")

    def passes(self) -> Iterator[int]:
        """Up to ``max_iter`` passes; stop early once the in-pass success rate reaches 1 - delta.

        The in-pass rate counts images already fooled when visited (free to measure), a slight
        underestimate of the pass-end rate that ART's stop rule uses.
        """
        for i in range(self.max_iter):
            self._pass_fooled, self._pass_seen = 0, 0
            yield i
            self.iterations += 1
            fooled = self._pass_fooled if self.dist is None else self.dist.sum_count(self._pass_fooled)
            if self._pass_seen and float(fooled) / self._pass_seen >= 1 - self.delta:
                return

    def labels(self, y: Tensor) -> Tensor:
        """The label each image is judged against: the target (targeted) or its clean prediction."""
        return torch.full_like(y, self.target) if self.targeted else y

    def batches(self, x: Tensor, y: Tensor) -> Iterator[tuple[Tensor, Tensor]]:
        """Shuffled mini-batches ``(x, label)`` of a chunk, moved to the device."""
        if self.dist is not None:
            yield from self.dist.batches(self, x, y)
            return
        order = torch.randperm(len(x), generator=self.generator)
        for i in range(0, len(x), self.batch_size):
            idx = order[i:i + self.batch_size]
            yield x[idx].to(self.device, torch.float32), self.labels(y[idx]).to(self.device)

    def reduce(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        """The tensors summed over the ranks of a distributed run (unchanged in one process)."""
        return tensors if self.dist is None else self.dist.all_sum(*tensors)

    def batch_mean(self, t: Tensor) -> Tensor:
        """Mean of per-image values over the whole mini-batch (all ranks' images in a distributed run)."""
        return t.mean() if self.dist is None else t.sum() / self.dist.batch_n

    def evaluate(self, x: Tensor, y: Tensor) -> Tensor:
        """Per-image success (bool, CPU) of the current v on a chunk, clipped as ``clip`` says."""
        pred = predict(self.model, x, self.v, clip=self.clip, batch_size=self.batch_size, device=self.device)
        return self.fooled(pred, self.labels(y))


ChunkFn = Callable[[UAPRun, Tensor, Tensor], "Tensor | None"]


def _check_chunk(x: Tensor) -> Tensor:
    if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point():
        raise BadInput("a UAP source must be float tensors (N, C, H, W) in [0, 1]",
                       f"got {type(x).__name__} {tuple(getattr(x, 'shape', ()))} {getattr(x, 'dtype', '')}")
    if len(x) and (float(x.min()) < 0 or float(x.max()) > 1):
        raise BadInput("UAP source images must be in [0, 1]", "scale uint8 images by 1/255")
    return x.contiguous()  # a channels-last view would change the conv kernels, hence the numerics


def drive(run: UAPRun, source: Source, chunk_fn: ChunkFn, init: Tensor | None = None) -> UAPOutcome:
    """Run ``chunk_fn`` over the chunks of ``source``, warm-starting v; never raises on interruption."""
    start = time.perf_counter()
    chunks = [source] if isinstance(source, Tensor) else source
    if run.dist is not None:  # this rank's shard, stepped in lockstep with the other ranks
        chunks = run.dist.chunks(chunks)
    hits, total, interrupted, done = 0, 0, False, True
    x = y = None
    try:
        for x in chunks:
            x, y, done = _check_chunk(x), None, False
            if run.v is None:
                v0 = torch.zeros((1, *x.shape[1:])) if init is None else init.reshape(1, *x.shape[1:]).float()
                run.set_v(v0.to(run.device))
                if run.dist is not None:
                    run.v = run.dist.broadcast(run.v)
            # the clean predictions, which a targeted run does not need (it is judged against the target)
            y = torch.zeros(len(x), dtype=torch.long) if run.targeted else predict(
                run.model, x, batch_size=run.batch_size, device=run.device)
            success = chunk_fn(run, x, y)
            if success is None:
                success = run.evaluate(x, y)
            done = True
            if run.dist is None:
                hits, total = hits + int(success.sum()), total + len(x)
                rate = float(success.float().mean()) if len(x) else 0.0
            else:  # the rate over the global chunk
                h, n = run.dist.sum_count(int(success.sum())), run.dist.sum_count(len(x))
                hits, total, rate = hits + int(h), total + int(n), h / n if n else 0.0
            if not run.history or run.history[-1][0] != run.images_seen:
                run.checkpoint(rate)
    except (Stopped, KeyboardInterrupt):
        interrupted = True
        if x is not None and not done and run.v is not None:  # measure the v reached on the current chunk
            y = y if y is not None else predict(run.model, x, batch_size=run.batch_size, device=run.device)
            success = run.evaluate(x, y)
            hits, total = hits + int(success.sum()), total + len(x)
    if run.v is None:
        raise BadInput("the UAP source yielded no images")
    return UAPOutcome(v=run.v.detach().cpu(), source_fooling_rate=hits / total if total else 0.0,
                      iterations=run.iterations, images_seen=run.images_seen,
                      seconds=time.perf_counter() - start, interrupted=interrupted, history=list(run.history))


def build_uap(model: nn.Module, source: Source, *, method: str = "fgsm", norm: str = "linf", eps: float,
              target: int | None = None, mode: str = "batched", max_iter: int, step_size: float | None = None,
              batch_size: int = 32, clip: bool = True, init: Tensor | None = None, seed: int = 0, device=None,
              delta: float = 1e-6, progress: Callable | None = None,
              should_stop: Callable[[], bool] | None = None, distributed: bool = False,
              channels_last: bool | None = None, **options) -> UAPOutcome:
    """Build a UAP of L-``norm`` radius ``eps`` ([0, 1] pixel units) for ``model`` from ``source``.

    method: 'fgsm' (the published iterative method; ``mode`` 'reference' = ART's semantics one image
    at a time, 'batched' = mini-batch steps), 'deepfool' (Moosavi-Dezfooli) or 'sgd' (mini-batch
    optimisation of v). ``max_iter``: passes over each chunk. ``step_size``: L-inf step per update
    (fgsm, sgd; default eps/10 for L-inf, eps/sqrt(d)/10 for L2; batched fgsm's linear schedule starts
    at twice that and decays to 0, see ``uap_fgsm``). ``clip``: clip x + v to [0, 1]
    (False = the published, unclipped setting). ``target``: class index for a targeted UAP.
    ``init``: warm-start v. ``progress(n, status=None)`` is called with the images processed;
    ``should_stop()`` is polled between steps. ``options`` go to the method (see its module).
    ``channels_last``: run the model in NHWC memory format (default: batched fgsm and sgd; restored after;
    off for deepfool, whose stop decisions would turn NHWC's batch-size-dependent rounding into
    different perturbations for different process counts).
    ``distributed``: one UAP over the ranks of the initialised torch.distributed group; ``source`` is
    then this rank's shard (``robaudit.distributed.shard``) and ``batch_size`` the total over ranks.
    The model must be in eval mode, take [0, 1] images and live on ``device`` (default: its own).
    """
    norm = check_norm(norm)
    if method not in METHODS:
        raise BadInput(f"unknown UAP method {method!r}", f"choose one of {', '.join(METHODS)}")
    if mode not in ("batched", "reference") or (mode == "reference" and method != "fgsm"):
        raise BadInput(f"mode {mode!r} is not available for method {method!r}",
                       "mode='reference' exists for fgsm only; use 'batched'")
    if not eps > 0 or int(max_iter) < 1 or int(batch_size) < 1 or not 0 <= delta <= 1:
        raise BadInput("need eps > 0, max_iter >= 1, batch_size >= 1 and 0 <= delta <= 1")
    if step_size is not None and not step_size > 0:
        raise BadInput("step_size must be > 0")
    group = None
    if distributed:
        from robaudit.distributed import current_group

        group = current_group()
        if group is None:
            raise BadInput("distributed=True needs an initialised torch.distributed group of 2+ processes",
                           "launch with torchrun, or pass distributed=False")
        if mode == "reference":
            raise BadInput("mode 'reference' is sequential (one image at a time) and cannot span processes",
                           "use --mode batched under torchrun, or run reference mode in one process")
    run = UAPRun(model=model, norm=norm, eps=float(eps), target=target, max_iter=int(max_iter),
                 step_size=step_size, batch_size=int(batch_size), clip=clip, delta=float(delta), seed=seed,
                 device=model_device(model, device), progress=progress, should_stop=should_stop, dist=group)
    if method == "fgsm":
        from functools import partial

        from robaudit.attacks import uap_fgsm

        if set(options) - ({"schedule"} if mode == "batched" else set()):
            raise BadInput(f"fgsm ({mode}) takes no options {sorted(options)}",
                           "batched fgsm takes schedule='linear'|'constant'; reference mode takes none")
        chunk_fn = uap_fgsm.reference_chunk if mode == "reference" else partial(uap_fgsm.batched_chunk, **options)
    elif method == "deepfool":
        from robaudit.attacks.uap_deepfool import DeepFoolUAP as factory
    else:
        from robaudit.attacks.uap_sgd import SGDUAP as factory
    if method != "fgsm":
        try:
            chunk_fn = factory(**options)
        except TypeError as exc:
            raise BadInput(f"bad {method} option: {exc}") from None
    if channels_last is None:  # DeepFool's per-image stop decisions amplify NHWC's batch-dependent rounding
        channels_last = mode == "batched" and method != "deepfool"
    with channels_last_model(model, channels_last) as net:
        run.model = net
        return drive(run, source, chunk_fn, init=init)


def default_step(run: UAPRun, x: Tensor) -> float:
    """``step_size`` if set, else a tenth of the per-pixel radius (eps, or eps / sqrt(d) for L2)."""
    if run.step_size is not None:
        return run.step_size
    return run.eps / 10 if run.norm == "linf" else run.eps / x.shape[1:].numel() ** 0.5 / 10  # x may be empty
