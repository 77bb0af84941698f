"""``build_uap``: one universal perturbation from a source, by any registered method, in one or many processes.

A source is a float tensor (N, C, H, W) in [0, 1] or an iterable of such chunks. Each chunk is
attacked for up to ``max_iter`` passes, the perturbation ``v`` carried over (warm start) from one
chunk to the next, as the published method did with chunks of 1000 natural images. This module
validates the settings, picks the method from the registry and drives the chunks, timing and stopping.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from robaudit.attacks.predict import model_device, predict
from robaudit.attacks.uap import deepfool, fgsm, fgsm_reference, perphoto, sgd  # noqa: F401  (they register themselves)
from robaudit.attacks.uap.group import LocalGroup, check_chunk, current_group
from robaudit.attacks.uap.registry import MethodEntry, UAPMethod, create, lookup
from robaudit.attacks.uap.select import Plateau, Selection
from robaudit.attacks.uap.state import Stopped, UAPOutcome, UAPSettings, UAPState
from robaudit.core.errors import BadInput
from robaudit.core.specs import canonical_norm
from robaudit.models.normalize import channels_last_model

Source = Tensor | Iterable[Tensor]


class Builder:
    """One build fed chunk by chunk (:meth:`feed`), so that several builds can share, and race over, one stream.

    ``measure_chunks=False`` (a stream whose images are seen once) takes each chunk's source rate from
    the loop's own count (images already fooled when visited) instead of one more forward pass over it.
    An interruption (``should_stop``, Ctrl-C) or a plateau ends the build; :meth:`outcome` never raises it."""

    def __init__(self, run: UAPState, method: UAPMethod, init: Tensor | None = None, measure_chunks: bool = True):
        self.run, self.method, self.init, self.measure_chunks = run, method, init, measure_chunks
        self.hits = self.total = 0
        self.interrupted = self.plateau = self.finished = False
        self.seconds = 0.0

    def feed(self, x: Tensor, y: Tensor | None = None) -> bool:
        """Attack one chunk (already checked by the group's ``chunks``); False once the build has ended.
        ``y``: the chunk's clean labels when the caller shares them between builds on one model (a race)."""
        if self.finished:
            return False
        run, start, done = self.run, time.perf_counter(), False
        try:
            x = check_chunk(x)
            if run.v is None:
                v0 = torch.zeros((1, *x.shape[1:])) if self.init is None else self.init.reshape(1, *x.shape[1:])
                run.set_v(v0.float().to(run.device))
                run.v = run.group.broadcast(run.v)  # a resumed partial may exist on rank 0 only
            y = run.clean_labels(x) if y is None else y
            success = self.method(run, x, y)
            done = True
            if success is None and not self.measure_chunks:
                h, n = int(run.group.sum_count(run.pass_fooled())), int(run.group.global_size(len(x)))
                rate = h / n if n else 0.0
            else:
                h, n, rate = run.group.chunk_rate(success if success is not None else run.evaluate(x, y))
            self.hits, self.total = self.hits + h, self.total + n
            if not run.history or run.history[-1][0] != run.images_seen:
                run.checkpoint(rate)
        except (Stopped, KeyboardInterrupt, Plateau) as exc:
            self.finished = True
            self.interrupted, self.plateau = not isinstance(exc, Plateau), isinstance(exc, Plateau)
            if not done and run.v is not None:  # measure the v reached on the current chunk
                y = y if y is not None else predict(run.model, x, batch_size=run.cfg.batch_size, device=run.device)
                success = run.evaluate(x, y)
                self.hits, self.total = self.hits + int(success.sum()), self.total + len(x)
        finally:
            self.seconds += time.perf_counter() - start
        return not self.finished

    def check(self) -> bool:
        """Score the current v now (a racing rung); False if that ended the build (the stop rule fired)."""
        sel, run = self.run.selection, self.run
        if sel is None or run.v is None or self.finished:
            return not self.finished
        start = time.perf_counter()
        try:
            sel.check(run.v, run.images_seen)
        except Plateau:
            self.finished = self.plateau = True
        finally:
            self.seconds += time.perf_counter() - start
        return not self.finished

    def outcome(self) -> UAPOutcome:
        """The build's result: the best v by the selection (else the last), with its history."""
        run = self.run
        if run.v is None:
            raise BadInput("the UAP source yielded no images")
        final = run.v.detach().cpu()
        sel = run.selection
        if sel is not None and not self.interrupted:
            start = time.perf_counter()
            try:
                sel.check(run.v, run.images_seen)  # the final v competes too
            except Plateau:
                pass
            self.seconds += time.perf_counter() - start
        best = sel.best_v.detach().cpu() if sel is not None and sel.best_v is not None else final
        return UAPOutcome(v=best, source_fooling_rate=self.hits / self.total if self.total else 0.0,
                          iterations=run.iterations, images_seen=run.images_seen, seconds=self.seconds,
                          interrupted=self.interrupted, history=list(run.history),
                          final_v=final if sel is not None else None, selection=sel, plateau=self.plateau)


def drive(run: UAPState, source: Source, method: UAPMethod, init: Tensor | None = None,
          measure_chunks: bool = True) -> UAPOutcome:
    """Run ``method`` over the chunks of ``source``, warm-starting v; never raises on interruption."""
    builder = Builder(run, method, init, measure_chunks)
    try:
        for x in run.group.chunks([source] if isinstance(source, Tensor) else source):
            if not builder.feed(x):
                break
    except KeyboardInterrupt:  # while the next chunk was decoded
        builder.finished = builder.interrupted = True
    return builder.outcome()


def build_uap(model: nn.Module, source: Source, *, method: str = "fgsm", norm: str = "linf", eps: float,
              target: int | None = None, mode: str = "batched", max_iter: int, step_size: float | None = None,
              batch_size: int = 32, clip: bool = True, init: Tensor | None = None, seed: int = 0, device=None,
              delta: float = 1e-6, progress: Callable | None = None,
              should_stop: Callable[[], bool] | None = None, distributed: bool = False,
              channels_last: bool | None = None, selection: Selection | None = None, measure_chunks: bool = True,
              **options) -> UAPOutcome:
    """Build a UAP of L-``norm`` radius ``eps`` ([0, 1] pixel units) for ``model`` from ``source``.

    method: 'fgsm' (the published iterative method; ``mode`` 'reference' = ART's semantics one image
    at a time, 'batched' = mini-batch steps), 'deepfool' (Moosavi-Dezfooli) or 'sgd' (mini-batch
    optimisation of v). ``max_iter``: passes over each chunk. ``step_size``: L-inf step per update
    (fgsm, sgd; default eps/10 for L-inf, eps/sqrt(d)/10 for L2; batched fgsm's linear schedule starts
    at twice that and decays to 0, see ``fgsm``). ``clip``: clip x + v to [0, 1]
    (False = the published, unclipped setting). ``target``: class index for a targeted UAP.
    ``init``: warm-start v. ``progress(n, status=None)`` is called with the images processed;
    ``should_stop()`` is polled between steps. ``selection``: score v on held-out images during the build,
    return the best v (``outcome.final_v`` is the last) and stop on a plateau (see ``select``).
    ``measure_chunks``: see :func:`drive`. ``options`` go to the method (see its module).
    ``channels_last``: run the model in NHWC memory format (default: as the method registered; restored
    after). ``distributed``: one UAP over the ranks of the initialised torch.distributed group;
    ``source`` is then this rank's shard (``group.shard``) and ``batch_size`` the total over ranks.
    The model must be in eval mode, take [0, 1] images and live on ``device`` (default: its own).
    """
    entry, run = new_run(model, method=method, norm=norm, eps=eps, target=target, mode=mode, max_iter=max_iter,
                         step_size=step_size, batch_size=batch_size, clip=clip, seed=seed, device=device, delta=delta,
                         progress=progress, should_stop=should_stop, distributed=distributed, selection=selection)
    chunk_method = create(entry, options)
    with channels_last_model(model, entry.channels_last if channels_last is None else channels_last) as net:
        run.model = net
        return drive(run, source, chunk_method, init=init, measure_chunks=measure_chunks)


def new_run(model: nn.Module, *, method: str, norm: str, eps: float, target: int | None = None,
            mode: str = "batched", max_iter: int = 1, step_size: float | None = None, batch_size: int = 32,
            clip: bool = True, seed: int = 0, device=None, delta: float = 1e-6, progress: Callable | None = None,
            should_stop: Callable[[], bool] | None = None, distributed: bool = False,
            selection: Selection | None = None) -> tuple[MethodEntry, UAPState]:
    """The registered method and a fresh loop state for ``model`` as given (the caller owns its memory
    format: :func:`build_uap` wraps it in ``channels_last_model``; a race does so once for all its builds)."""
    norm = canonical_norm(norm)
    entry = lookup(method, mode)
    if not eps > 0 or int(max_iter) < 1 or int(batch_size) < 1 or not 0 <= delta <= 1:
        raise BadInput("need eps > 0, max_iter >= 1, batch_size >= 1 and 0 <= delta <= 1")
    if step_size is not None and not step_size > 0:
        raise BadInput("step_size must be > 0")
    group = LocalGroup()
    if distributed:
        group = current_group()
        if group is None:
            raise BadInput("distributed=True needs an initialised torch.distributed group of 2+ processes",
                           "launch with torchrun, or pass distributed=False")
        if not entry.distributed:
            raise BadInput(f"mode {mode!r} is sequential (one image at a time) and cannot span processes",
                           "use --mode batched under torchrun, or run reference mode in one process")
    cfg = UAPSettings(norm=norm, eps=float(eps), target=target, max_iter=int(max_iter), step_size=step_size,
                      batch_size=int(batch_size), clip=clip, delta=float(delta), seed=seed)
    run = UAPState(model=model, cfg=cfg, device=model_device(model, device), group=group, progress=progress,
                   should_stop=should_stop, selection=selection)
    return entry, run
