"""One UAP run end to end, as five stages: prepare -> build -> measure -> record -> write.

``prepare`` loads and checks everything (model, task, eps, evaluation images, source, a resumed
partial) before any compute; ``build`` runs the UAP engine and keeps an interrupted run's partial;
``measure`` evaluates v and its same-norm random controls on the evaluation images; ``record``
assembles the versioned :class:`~robaudit.core.results.Result`; ``write`` fills the run folder.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from robaudit import __version__
from robaudit.attacks.lp import lp_norm
from robaudit.attacks.noise import random_controls
from robaudit.attacks.predict import predict, score_draws
from robaudit.attacks.uap import Builder, Selection, StopRule, UAPOutcome, new_run
from robaudit.attacks.uap.group import DistributedGroup, init_from_env, shard
from robaudit.attacks.uap.race import Entrant, race, rechunk, rung_points
from robaudit.attacks.uap.registry import create, lookup
from robaudit.core.console import info, progress, warn
from robaudit.core.errors import BadInput, Interrupted, RuntimeFailure
from robaudit.core.locations import data_root
from robaudit.core.provenance import command_line, environment, now_iso
from robaudit.core.results import (
    AttackInfo,
    Candidate,
    Comparison,
    Control,
    Metrics,
    Result,
    RungResult,
    SelectionInfo,
    StopRuleInfo,
    TrajectoryPoint,
    success_vector,
)
from robaudit.core.specs import BEST_OF, TOWARD_MAX_CLASSES, UAPSpec
from robaudit.data import load_task
from robaudit.data.images import to_channels
from robaudit.eval.artifacts import (
    PARTIAL,
    guard_output,
    image_ids,
    load_partial,
    save_partial,
    software_versions,
    write_run,
)
from robaudit.eval.check import ModelCheck, check_model
from robaudit.eval.delivery import build_eot, measure_delivery
from robaudit.eval.metrics import (
    PerImage,
    compare_to_control,
    control_metrics,
    critical_of,
    harm_metrics,
    uap_metrics,
)
from robaudit.eval.query import build_query, threat_notes, threat_update
from robaudit.eval.sources import in_channels, tensor_source, uap_source
from robaudit.models import LoadedModel, load_model, load_model_and_task
from robaudit.models.factory import imagenet_classifier
from robaudit.models.fuse import folded
from robaudit.models.loading import match_task
from robaudit.models.normalize import Normalized, channels_last_model, fast_model
from robaudit.models.store import is_trained

#: |v's L2 norm - eps| below this share of eps: v is on the ball's sphere, and its noise is drawn at eps
ON_SPHERE = 1e-5
#: fewer selection images than this: v's choice is noise-dominated (a warning, with the number)
MIN_SELECT = 32

__all__ = ["PARTIAL", "Given", "RunOutput", "run_uap"]


@dataclass
class RunOutput:
    """What a run produced: the validated result, the perturbation, and where files went."""

    result: Result
    v: torch.Tensor  # (1, C, S, S), CPU float32
    out_dir: Path | None
    x_eval: torch.Tensor | None = None  # what the run folder's pictures and predictions are drawn from
    clean: torch.Tensor | None = None
    adv: torch.Tensor | None = None
    per_image: dict | None = None  # write_run's labels, records and ids (predictions.csv)


@dataclass
class Prepared:
    """Everything a run needs, loaded and checked before the first gradient."""

    spec: UAPSpec
    lm: LoadedModel
    task: object  # robaudit.data.TaskData
    target: int | None
    eps: float
    ref_norm: float
    x_eval: torch.Tensor
    y_eval: torch.Tensor
    source: object  # tensor or chunk stream (this rank's shard under torchrun)
    source_n: int
    source_desc: str
    init: torch.Tensor | None
    group: DistributedGroup | None
    budget: int | None = None
    builder: torch.nn.Module | None = None  # set by prepare: the audited model, or a surrogate (batch norm folded)
    fast: torch.nn.Module | None = None  # the audited model, batch norm folded (models/fuse.py): selection, measure
    surrogate: str | None = None
    select_split: str | None = None
    select_score: object = None  # v -> success rate on the selection images
    select_n: int = 0
    outcome: UAPOutcome | None = None
    candidates: list[Candidate] | None = None
    test_rates: list[float] | None = None
    race: dict | None = None  # set by build: rung points, seconds scoring v, the build's seconds
    checked: ModelCheck | None = None  # the pre-audit check on the evaluated images
    held_out: torch.Tensor | None = None  # query access: photos the attacker chooses v on, through the oracle
    query: dict | None = None  # query access: budget, queries used (eval/query.py)
    memo: Memo | None = None  # an audit's shared clean/noise predictions and checks

    @property
    def size(self) -> int:
        return self.lm.card.input_size

    @property
    def is_main(self) -> bool:
        return self.group is None or self.group.is_main


@dataclass
class Measured:
    clean: torch.Tensor
    adv: torch.Tensor
    metrics: Metrics
    uap_norm: float
    control: Control | None
    comparison: Comparison | None
    records: PerImage | None = None  # predictions.csv's scores and control predictions


@dataclass
class Memo:
    """What the cells of one audit share. The same model on the same evaluation images gives the same clean
    predictions, the same pre-audit check and, for the same norm, eps and seed, the same noise controls: an
    audit's cells that differ only in source or method compute them once (audit quick: 12 of its 18 cells).
    Keys hold the model's weights hash and preprocessing and a checksum of the images, never a name alone."""

    draws: dict = field(default_factory=dict)  # (model, images, clip[, noise]) -> (preds, scores), (K, N) each
    checks: dict = field(default_factory=dict)  # (model, images) -> ModelCheck


@dataclass
class Given:
    """What a library call hands over instead of names: a live model, in-memory data, photos as a tensor;
    an audit hands its :class:`Memo`."""

    model: LoadedModel | None = None
    task: object = None  # robaudit.data.TaskData
    photos: torch.Tensor | None = None
    memo: Memo | None = None


def _memo_key(lm: LoadedModel, x: torch.Tensor, y: torch.Tensor) -> tuple:
    card = lm.card
    return (card.name, card.weights_sha256, tuple(lm.mean), tuple(lm.std), card.input_size, lm.channels,
            str(lm.device), tuple(x.shape), float(x.double().sum()), float((x.double() ** 2).sum()),
            tuple(y.tolist()))


def run_uap(spec: UAPSpec, out_dir: Path | None = None, quiet: bool = False, init=None,
            given: Given | None = None) -> RunOutput:
    """Run one UAP audit cell. Writes result.json, uap.npy, uap.png, examples.png to ``out_dir``.

    ``out_dir`` is checked and locked before any compute; its files are written as one transaction, and a
    perturbation that cannot be written is rescued (see :mod:`robaudit.eval.artifacts`). ``given`` carries
    the library's live objects; without it the spec's names are resolved (the CLI's and recipes' path)."""
    with guard_output(out_dir):
        return _run_uap(spec, out_dir, quiet, init, given or Given())


def _run_uap(spec: UAPSpec, out_dir: Path | None, quiet: bool, init, given: Given) -> RunOutput:
    prep = prepare(spec, out_dir, init, given)
    t0 = time.time()
    outcome = build_query(prep, quiet) if spec.access == "query" else build_eot(prep, quiet) if spec.eot \
        else build(prep, quiet)  # threat models: eval/query.py, eval/delivery.py
    seconds = time.time() - t0
    v = outcome.v.detach().cpu().float()
    if not torch.isfinite(v).all():
        raise RuntimeFailure("the perturbation became NaN/inf", "the model's gradients overflow; try --norm linf")
    if outcome.interrupted:
        keep_partial(prep, v, out_dir)
    measured = measure(prep, v)
    result = record(prep, outcome, measured, seconds)
    per_image = dict(labels=prep.y_eval, records=measured.records,
                     ids=image_ids(prep.task, spec.split, spec.eval_limit, spec.seed))
    if out_dir is not None and prep.is_main:  # every rank holds the same v and metrics; rank 0 writes
        write_run(out_dir, result, v, prep.x_eval, measured.clean, measured.adv, prep.lm.classes, spec, **per_image)
    return RunOutput(result, v, out_dir, prep.x_eval, measured.clean, measured.adv, per_image)


def prepare(spec: UAPSpec, out_dir: Path | None, init=None, given: Given | None = None) -> Prepared:
    """Load the model, its task, eps, the evaluation images, the source and the selection images; check them."""
    given = given or Given()
    group = init_from_env(spec.device)  # None unless launched by torchrun with 2+ processes
    if given.model is None:
        lm, task = load_model_and_task(device=spec.device, data=spec.data, **spec.ref().load_kwargs())
    else:
        lm, task = given.model, given.task
        if task is None:
            if not (spec.data or lm.card.task):
                raise BadInput("no data given for a model without a task", "pass data=ra.Data(test=(x, y), ...)")
            task = load_task(spec.data or lm.card.task, size=lm.card.input_size)
        task = match_task(lm, task)
    spec = _photo_fallback(spec)
    size, ch = lm.card.input_size, lm.channels
    target = lm.resolve_target(spec.target)
    critical_of(spec.critical_class, task, lm.classes)  # a wrong --critical-class fails before any compute
    if spec.eps is None and "train" not in task.splits:
        raise BadInput(f"zeta needs the task's training images (its reference norm), and {task.full_name!r} has "
                       "no train split", "pass train=(x, y) to Data, or an absolute eps=")
    ref_norm = task.mean_norm(spec.norm, size, split="train", seed=spec.seed, channels=ch) \
        if "train" in task.splits else float("nan")
    eps = spec.eps if spec.eps is not None else spec.zeta * ref_norm
    x_eval, y_eval = task.tensors(spec.split, size=size, limit=spec.eval_limit, seed=spec.seed)
    x_eval = to_channels(x_eval, ch)
    builder, surrogate, checked = lm.module, None, None
    if spec.surrogate is None:  # a zero-knowledge build must not touch the audited model before v is fixed
        _probe(lm, x_eval)
        checked = _check(spec, lm, task, x_eval, y_eval, given.memo)
    else:
        builder, surrogate = _surrogate(spec, lm)
    builder = folded(builder, ch, size, lm.device)
    budget = spec.resolved_budget(lm.device.type) if given.photos is None else None
    if given.photos is not None:
        src = tensor_source(given.photos, size)
    else:
        src = uap_source(spec, task, size, budget, hold_out=(surrogate is not None or (
                         spec.access == "query" and spec.select_every is not None)) and spec.select != "none")
    if src.n == 0:
        raise BadInput(f"source {spec.source!r} has no images")
    images = in_channels(src.images, ch)
    if src.held_out is not None:
        src.held_out = to_channels(src.held_out, ch)
    source = shard(images, group) if group is not None else images
    if init is None:
        init = load_partial(out_dir)
        if init is not None:
            info(f"resuming from the partial perturbation in {out_dir / PARTIAL}")
    if init is not None and tuple(init.shape[-3:]) != (ch, size, size):
        raise BadInput(f"initial perturbation has shape {tuple(init.shape)}, the model needs (1, {ch}, {size}, "
                       f"{size})")
    prep = Prepared(spec, lm, task, target, eps, ref_norm, x_eval, y_eval, source, src.n, src.description, init,
                    group, budget=budget, builder=builder, surrogate=surrogate, checked=checked,
                    fast=builder if surrogate is None else None, memo=given.memo)
    if spec.access == "query":  # the attacker chooses v on what it sees: photos, through the oracle (eval/query)
        prep.held_out = src.held_out
    elif surrogate is not None and src.held_out is not None:
        prep.select_split, prep.select_n = "held-out photos", len(src.held_out)
        prep.select_score = _scorer(builder, src.held_out, None, spec.clip, lm.device)
    elif spec.select != "none":
        split = spec.select if spec.select in task.splits and spec.select != spec.split else "train"
        if split not in task.splits:
            raise BadInput(f"v is chosen on the {spec.select} split, and {task.full_name!r} has neither val nor train",
                           "pass val=(x, y) to Data, or select='none' (the blind attacker's last v)")
        x_sel, _ = task.tensors(split, size=size, limit=spec.select_limit, seed=spec.seed + 1)
        x_sel = to_channels(x_sel, ch)
        prep.select_split, prep.select_n = split, len(x_sel)
        if len(x_sel) < MIN_SELECT:
            warn(f"v is chosen on only {len(x_sel)} {split} images (fewer than {MIN_SELECT}): the selection is "
                 "noisy; give the data a larger val split, or select='none'")
        prep.select_score = _scorer(prep.fast, x_sel, target, spec.clip, lm.device)
    return prep


def _photo_fallback(spec: UAPSpec) -> UAPSpec:
    """The default photo source without ImageNet photos in a data root is the bundled ``natural`` set (said)."""
    if spec.source != "imagenet":
        return spec
    root = data_root(required=False)
    if root is not None and (root / "imagenet").is_dir():
        return spec
    info("no imagenet/ folder in a data root: the photo source is the bundled 'natural' set (photos shipped in "
         "scikit-image, scikit-learn and matplotlib)")
    return spec.model_copy(update={"source": "natural"})


def _check(spec: UAPSpec, lm: LoadedModel, task, x: torch.Tensor, y: torch.Tensor, memo: Memo | None = None
           ) -> ModelCheck:
    """``robaudit models check`` on the evaluated images: its warnings said, a below-chance model refused."""
    key = (_memo_key(lm, x, y), task.full_name, spec.split) if memo is not None else None
    chk = memo.checks.get(key) if memo is not None else None
    if chk is None:
        chk = check_model(lm, task, spec.split, x=x, y=y)
        if memo is not None:
            memo.checks[key] = chk
    if chk.below_chance and not spec.force:
        raise chk.refusal()
    for w in chk.warnings:
        warn(f"model {lm.card.name!r}: {w}")
    return chk


def _probe(lm: LoadedModel, x_eval: torch.Tensor) -> None:
    """Refuse a model whose outputs on clean images are not finite (broken or mismatched weights)."""
    with torch.inference_mode():
        probe = lm.module(x_eval[: min(8, len(x_eval))].to(lm.device))
    if not torch.isfinite(probe).all():
        raise BadInput(f"model {lm.card.name!r} produces NaN/inf outputs on clean images",
                       "the checkpoint is broken or mismatched; retrain or check --arch")


def _surrogate(spec: UAPSpec, lm: LoadedModel) -> tuple[torch.nn.Module, str]:
    """The model a zero-knowledge attacker builds on: the public ImageNet model of the audited arch
    ('pretrained'), or another model (zoo name or checkpoint)."""
    if spec.surrogate == "pretrained":
        b = imagenet_classifier(lm.card.arch, weights_file=spec.weights_file)
        net = Normalized(b.net, b.mean, b.std).to(lm.device).eval()
        return net, f"{lm.card.arch} ImageNet classifier ({b.weights})"
    if not Path(spec.surrogate).is_file() and not is_trained(spec.surrogate):
        raise BadInput(f"--surrogate {spec.surrogate!r} is not 'pretrained', a trained zoo model or a checkpoint file",
                       "pass --surrogate pretrained (the public ImageNet model of the audited arch), a name from "
                       "'robaudit models list', or a checkpoint path")
    other = load_model(spec.surrogate, device=spec.device, trust_checkpoint=spec.trust_checkpoint)
    return other.module, other.card.name


#: images per forward pass of a selection check: large on a GPU; on CPU a cache-sized batch is faster
#: (lite0 at 64 px, 1 thread: 530 images/s at 32 against 300 at 256; benchmarks/README.md "Time to verdict")
CHECK_BATCH = {"cuda": 256, "cpu": 32}
#: the usual first cut (a quarter of the build) times this, in a race with class-directed candidates: a build
#: toward the right class starts slowest (X-rays, toward 'normal': 0.13 on the selection split at 256 views, last
#: of five; 0.66-0.74 on test at the end; benchmarks/README.md "Class-directed candidates")
FIRST_CUT_DIRECTED = 2


def predict_as_measured(lm: LoadedModel, x: torch.Tensor, v: torch.Tensor | None, clip: bool,
                        fast: torch.nn.Module | None = None) -> torch.Tensor:
    """Predictions on ``x + v`` through the path ``measure`` takes (the batch-norm-folded model, channels-last,
    the device's check batch), so that a rate computed elsewhere (a transfer matrix's diagonal) equals the
    cell's own to the image."""
    net = fast if fast is not None else folded(lm.module, lm.channels, lm.card.input_size, lm.device)
    with channels_last_model(net) as cl:
        return predict(cl, x, v, clip=clip, batch_size=CHECK_BATCH.get(torch.device(lm.device).type, 64),
                       device=lm.device)


def _scorer(model: torch.nn.Module, x: torch.Tensor, target: int | None, clip: bool, device):
    """``score(v)``: per-image success (bool array) of v on ``x`` for ``model`` (fooling vs its clean
    predictions, or the target), forward only, in inference mode, on channels-last images."""
    batch = CHECK_BATCH.get(torch.device(device).type, 64)
    x = x.to(device).contiguous(memory_format=torch.channels_last)
    clean = predict(model, x, None, clip=clip, batch_size=batch, device=device).numpy()
    return lambda v: success_vector(clean, predict(model, x, v, clip=clip, batch_size=batch, device=device).numpy(),
                                    target).astype(bool)


def build(prep: Prepared, quiet: bool) -> UAPOutcome:
    """The UAP engine over the prepared source: one build, or for ``best`` / ``restarts`` a race of the
    candidates (method x restart; with ``toward_classes``, sgd builds toward each class) by successive halving on
    the selection split (a stream only; a plain source is one chunk, so every candidate runs it whole). The
    strongest by the selection split is kept (by the source rate with ``--select none``); every candidate and
    its rungs are recorded."""
    spec, lm = prep.spec, prep.lm
    runs = candidate_runs(prep)
    modes = [spec.mode if m == "fgsm" else "batched" for m, _, _ in runs]
    max_iter = spec.default_max_iter()
    total = max_iter * prep.source_n
    streamed = not isinstance(prep.source, torch.Tensor)
    every = spec.select_every_for(total)
    first = spec.race_rung or _first_cut(total, every, any(t is not None for _, _, t in runs))
    rungs = rung_points(first, total, len(runs)) if len(runs) > 1 and streamed else []
    start = time.perf_counter()
    world = prep.group.world if prep.group is not None else 1
    cl = all(lookup(m, mode).channels_last for (m, _, _), mode in zip(runs, modes, strict=True))
    with progress(disable=quiet or not prep.is_main) as prog, fast_model(prep.builder, lm.device, spec.amp) as fast, \
            channels_last_model(fast, cl) as net:
        entrants = [_entrant(prep, net, run, mode, prog, every, start) for run, mode in zip(runs, modes, strict=True)]
        group = entrants[0].builder.run.group
        chunks = group.chunks([prep.source] if not streamed else prep.source)
        winner = race(entrants, rechunk(chunks, [r // world for r in rungs]) if rungs else chunks, rungs)
        outcomes = [e.builder.outcome() for e in entrants]
    prep.candidates = [_candidate(e, o, runs[i], lm.classes)
                       for i, (e, o) in enumerate(zip(entrants, outcomes, strict=True))]
    best_i = entrants.index(winner)
    prep.candidates[best_i].chosen = True
    prep.outcome = outcomes[best_i]
    prep.race = {"rungs": rungs, "check_seconds": sum(o.selection.check_seconds for o in outcomes if o.selection),
                 "seconds": time.perf_counter() - start}
    return prep.outcome


def candidate_runs(prep: Prepared) -> list[tuple[str, int, int | None]]:
    """(method, seed, class a directed build aims at, else None: the cell's own goal) of every candidate. With
    class-directed builds (:func:`toward_classes`) sgd builds toward each class are raced, all judged by the
    non-targeted rate on the selection split: a non-targeted UAP settles on one class's direction, and on the
    X-rays it picked the weak one (28% of the scans against 66-74% toward 'normal'; benchmarks/README.md
    "Class-directed candidates"). Above two classes the non-targeted build races too; on two it is one of the
    two directions (its selection rate equalled the build toward 'pneumonia' on all three X-ray seeds)."""
    spec = prep.spec
    restarts = range(spec.restarts)
    if toward_classes(prep):
        # fgsm and perphoto leave the race: they won none of its 9 task-seeds and cost 25-50% of its time
        # (benchmarks/README.md "Class-directed candidates")
        n = len(prep.lm.classes)
        return ([("sgd", spec.seed + r, None) for r in restarts] if n > 2 else []) + \
            [("sgd", spec.seed + r, c) for c in range(n) for r in restarts]
    methods = list(BEST_OF) if spec.method == "best" else [spec.method]
    return [(m, spec.seed + r, None) for m in methods for r in restarts]


def toward_classes(prep: Prepared) -> bool:
    """Whether sgd builds toward each class are raced: asked (``toward_classes=True``) and applicable, or left
    to the default (None) in an applicable sgd cell of a two-class model (best keeps its race of methods). Asked
    but not applicable is a warning that says why, never a silent no-op; the default where it cannot apply is the
    plain build."""
    asked = prep.spec.toward_classes
    if asked is False:
        return False
    why = _toward_refusal(prep)
    if asked is None:
        return prep.spec.method == "sgd" and why is None and len(prep.lm.classes) == 2
    if why is not None:
        warn(f"--toward-classes ignored: {why}")
    return why is None


def _toward_refusal(prep: Prepared) -> str | None:
    spec, n = prep.spec, len(prep.lm.classes)
    if spec.method not in ("sgd", "best"):
        return f"it races sgd builds (--method sgd or best), not {spec.method}"
    if prep.target is not None:
        return "the cell is targeted (--target): its direction is given"
    if prep.surrogate is not None:
        return "v is built on a surrogate, whose classes are not the task's"
    if prep.select_score is None:
        return "the builds are judged on a selection split (--select val or train), not --select none"
    if not 2 <= n <= TOWARD_MAX_CLASSES:
        return f"the model has {n} classes; one build per class is raced up to {TOWARD_MAX_CLASSES}"
    return None


def _first_cut(total: int, every: int, directed: bool) -> int:
    """Images every candidate sees before the first cut: whole check intervals nearest a quarter of the build
    (at an eighth, slow starters such as sgd on the fundus photos ranked last and were dropped:
    benchmarks/README.md "Time to verdict"); with class-directed candidates, FIRST_CUT_DIRECTED times that."""
    quarter = every * max(1, round(total / 4 / every))
    return max(every, every * round(quarter * FIRST_CUT_DIRECTED / every)) if directed else quarter


def _entrant(prep: Prepared, net: torch.nn.Module, run: tuple[str, int, int | None], mode: str, prog, every: int,
             start: float) -> Entrant:
    """One candidate build on the (already channels-last) model, its selection on the race's clock. A build
    toward a class is scored, like the others, on the cell's own criterion (``prep.select_score``)."""
    spec, lm = prep.spec, prep.lm
    method, seed, toward = run
    selection = None
    if prep.select_score is not None:
        rule = StopRule(spec.stop_window, spec.stop_delta, spec.stop_confidence) if spec.stop_delta > 0 else None
        selection = Selection(prep.select_score, every=every, patience=spec.patience, rule=rule, keep=True,
                              clock=lambda: time.perf_counter() - start, stop_after=spec.stop_after)
    max_iter = spec.default_max_iter()
    aim = f" toward {lm.classes[toward]}" if toward is not None else ""
    label = f"UAP {method}/{mode}{aim} on {spec.source}" + (f" seed {seed}" if spec.restarts > 1 else "")
    bar = prog.add_task(label, total=max_iter * prep.source_n, status="")

    def on_progress(n: int, status: str | None = None) -> None:
        prog.update(bar, advance=n, **({"status": f"source {status}"} if status else {}))

    entry, state = new_run(net, method=method, norm=spec.norm, eps=prep.eps,
                           target=prep.target if toward is None else toward, mode=mode, max_iter=max_iter,
                           step_size=spec.resolved_step(), batch_size=spec.batch_size, clip=spec.clip, seed=seed,
                           device=lm.device, progress=on_progress, distributed=prep.group is not None,
                           selection=selection)
    builder = Builder(state, create(entry, {}), init=prep.init, measure_chunks=prep.budget is None)
    return Entrant(f"{method}{'' if toward is None else '>' + str(toward)}/{seed}", builder)


def _candidate(e: Entrant, outcome: UAPOutcome, run: tuple[str, int, int | None], classes: list[str]) -> Candidate:
    sel = outcome.selection
    return Candidate(method=run[0], seed=run[1], toward=classes[run[2]] if run[2] is not None else None,
                     selection_rate=sel.best_rate if sel is not None and sel.best_rate >= 0 else None,
                     source_fooling_rate=outcome.source_fooling_rate, images_seen=outcome.images_seen,
                     seconds=outcome.seconds, dropped_at=e.dropped_at,
                     stop_reason=sel.stop_reason if sel is not None and outcome.plateau else None,
                     rungs=[RungResult(images=r.images, selection_rate=r.selection_rate, kept=r.kept,
                                       p_vs_leader=r.p_vs_leader) for r in e.rungs])


def _strength(outcome: UAPOutcome) -> float:
    sel = outcome.selection
    return sel.best_rate if sel is not None else outcome.source_fooling_rate


def keep_partial(prep: Prepared, v: torch.Tensor, out_dir: Path | None) -> None:
    """Save an interrupted run's perturbation where the same command resumes, and stop with exit 130."""
    if out_dir is not None and prep.is_main:
        save_partial(out_dir, v, prep.spec)
    where = f"is in {out_dir / PARTIAL}" if out_dir is not None else "was not saved (no output folder)"
    raise Interrupted(f"interrupted: the best perturbation so far {where}; re-run the same command with the "
                      "same --out to resume")


def measure(prep: Prepared, v: torch.Tensor) -> Measured:
    """v and K same-norm random controls on the evaluation images, with the paired test between them."""
    spec, lm = prep.spec, prep.lm
    if prep.surrogate is not None:  # v is fixed: now the audited model may be asked
        _probe(lm, prep.x_eval)
        prep.checked = _check(spec, lm, prep.task, prep.x_eval, prep.y_eval, prep.memo)
    if prep.fast is None:
        prep.fast = folded(lm.module, lm.channels, prep.size, lm.device)
    achieved = float(lp_norm(v, spec.norm).item())
    noises, noise_norm = torch.empty(0, *v.shape[1:]), None
    if spec.controls > 0:
        gen = torch.Generator().manual_seed(spec.seed + 7919)
        # L2: v's own norm; the ball's radius when v sits on its sphere (to float32 rounding), so cells whose v
        # fill the ball draw the same noise and an audit's memo computes it once
        on_sphere = spec.norm == "linf" or abs(achieved - prep.eps) <= ON_SPHERE * prep.eps
        noise_norm = prep.eps if on_sphere else achieved
        noises = random_controls(tuple(v.shape[1:]), spec.norm, noise_norm, spec.controls, kind=spec.control_kind,
                                 generator=gen)
    sel = prep.outcome.selection if prep.outcome is not None else None
    snapshots = list(sel.snapshots) if sel is not None else []
    # one pass over the images: clean, v, every noise draw and every checked v of the trajectory, in cache-sized
    # batches made channels-last one at a time (no second copy of the images): a third of the time of separate
    # NCHW passes at batch 256 on CPU (benchmarks/README.md "Measuring the verdict"). Clean is recomputed here
    # rather than taken from the model check, so that every draw is judged against predictions from the same
    # kernels and batches (a borderline image cannot count as fooled by rounding alone)
    preds, scores = _score(prep, v, list(noises), snapshots, noise_norm)
    k = 2 + len(noises)
    clean, adv = preds[0], preds[1]
    metrics = uap_metrics(clean, adv, prep.y_eval, lm.classes, target=prep.target)
    delivered = spec.delivery != "input"  # v as it reaches the model through the stored format (eval/delivery)
    control = comparison = median = None
    if spec.controls > 0:
        control, outcomes = control_metrics(lm.module, prep.x_eval, noises, clean, target=prep.target,
                                            kind=spec.control_kind, predicted=preds[2:k])
        comparison = compare_to_control(success_vector(clean.numpy(), adv.numpy(), prep.target), outcomes)
        median = comparison.detail["control_draw"]
    if delivered:
        metrics.delivered = measure_delivery(prep, v, noises if spec.controls > 0 else None, median)
    records = PerImage(scores[0].numpy(), scores[1].numpy(), preds[2 + median].numpy() if median is not None else None)
    if sel is not None:  # each checked v on the reported split: the trajectory's test rates
        prep.test_rates = [float(success_vector(clean.numpy(), p.numpy(), prep.target).mean()) for p in preds[k:]]
    return Measured(clean, adv, metrics, achieved, control, comparison, records)


def _score(prep: Prepared, v: torch.Tensor, noises: list[torch.Tensor], snapshots: list[torch.Tensor],
           noise_norm: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictions and scores (K, N) for clean, v, each noise draw and each snapshot, in that order. Each draw is
    run on its own per batch, so the clean and noise rows an earlier cell of the audit computed for the same
    model, images, norm, eps and seed (``prep.memo``) are those this pass would compute, and are reused."""
    spec, lm = prep.spec, prep.lm
    memo = prep.memo
    base = (_memo_key(lm, prep.x_eval, prep.y_eval), spec.clip) if memo is not None else None
    nkey = base + (spec.norm, noise_norm, spec.controls, spec.control_kind, spec.seed) \
        if base is not None and noises else None
    clean = memo.draws.get(base) if memo is not None else None
    noise = memo.draws.get(nkey) if nkey is not None else None
    draws = ([None] if clean is None else []) + [v] + ([n[None] for n in noises] if noise is None else []) + snapshots
    batch = CHECK_BATCH.get(torch.device(lm.device).type, 64)
    with channels_last_model(prep.fast) as net:
        got = score_draws(net, prep.x_eval, draws, clip=spec.clip, batch_size=batch, device=lm.device)
    rows = [list(t.unbind(0)) for t in got]  # per draw, for preds and scores
    i = 0
    if clean is None:
        clean = (rows[0][0][None], rows[1][0][None])
        i = 1
    v_rows = (rows[0][i][None], rows[1][i][None])
    i += 1
    if noise is None:
        j = i + len(noises)
        noise = (torch.stack(rows[0][i:j]) if noises else torch.empty(0, len(prep.x_eval), dtype=torch.long),
                 torch.stack(rows[1][i:j]) if noises else torch.empty(0, len(prep.x_eval)))
        i = j
    snaps = [torch.stack(r[i:]) if len(r) > i else r[0][None][:0] for r in rows]
    if memo is not None:
        memo.draws[base] = clean
        if nkey is not None:
            memo.draws[nkey] = noise
    return tuple(torch.cat([c, a, n, s]) for c, a, n, s in zip(clean, v_rows, noise, snaps, strict=True))


def record(prep: Prepared, outcome: UAPOutcome, m: Measured, seconds: float) -> Result:
    """The versioned result: what was attacked, how, every number, and where it was computed."""
    spec, lm, task, target = prep.spec, prep.lm, prep.task, prep.target
    attack = AttackInfo(
        kind="uap", method=spec.method, mode=spec.mode if spec.method == "fgsm" else None, norm=spec.norm,
        zeta=prep.eps / prep.ref_norm if prep.ref_norm == prep.ref_norm else None, eps=prep.eps,
        zeta_reference=f"mean {spec.norm} norm of {task.full_name} train images in [0,1] at {prep.size} px"
        f"{'' if lm.channels == 3 else f', {lm.channels} channel'} = {prep.ref_norm:.4f}"
        if prep.ref_norm == prep.ref_norm else "no training images: eps given absolute",
        targeted=target is not None, target=target,
        target_name=lm.classes[target] if target is not None else None, source=spec.source,
        source_n=prep.source_n, clip=spec.clip, max_iter=spec.default_max_iter(), step_size=spec.resolved_step(),
        batch_size=spec.batch_size, seed=spec.seed, seconds=seconds, device=str(lm.device), uap_norm=m.uap_norm,
        source_fooling_rate=outcome.source_fooling_rate, threat_model=_threat_model(prep),
        surrogate=prep.surrogate, budget=prep.budget, selection=_selection_info(prep, outcome),
        candidates=prep.candidates if len(prep.candidates or []) > 1 else [])
    attack = attack.model_copy(update=threat_update(prep))  # access, queries, delivery, NIST terms (eval/query)
    notes = [f"source: {prep.source_desc}",
             "fooling rate: prediction on x+v differs from the prediction on x (not the label), over all images",
             f"x+v {'clipped to [0,1]' if spec.clip else 'not clipped (as published)'}"]
    if outcome.selection is not None:
        notes.append(f"stance: the audit estimates what an attacker's procedure can reach, as chosen by the auditor: "
                     f"v is the strongest of the build's checkpoints on {prep.select_n} {prep.select_split} images "
                     f"(never the reported {spec.split} split), which the reported numbers are measured on")
    if prep.surrogate is not None:
        notes.append(f"zero-knowledge: v was built on {prep.surrogate} from photos only; the audited model and "
                     "its images were first used after v was fixed")
    notes += threat_notes(prep)
    notes.append(_preprocessing_note(prep))
    if spec.amp:
        notes.append("UAP built under bfloat16 autocast (--amp); every metric measured in float32")
    critical, critical_source = critical_of(spec.critical_class, task, lm.classes)
    harm = harm_metrics(m.clean, m.adv, prep.y_eval, lm.classes, critical=critical, critical_source=critical_source,
                        target=target, control_adv=m.records.control_adv if m.records else None)
    env = environment(lm.device) | software_versions() | {"seed": spec.seed} | \
        ({"distributed": prep.group.info()} if prep.group else {})
    return Result(robaudit_version=__version__, created=now_iso(), command=command_line() or None, environment=env,
                  model=lm.info(), data=task.data_info(spec.split, len(prep.x_eval)), attack=attack,
                  metrics=m.metrics, control=m.control, comparison=m.comparison, harm=harm, notes=notes)


def _preprocessing_note(prep: Prepared) -> str:
    """What robaudit assumed between the stored images and the network (nothing silent)."""
    lm, task = prep.lm, prep.task
    size = getattr(task, "image_size", None)
    stored = f"{size(prep.spec.split)[0]}x{size(prep.spec.split)[1]} px" if size else "stored size"
    src = lm.preprocessing()["source"]
    mapping = getattr(task, "mapping", None)
    order = (f"data labels mapped to the outputs by name ({', '.join(f'{a} -> {b}' for a, b in mapping.items())})"
             if mapping else f"the data's label order ({src.get('classes', 'card')})")
    return (f"preprocessing assumed: images from {stored} resized to {lm.input_size} px ({src.get('input_size')}; "
            f"antialiased bilinear, centre crop if not square), {lm.channels} channel(s) ({src.get('channels')}), then "
            f"(x - mean) / std with mean {list(lm.mean)} ({src.get('mean')}), std {list(lm.std)} ({src.get('std')}); "
            f"classes in output order {lm.classes}: {order}; model read as {lm.card.format or 'robaudit store'}"
            + (f", ONNX parity {lm.card.parity:.2g}" if lm.card.parity is not None else ""))


def _threat_model(prep: Prepared) -> str:
    if prep.spec.access == "query":
        return f"query-only ({prep.spec.query_output})"
    if prep.surrogate is not None:
        return "zero-knowledge surrogate"
    return "training images" if prep.spec.source == "train" else "white-box natural"


def _selection_info(prep: Prepared, outcome: UAPOutcome) -> SelectionInfo | None:
    sel = outcome.selection
    if sel is None:
        return None
    tests = prep.test_rates or [None] * len(sel.trajectory)
    bounds = sel.upper_gains if len(sel.upper_gains) == len(sel.trajectory) else [None] * len(sel.trajectory)
    final = next((r for im, r, _ in reversed(sel.trajectory) if im == outcome.images_seen), None)
    race = prep.race or {}
    rule = sel.rule
    return SelectionInfo(split=prep.select_split, n=prep.select_n, every=sel.every, patience=sel.patience,
                         best_rate=sel.best_rate, best_at=sel.best_at, final_rate=final, plateau=outcome.plateau,
                         stop_rule=StopRuleInfo(**rule.info(), after=sel.stop_after) if rule is not None else None,
                         stop_reason=sel.stop_reason if outcome.plateau else None,
                         race_rungs=race.get("rungs", []), check_seconds=race.get("check_seconds"),
                         build_seconds=race.get("seconds"),
                         trajectory=[TrajectoryPoint(images=im, seconds=sec, selection_rate=r, test_rate=t,
                                                     upper_gain=g)
                                     for (im, r, sec), t, g in zip(sel.trajectory, tests, bounds, strict=True)])
