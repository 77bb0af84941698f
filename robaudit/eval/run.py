"""One UAP run end to end, as five stages: prepare -> build -> measure -> record -> write.

``prepare`` loads and checks everything (model, task, eps, evaluation images, source, a resumed
partial) before any compute; ``build`` runs the UAP engine and keeps an interrupted run's partial;
``measure`` evaluates v and its same-norm random controls on the evaluation images; ``record``
assembles the versioned :class:`~robaudit.results.Result`; ``write`` fills the run folder.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from robaudit import __version__
from robaudit.attacks.lp import lp_norm
from robaudit.attacks.noise import random_controls
from robaudit.attacks.predict import predict
from robaudit.attacks.uap import UAPOutcome, build_uap
from robaudit.attacks.uap.group import DistributedGroup, init_from_env, shard
from robaudit.console import info, progress
from robaudit.errors import BadInput, Interrupted, RuntimeFailure
from robaudit.eval.artifacts import PARTIAL, load_partial, save_partial, write_run
from robaudit.eval.metrics import compare_to_control, control_metrics, uap_metrics
from robaudit.eval.sources import uap_source
from robaudit.models import LoadedModel, load_model_and_task
from robaudit.models.normalize import fast_model
from robaudit.provenance import command_line, environment, now_iso
from robaudit.results import AttackInfo, Comparison, Control, Metrics, Result, success_vector
from robaudit.specs import UAPSpec

__all__ = ["PARTIAL", "RunOutput", "run_uap"]


@dataclass
class RunOutput:
    """What a run produced: the validated result, the perturbation, and where files went."""

    result: Result
    v: torch.Tensor  # (1, 3, S, S), CPU float32
    out_dir: Path | None


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


def run_uap(spec: UAPSpec, out_dir: Path | None = None, quiet: bool = False, init=None) -> RunOutput:
    """Run one UAP audit cell. Writes result.json, uap.npy, uap.png, examples.png to ``out_dir``."""
    prep = prepare(spec, out_dir, init)
    t0 = time.time()
    outcome = build(prep, quiet)
    seconds = time.time() - t0
    v = outcome.v.detach().cpu().float()
    if not torch.isfinite(v).all():
        raise RuntimeFailure("the perturbation became NaN/inf", "the model's gradients overflow; try --norm linf")
    if outcome.interrupted:
        keep_partial(prep, v, out_dir)
    measured = measure(prep, v)
    result = record(prep, outcome, measured, seconds)
    if out_dir is not None and prep.is_main:  # every rank holds the same v and metrics; rank 0 writes
        write_run(out_dir, result, v, prep.x_eval, measured.clean, measured.adv, prep.lm.classes, spec)
    return RunOutput(result, v, out_dir)


def prepare(spec: UAPSpec, out_dir: Path | None, init=None) -> Prepared:
    """Load the model, its task, eps, the evaluation images and the source; check them all."""
    group = init_from_env(spec.device)  # None unless launched by torchrun with 2+ processes
    lm, task = load_model_and_task(spec.model, checkpoint=spec.checkpoint, arch=spec.arch, device=spec.device,
                                   trust_checkpoint=spec.trust_checkpoint, data=spec.data)
    size = lm.card.input_size
    target = lm.resolve_target(spec.target)
    ref_norm = task.mean_norm(spec.norm, size, split="train", seed=spec.seed)
    eps = spec.eps if spec.eps is not None else spec.zeta * ref_norm
    x_eval, y_eval = task.tensors(spec.split, size=size, limit=spec.eval_limit, seed=spec.seed)
    with torch.inference_mode():
        probe = lm.module(x_eval[: min(8, len(x_eval))].to(lm.device))
    if not torch.isfinite(probe).all():
        raise BadInput(f"model {lm.card.name!r} produces NaN/inf outputs on clean images",
                       "the checkpoint is broken or mismatched; retrain or check --arch")
    source, source_n, source_desc = uap_source(spec, task, size)
    if source_n == 0:
        raise BadInput(f"source {spec.source!r} has no images")
    if group is not None:
        source = shard(source, group)
    if init is None:
        init = load_partial(out_dir)
        if init is not None:
            info(f"resuming from the partial perturbation in {out_dir / PARTIAL}")
    if init is not None and tuple(init.shape[-3:]) != (3, size, size):
        raise BadInput(f"initial perturbation has shape {tuple(init.shape)}, the model needs (1, 3, {size}, {size})")
    return Prepared(spec, lm, task, target, eps, ref_norm, x_eval, y_eval, source, source_n, source_desc, init, group)


def build(prep: Prepared, quiet: bool) -> UAPOutcome:
    """The UAP engine over the prepared source, with a progress bar (rank 0 only)."""
    spec, lm = prep.spec, prep.lm
    max_iter = spec.default_max_iter()
    with progress(disable=quiet or not prep.is_main) as prog, fast_model(lm.module, lm.device, spec.amp) as net:
        bar = prog.add_task(f"UAP {spec.method}/{spec.mode} on {spec.source}", total=max_iter * prep.source_n,
                            status="")

        def on_progress(n: int, status: str | None = None) -> None:
            prog.update(bar, advance=n, **({"status": f"source {status}"} if status else {}))

        return build_uap(net, prep.source, method=spec.method, norm=spec.norm, eps=prep.eps, target=prep.target,
                         mode=spec.mode, max_iter=max_iter, step_size=spec.resolved_step(),
                         batch_size=spec.batch_size, clip=spec.clip, init=prep.init, seed=spec.seed,
                         device=lm.device, progress=on_progress, distributed=prep.group is not None)


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
    clean = predict(lm.module, prep.x_eval, None, clip=spec.clip, batch_size=256, device=lm.device)
    adv = predict(lm.module, prep.x_eval, v, clip=spec.clip, batch_size=256, device=lm.device)
    metrics = uap_metrics(clean, adv, prep.y_eval, lm.classes, target=prep.target)
    achieved = float(lp_norm(v, spec.norm).item())
    control = comparison = None
    if spec.controls > 0:
        gen = torch.Generator().manual_seed(spec.seed + 7919)
        noise_norm = prep.eps if spec.norm == "linf" else achieved
        noises = random_controls(tuple(v.shape[1:]), spec.norm, noise_norm, spec.controls, kind=spec.control_kind,
                                 generator=gen)
        control, outcomes = control_metrics(lm.module, prep.x_eval, noises, clean, target=prep.target,
                                            clip=spec.clip, batch_size=256, device=lm.device, kind=spec.control_kind)
        comparison = compare_to_control(success_vector(clean.numpy(), adv.numpy(), prep.target), outcomes)
    return Measured(clean, adv, metrics, achieved, control, comparison)


def record(prep: Prepared, outcome: UAPOutcome, m: Measured, seconds: float) -> Result:
    """The versioned result: what was attacked, how, every number, and where it was computed."""
    spec, lm, task, target = prep.spec, prep.lm, prep.task, prep.target
    attack = AttackInfo(
        kind="uap", method=spec.method, mode=spec.mode if spec.method == "fgsm" else None, norm=spec.norm,
        zeta=prep.eps / prep.ref_norm, eps=prep.eps,
        zeta_reference=f"mean {spec.norm} norm of {task.full_name} train images in [0,1] at {prep.size} px = "
        f"{prep.ref_norm:.4f}", targeted=target is not None, target=target,
        target_name=lm.classes[target] if target is not None else None, source=spec.source,
        source_n=prep.source_n, clip=spec.clip, max_iter=spec.default_max_iter(), step_size=spec.resolved_step(),
        batch_size=spec.batch_size, seed=spec.seed, seconds=seconds, device=str(lm.device), uap_norm=m.uap_norm,
        source_fooling_rate=outcome.source_fooling_rate)
    notes = [f"source: {prep.source_desc}",
             "fooling rate: prediction on x+v differs from the prediction on x (not the label), over all images",
             f"x+v {'clipped to [0,1]' if spec.clip else 'not clipped (as published)'}"]
    if spec.amp:
        notes.append("UAP built under bfloat16 autocast (--amp); every metric measured in float32")
    env = environment(lm.device) | {"seed": spec.seed} | ({"distributed": prep.group.info()} if prep.group else {})
    return Result(robaudit_version=__version__, created=now_iso(), command=command_line() or None, environment=env,
                  model=lm.info(), data=task.data_info(spec.split, len(prep.x_eval)), attack=attack,
                  metrics=m.metrics, control=m.control, comparison=m.comparison, notes=notes)
