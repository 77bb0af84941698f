"""The public API: what ``import robaudit as ra`` offers. The CLI resolves names and calls these same functions.

Conventions (torchattacks'): images are float in [0, 1] pixel units, NCHW; the :class:`Model` owns the
normalisation. Settings are the fields of :class:`UAPConfig` (one declaration for the library, the CLI,
recipes and result.json). Errors are :class:`BadInput` (fix the call), :class:`RuntimeFailure`
(the run failed) and :class:`Interrupted`, each with a one-line message naming the argument.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from robaudit.core.errors import BadInput, Interrupted, RobauditError, RuntimeFailure, UnsafeCheckpoint
from robaudit.core.files import validate
from robaudit.core.results import Result, load_result
from robaudit.core.specs import ModelRef, UAPConfig, UAPSpec, make_config
from robaudit.data import Data
from robaudit.data import load_data as _load_data
from robaudit.eval.check import ModelCheck
from robaudit.models import Model
from robaudit.models import load_model as _load_model

__all__ = ["BadInput", "Data", "Interrupted", "Model", "ModelCheck", "Result", "RobauditError", "RuntimeFailure",
           "UAPConfig", "UAPRun", "UnsafeCheckpoint", "attack", "audit", "check", "gate", "load_data", "load_model",
           "load_result", "report", "uap"]


def load_model(name_or_path: str | Path, *, arch: str | None = None, data: str | None = None,
               device: str = "auto", trust_checkpoint: bool = False, arch_kwargs: dict | None = None,
               mean=None, std=None, input_size: int | None = None, channels: int | None = None,
               classes: list[str] | None = None) -> Model:
    """A trained zoo model by name, or a model file of any format robaudit reads (state_dict or safetensors
    with ``arch``, TorchScript, torch.export, ONNX), detected by content.

    ``mean``, ``std``, ``input_size``, ``channels`` and ``classes`` (the head's order) override the card
    beside the file; what is not given comes from the card, the file or the arch's defaults, and the model
    records where each value came from (``model.preprocessing()``). ``data`` names the classes when
    nothing else does."""
    text = str(name_or_path)
    is_file = Path(text).is_file() or Path(text).suffix in (".safetensors", ".pt", ".pth", ".bin", ".pt2", ".onnx")
    ref = validate(ModelRef, {k: v for k, v in dict(
        model=None if is_file else text, checkpoint=text if is_file else None, arch=arch, arch_kwargs=arch_kwargs,
        trust_checkpoint=trust_checkpoint, mean=mean, std=std, input_size=input_size, channels=channels,
        classes=classes).items() if v is not None})
    kw = ref.load_kwargs()
    return _load_model(kw.pop("model"), device=device, task=data, **kw)


def check(model: Model | str | Path, data: Data | str | Path | None = None, *, split: str = "test",
          limit: int | None = None, seed: int = 0) -> ModelCheck:
    """Is this the model you meant, read as it was trained? Loads ``model`` and ``data`` as an audit would
    (labels matched to the head by class name) and returns clean accuracy, balanced accuracy, the confusion
    matrix, the preprocessing with its provenance, and warnings: below chance (an audit refuses it unless
    forced) or predictions collapsed onto one class, the signs of a wrong class order or normalisation."""
    from robaudit.eval.check import check_model
    from robaudit.models.loading import match_task

    if not isinstance(model, Model):
        model = load_model(model, data=str(data) if isinstance(data, (str, Path)) else None)
    if isinstance(data, Data):
        task = data.task
    else:
        if not (data or model.card.task):
            raise BadInput(f"model {model.name!r} has no task on its card", "pass data=ra.Data(...) or a task name")
        task = _load_data(data or model.card.task, size=model.input_size).task
    return check_model(model, match_task(model, task), split, limit=limit, seed=seed)


def load_data(task_or_path: str | Path) -> Data:
    """A data-root task (``skin``, ``retina:referable``), the embedded ``pneumonia-mini``, an npz or a folder."""
    return _load_data(task_or_path)


@dataclass
class UAPRun:
    """One UAP audit: the validated :class:`Result` (what result.json holds) and the perturbation ``v``,
    (1, C, H, W) in [0, 1] pixel units. :meth:`save` writes the files ``robaudit uap --out`` writes."""

    result: Result
    v: torch.Tensor
    spec: UAPSpec
    _x_eval: torch.Tensor | None = None
    _clean: torch.Tensor | None = None
    _adv: torch.Tensor | None = None
    out_dir: Path | None = None
    _per_image: dict | None = None  # predictions.csv's labels, scores and image ids

    def save(self, out: str | Path, *, reports: bool = True) -> Path:
        """The CLI's run folder: result.json, spec.json, uap.npy, uap.png, examples.png, predictions.npz, and
        (``reports``) report.html and report.md. Returns the folder."""
        from robaudit.eval.artifacts import write_run
        from robaudit.reporting import write_reports

        out = Path(out)
        if self.out_dir is not None and self.out_dir.resolve() == out.resolve():
            return out  # written by the run itself
        write_run(out, self.result, self.v, self._x_eval, self._clean, self._adv, self.result.model.classes,
                  self.spec, **(self._per_image or {}))
        if reports:
            write_reports([self.result], out, formats=("html", "md"))
        return out

    def _repr_html_(self) -> str:
        return self.result._repr_html_()


def uap(model: Model | str, data: Data | str | None = None, *, source: str | Path | torch.Tensor = "natural",
        out: str | Path | None = None, init: torch.Tensor | None = None, progress: bool = False,
        force: bool = False, **settings: Any) -> UAPRun:
    """Build a universal perturbation from ``source`` and measure it on ``data``'s test split against
    same-norm random controls: the engine, defaults, selection, controls and statistics of ``robaudit uap``.

    ``model``: a :class:`Model` (or a zoo name / checkpoint path); ``data``: a :class:`Data` (or a task name;
    default the model's own task); ``source``: ``"natural"`` (photos in installed wheels), ``"imagenet"``
    (the data root's photos), ``"train"`` (the data's training split), a folder, or photos as a tensor
    (N, 3, H, W) in [0, 1]; ``settings``: any field of :class:`UAPConfig` (``norm``, ``zeta``/``eps``,
    ``method``, ``budget``, ``target``, ``seed``, ...). With ``out`` the run folder is written (and locked)
    as the CLI writes it. Same model, data, settings and seed as a CLI run give the same v bit for bit.
    ``force``: audit a model that :func:`check` finds below chance on the data (refused otherwise)."""
    from robaudit.eval.run import Given

    cfg = make_config(**settings)
    photos = None
    if isinstance(source, torch.Tensor):
        photos, source_name = source, "tensor"
    else:
        source_name = str(source)
    if data is not None and not isinstance(data, (Data, str, Path)):
        raise BadInput(f"data is a {type(data).__name__}", "pass ra.Data(test=(x, y), val=..., train=...) or a "
                       "task name")
    # a Data object is handed over as it is; a data name is resolved by the run (at the model's input size)
    task = data.task if isinstance(data, Data) else None
    data_name = task.full_name if task is not None else (str(data) if data is not None else None)
    if isinstance(model, (str, Path)) and task is not None:
        model = load_model(model, device=cfg.device)
    if isinstance(model, Model):
        spec = UAPSpec(**cfg.model_dump(), model=model.name, source=source_name, data=data_name, force=force)
        given = Given(model=model, task=task, photos=photos)
    elif isinstance(model, (str, Path)):
        path = Path(str(model))
        by_path = path.is_file() or path.suffix in (".safetensors", ".pt", ".pth", ".bin", ".pt2", ".onnx")
        spec = UAPSpec(**cfg.model_dump(), model=None if by_path else str(model),
                       checkpoint=str(model) if by_path else None, source=source_name, data=data_name, force=force)
        given = Given(photos=photos)
    else:
        raise BadInput(f"model is a {type(model).__name__}", "pass ra.Model(net, classes=..., mean=..., std=..., "
                       "input_size=...), a zoo name or a checkpoint path")
    return run_spec(spec, out=out, init=init, quiet=not progress, given=given)


def run_spec(spec: UAPSpec, *, out: str | Path | None = None, init: torch.Tensor | None = None, quiet: bool = True,
             given=None) -> UAPRun:
    """A run by :class:`UAPSpec` (names): what ``robaudit uap`` and :func:`uap` both end in."""
    from robaudit.eval.run import run_uap

    out_dir = Path(out) if out is not None else None
    run = run_uap(spec, out_dir=out_dir, quiet=quiet, init=init, given=given)
    return UAPRun(run.result, run.v, spec, run.x_eval, run.clean, run.adv, out_dir, run.per_image)


def attack(model: Model, data: Data, *, attack: str = "pgd", eps: list[float] | None = None, norm: str | None = None,
           backend: str | None = None, steps: int | None = None, target: str | int | None = None,
           eval_limit: int = 256, split: str = "test", batch_size: int = 64, seed: int = 0,
           random_start: bool = False, progress: bool = False, force: bool = False) -> Result:
    """Per-sample evasion attacks (torchattacks, foolbox or ART) over ``eps``: robust accuracy and success
    per epsilon, the worst case per image; the same call as ``robaudit attack``. The data's labels are
    mapped to the head by name and the model checked first (:func:`check`; below chance is refused unless
    ``force``)."""
    from robaudit.attacks.backends import resolve
    from robaudit.attacks.persample import check_eps, check_steps, run_attack
    from robaudit.core.console import warn
    from robaudit.data.images import to_channels
    from robaudit.eval.check import check_model
    from robaudit.models.loading import match_task

    spec, norm, backend = resolve(attack, norm, backend, targeted=target is not None)
    eps_list = check_eps(list(eps) if eps is not None else None, norm, spec)
    steps = check_steps(steps, spec)
    task = match_task(model, data.task)
    x, y = task.tensors(split, size=model.input_size, limit=eval_limit, seed=seed)
    x = to_channels(x, model.channels)
    chk = check_model(model, task, split, x=x, y=y)
    if chk.below_chance and not force:
        raise chk.refusal()
    for w in chk.warnings:
        warn(f"model {model.name!r}: {w}")
    return run_attack(model.module, x, y, attack=spec.name, eps=eps_list, norm=norm, backend=backend, steps=steps,
                      target=model.resolve_target(target), random_start=random_start, class_names=model.classes,
                      batch_size=batch_size, seed=seed, model_info=model.info(),
                      data_info=task.data_info(split, len(x)),
                      quiet=not progress)


def audit(recipe: str | Path, out: str | Path | None = None, *, resume: bool = False, train_missing: bool = False,
          progress: bool = False) -> dict:
    """Run every cell of a recipe (a built-in name such as ``quick``, or a TOML file) with its statistics;
    returns the audit document that audit.json holds (cells cached and resumable in ``out``)."""
    from robaudit.auditing import load_recipe, run_audit

    rec, text = load_recipe(str(recipe))
    out_dir = Path(out) if out is not None else Path("reports") / f"audit-{rec.name}"
    return run_audit(rec, out_dir, recipe_text=text, resume=resume, train_missing=train_missing, quiet=not progress)


def report(result: Result | list[Result] | str | Path, path: str | Path, *, format: str | None = None,
           title: str | None = None, per_image: bool = False) -> Path:
    """Write the report of a result, several results, or a result.json / audit.json file to ``path``
    (format from ``format`` or the suffix: html, md, json, pdf). ``per_image``: also ``per-image.csv`` beside
    it, every cell's predictions.csv in one file (a result file's run folder holds them)."""
    from robaudit.grading import as_input, load_input
    from robaudit.reporting import build_report, bundle_predictions, check_formats, write_report

    path = Path(path)
    fmt = format or {".html": "html", ".md": "md", ".json": "json", ".pdf": "pdf"}.get(path.suffix.lower(), "html")
    (fmt,) = check_formats([fmt])
    src = load_input(result) if isinstance(result, (str, Path)) else as_input(result)
    rep = build_report(src, title=title)
    if per_image:
        bundle_predictions(rep, path.parent / "per-image.csv")
    return write_report(rep, fmt, path)


def gate(result: Result | str | Path, policy: str | Path):
    """Check a result (or result.json / audit.json) against a policy TOML: a GateResult whose ``passed``
    and ``exit_code()`` carry the CLI's meaning (0 pass, 1 a rule failed; bad input raises BadInput)."""
    import tempfile

    from robaudit.gating import gate as run_gate

    if isinstance(result, Result):
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "result.json"
            p.write_text(result.model_dump_json())
            res = run_gate(p, policy)
    else:
        res = run_gate(result, policy)
    if res.errors:
        raise BadInput(res.errors[0].message, "fix the policy, or set optional = true on rules whose cells may be "
                       "absent")
    return res
