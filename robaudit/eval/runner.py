"""One UAP run end to end: model + data -> UAP -> metrics + controls + test -> result + files."""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from robaudit import __version__
from robaudit.config import UAPSpec
from robaudit.console import info, progress, warn
from robaudit.errors import BadInput, RuntimeFailure
from robaudit.results import AttackInfo, Result

PARTIAL = "uap.partial.npy"


@dataclass
class UAPRun:
    """What a run produced: the validated result, the perturbation, and where files went."""

    result: Result
    v: object  # torch.Tensor (1,3,S,S)
    out_dir: Path | None


def resolve_target(target: str | int | None, classes: list[str]) -> int | None:
    """A target class given as an index or a (case-insensitive, unique-prefix) class name."""
    if target is None:
        return None
    text = str(target).strip()
    if text.lstrip("-").isdigit():
        idx = int(text)
        if not 0 <= idx < len(classes):
            raise BadInput(f"target class {idx} is outside the model's classes 0..{len(classes) - 1}",
                           "pass an index in range or a class name: " + ", ".join(classes))
        return idx
    lowered = [c.lower() for c in classes]
    if text.lower() in lowered:
        return lowered.index(text.lower())
    hits = [i for i, c in enumerate(lowered) if c.startswith(text.lower())]
    if len(hits) == 1:
        return hits[0]
    from robaudit.errors import unknown_name

    raise unknown_name("target class", text, classes, "pass an index or one of the model's class names")


def environment(device) -> dict:
    import timm
    import torch

    env = {"robaudit": __version__, "python": platform.python_version(), "torch": torch.__version__,
           "timm": timm.__version__, "numpy": np.__version__, "platform": platform.platform(),
           "device": str(device), "torch_threads": torch.get_num_threads()}
    if getattr(device, "type", str(device)) == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def command_line() -> str:
    argv = sys.argv[1:] if sys.argv and Path(sys.argv[0]).name in ("robaudit", "__main__.py") else None
    return "robaudit " + shlex.join(argv) if argv else ""


def _source_iter(spec: UAPSpec, task, size: int):
    """(chunk iterable or tensor, number of images, source description) for the spec's source."""
    if spec.source == "train":
        x, _ = task.tensors("train", size=size, limit=spec.source_limit, seed=spec.seed)
        return x, len(x), f"train split of {task.full_name}"
    from robaudit.data import load_source

    grey = task.is_grey if spec.grayscale_source is None else spec.grayscale_source
    src = load_source(spec.source, limit=spec.source_limit, seed=spec.seed, grayscale=grey)
    if len(src) <= spec.chunk_size:
        x = src.tensor(size)
        if src.skipped:
            warn(f"skipped {src.skipped} undecodable source image(s)")
        return x, len(x), src.describe()
    return _Chunks(src, size, spec), len(src), src.describe()


class _Chunks:
    """Re-iterable chunk stream over a large source (one pass per UAP iteration)."""

    def __init__(self, src, size, spec):
        self.src, self.size, self.spec = src, size, spec

    def __iter__(self):
        return self.src.chunks(self.size, chunk_size=self.spec.chunk_size, workers=self.spec.workers)

    def __len__(self):
        return len(self.src)

    def shard(self, rank: int, world: int) -> _Chunks:
        """A torchrun rank's share: every world-th image, chunks of chunk_size / world (the same global chunks)."""
        from dataclasses import replace

        src = replace(self.src, items=self.src.items[rank::world])
        spec = self.spec.model_copy(update={"chunk_size": max(1, self.spec.chunk_size // world)})
        return _Chunks(src, self.size, spec)


def run_uap(spec: UAPSpec, out_dir: Path | None = None, quiet: bool = False, init=None) -> UAPRun:
    """Run one UAP audit cell. Writes result.json, uap.npy, uap.png, examples.png to ``out_dir``."""
    import torch

    from robaudit.attacks.lp import lp_norm
    from robaudit.attacks.noise import random_controls
    from robaudit.attacks.uap import build_uap
    from robaudit.data import load_task
    from robaudit.distributed import fast_model, init_from_env, shard
    from robaudit.eval.metrics import compare_to_control, control_metrics, predict, uap_metrics
    from robaudit.models import load_model

    group = init_from_env(spec.device)  # None unless launched by torchrun with 2+ processes
    main = group is None or group.is_main
    lm = load_model(spec.model, checkpoint=spec.checkpoint, arch=spec.arch, device=spec.device,
                    trust_checkpoint=spec.trust_checkpoint, task=spec.data)
    size = lm.card.input_size
    task = load_task(spec.data or lm.card.task, size=size)
    if task.num_classes != len(lm.classes):
        raise BadInput(f"model {lm.card.name!r} has {len(lm.classes)} classes but task {task.full_name!r} has "
                       f"{task.num_classes}", "pass the --data task the model was trained on")
    target = resolve_target(spec.target, lm.classes)
    ref_norm = task.mean_norm(spec.norm, size, split="train", seed=spec.seed)
    eps = spec.eps if spec.eps is not None else spec.zeta * ref_norm
    zeta = eps / ref_norm

    x_eval, y_eval = task.tensors(spec.split, size=size, limit=spec.eval_limit, seed=spec.seed)
    with torch.inference_mode():
        probe = lm.module(x_eval[: min(8, len(x_eval))].to(lm.device))
    if not torch.isfinite(probe).all():
        raise BadInput(f"model {lm.card.name!r} produces NaN/inf outputs on clean images",
                       "the checkpoint is broken or mismatched; retrain or check --arch")
    source, source_n, source_desc = _source_iter(spec, task, size)
    if source_n == 0:
        raise BadInput(f"source {spec.source!r} has no images")
    if group is not None:
        source = shard(source, group)

    if init is None and out_dir is not None and (out_dir / PARTIAL).is_file():
        init = torch.from_numpy(np.load(out_dir / PARTIAL))
        info(f"resuming from the partial perturbation in {out_dir / PARTIAL}")
    if init is not None and tuple(init.shape[-3:]) != (3, size, size):
        raise BadInput(f"initial perturbation has shape {tuple(init.shape)}, the model needs (1, 3, {size}, {size})")

    max_iter = spec.default_max_iter()
    t0 = time.time()
    with progress(disable=quiet or not main) as prog, fast_model(lm.module, lm.device, spec.amp) as net:
        bar = prog.add_task(f"UAP {spec.method}/{spec.mode} on {spec.source}", total=max_iter * source_n, status="")

        def on_progress(n: int, status: str | None = None) -> None:
            prog.update(bar, advance=n, **({"status": f"source {status}"} if status else {}))

        outcome = build_uap(net, source, method=spec.method, norm=spec.norm, eps=eps, target=target,
                            mode=spec.mode, max_iter=max_iter, step_size=spec.default_step(),
                            batch_size=spec.batch_size, clip=spec.clip, init=init, seed=spec.seed,
                            device=lm.device, progress=on_progress, distributed=group is not None)
    seconds = time.time() - t0
    v = outcome.v.detach().cpu().float()
    if not torch.isfinite(v).all():
        raise RuntimeFailure("the perturbation became NaN/inf", "the model's gradients overflow; try --norm linf")
    if outcome.interrupted:
        if out_dir is not None and main:
            out_dir.mkdir(parents=True, exist_ok=True)
            np.save(out_dir / PARTIAL, v.numpy())
            (out_dir / "spec.json").write_text(spec.model_dump_json(indent=2))
        from robaudit.errors import Interrupted

        where = f"is in {out_dir / PARTIAL}" if out_dir is not None else "was not saved (no output folder)"
        raise Interrupted(f"interrupted: the best perturbation so far {where}; re-run the same command with the "
                          "same --out to resume")

    clean = predict(lm.module, x_eval, None, clip=spec.clip, batch_size=256, device=lm.device)
    adv = predict(lm.module, x_eval, v, clip=spec.clip, batch_size=256, device=lm.device)
    metrics = uap_metrics(clean, adv, y_eval, lm.classes, target=target)
    achieved = float(lp_norm(v, spec.norm).item())
    control = comparison = None
    if spec.controls > 0:
        gen = torch.Generator().manual_seed(spec.seed + 7919)
        noise_norm = eps if spec.norm == "linf" else achieved
        noises = random_controls(tuple(v.shape[1:]), spec.norm, noise_norm, spec.controls, kind=spec.control_kind,
                                 generator=gen)
        control, outcomes = control_metrics(lm.module, x_eval, noises, clean, target=target, clip=spec.clip,
                                            batch_size=256, device=lm.device, kind=spec.control_kind)
        uap_success = (adv == target).numpy() if target is not None else (adv != clean).numpy()
        comparison = compare_to_control(uap_success, outcomes)

    attack = AttackInfo(
        kind="uap", method=spec.method, mode=spec.mode if spec.method == "fgsm" else None, norm=spec.norm,
        zeta=zeta, eps=eps, zeta_reference=f"mean {spec.norm} norm of {task.full_name} train images in [0,1] "
        f"at {size} px = {ref_norm:.4f}", targeted=target is not None, target=target,
        target_name=lm.classes[target] if target is not None else None, source=spec.source, source_n=source_n,
        clip=spec.clip, max_iter=max_iter, step_size=spec.default_step(), batch_size=spec.batch_size,
        seed=spec.seed, seconds=seconds, device=str(lm.device), uap_norm=achieved,
        source_fooling_rate=outcome.source_fooling_rate)
    notes = [f"source: {source_desc}",
             "fooling rate: prediction on x+v differs from the prediction on x (not the label), over all images",
             f"x+v {'clipped to [0,1]' if spec.clip else 'not clipped (as published)'}"]
    if spec.amp:
        notes.append("UAP built under bfloat16 autocast (--amp); every metric measured in float32")
    result = Result(robaudit_version=__version__, created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    command=command_line() or None,
                    environment=environment(lm.device) | {"seed": spec.seed}
                    | ({"distributed": group.info()} if group else {}),
                    model=lm.info(), data=task.data_info(spec.split, len(x_eval)), attack=attack, metrics=metrics,
                    control=control, comparison=comparison, notes=notes)
    if out_dir is not None and main:  # every rank holds the same v and metrics; rank 0 writes
        write_run(out_dir, result, v, x_eval, clean, adv, lm.classes, spec)
    return UAPRun(result, v, out_dir)


def write_run(out_dir: Path, result: Result, v, x_eval, clean, adv, classes, spec: UAPSpec) -> None:
    """Write result.json (atomic), uap.npy, uap.png and examples.png; remove a resumed partial."""
    from robaudit.models.store import atomic_write_text
    from robaudit.report.images import save_examples_png, save_uap_png

    out_dir.mkdir(parents=True, exist_ok=True)
    np.save(out_dir / "uap.npy", v.numpy())
    np.savez_compressed(out_dir / "predictions.npz", clean=np.asarray(clean), adv=np.asarray(adv))
    save_uap_png(v, out_dir / "uap.png")
    save_examples_png(x_eval, v, clean, adv, classes, out_dir / "examples.png", clip=spec.clip)
    result.artifacts = {"perturbation": "uap.npy", "perturbation_png": "uap.png", "examples_png": "examples.png",
                        "predictions": "predictions.npz"}
    atomic_write_text(out_dir / "spec.json", spec.model_dump_json(indent=2))
    atomic_write_text(out_dir / "result.json", result.model_dump_json(indent=2))
    (out_dir / PARTIAL).unlink(missing_ok=True)


def default_out_dir(spec: UAPSpec) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    name = (spec.model or Path(spec.checkpoint or "model").stem).replace("/", "_")
    return Path(os.environ.get("ROBAUDIT_REPORTS", "reports")) / f"{stamp}-{name}-{spec.source}-{spec.cache_key()[:6]}"


def result_json(run: UAPRun) -> dict:
    return json.loads(run.result.model_dump_json())
