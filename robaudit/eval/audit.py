"""The audit matrix: every cell of a recipe, cached by spec hash, resumable, with derived tables.

Layout of an audit folder::

    recipe.toml            the recipe as run
    cells/<hash>/          one ``robaudit uap`` run per cell (result.json, uap.npy, predictions.npz)
    cells/<hash>/error.json  a failed cell (the audit carries on)
    audit.json             cells + tables + transfer matrix + environment (written atomically)
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from robaudit import __version__
from robaudit.config import UAPSpec
from robaudit.errors import BadInput, Interrupted, RobauditError
from robaudit.eval.recipes import AuditRecipe
from robaudit.results import Result

AUDIT_KIND = "audit"
PVALUE_CORRECTION = "holm"


@dataclass
class Cell:
    key: str
    spec: UAPSpec
    dir: Path
    result: Result | None = None
    error: str | None = None
    cached: bool = False


def _load_cached(cell: Cell) -> bool:
    f, s = cell.dir / "result.json", cell.dir / "spec.json"
    if not (f.is_file() and s.is_file()):
        return False
    try:
        if UAPSpec.model_validate_json(s.read_text()).cache_key() != cell.key:
            return False
        cell.result = Result.model_validate_json(f.read_text())
    except ValueError:
        return False
    cell.cached = True
    return True


def ensure_models(recipe: AuditRecipe, train_missing: bool, quiet: bool = False) -> None:
    """Check every zoo model is trained; train the missing ones with ``--train-missing``."""
    from robaudit.models.store import is_trained
    from robaudit.models.train import TrainConfig, check_trainable, train_model
    from robaudit.models.zoo import parse_zoo_name

    missing = [n for n in recipe.model_names() if not is_trained(n)]
    if not missing:
        return
    if not train_missing:
        raise BadInput(f"recipe {recipe.name!r} needs untrained model(s): {', '.join(missing)}",
                       "add --train-missing, or run 'robaudit train NAME' for each")
    for n in missing:
        check_trainable(n)
    t = recipe.train
    cfg = TrainConfig(epochs=t.epochs, image_size=t.image_size, batch_size=t.batch_size, train_limit=t.train_limit,
                      lr=t.lr, seed=t.seed)
    scratch_cfg = cfg.model_copy(update={"epochs": t.scratch_epochs or t.epochs})
    for n in missing:
        train_model(n, scratch_cfg if parse_zoo_name(n).transfer == "scratch" else cfg, device=recipe.device,
                    quiet=quiet)


def _classes_of(model_or_ckpt) -> list[str]:
    from robaudit.models import load_model

    if isinstance(model_or_ckpt, str):
        from robaudit.models.store import model_dir, read_card

        return read_card(model_dir(model_or_ckpt) / "card.json").classes
    lm = load_model(checkpoint=model_or_ckpt.path, arch=model_or_ckpt.arch, task=model_or_ckpt.data, device="cpu")
    return lm.classes


def run_audit(recipe: AuditRecipe, out_dir: Path, *, recipe_text: str = "", resume: bool = False,
              train_missing: bool = False, quiet: bool = False, executor: str = "local",
              address: str | None = None, notes: list[str] | None = None) -> dict:
    """Run (or resume) every cell of ``recipe`` into ``out_dir`` and return the audit document.

    ``notes``: lines for the document's ``notes`` (e.g. which data was used and why)."""
    from robaudit.console import progress, warn
    from robaudit.models.store import atomic_write_text

    out_dir = Path(out_dir)
    if out_dir.exists() and any((out_dir / "cells").glob("*/result.json")) and not resume:
        raise BadInput(f"{out_dir} already holds audit cells", "pass --resume to reuse them, or another --out")
    ensure_models(recipe, train_missing, quiet)
    out_dir.mkdir(parents=True, exist_ok=True)
    if recipe_text:
        atomic_write_text(out_dir / "recipe.toml", recipe_text)
    specs = recipe.cells(_classes_of)
    cells = [Cell(s.cache_key(), s, out_dir / "cells" / s.cache_key()) for s in specs]
    todo = [c for c in cells if not (resume and _load_cached(c))]
    t_start = time.time()
    if executor == "ray":
        from robaudit.eval.ray_executor import run_cells_ray

        run_cells_ray(todo, address=address, quiet=quiet)
    else:
        with progress(disable=quiet) as prog:
            bar = prog.add_task(f"audit {recipe.name}", total=len(cells), completed=len(cells) - len(todo),
                                status=f"{len(cells) - len(todo)} cached" if len(todo) < len(cells) else "")
            for cell in todo:
                prog.update(bar, status=_label(cell.spec))
                run_cell(cell)
                if cell.error:
                    warn(f"cell {cell.key} failed: {cell.error}")
                prog.advance(bar)
    doc = build_audit_doc(recipe, cells, out_dir, seconds=time.time() - t_start)
    if notes:
        doc["notes"] = list(notes)
    write_audit_doc(doc, out_dir)
    return doc


def write_audit_doc(doc: dict, out_dir: Path) -> Path:
    """Write ``audit.json`` atomically."""
    from robaudit.models.store import atomic_write_text

    path = Path(out_dir) / "audit.json"
    atomic_write_text(path, json.dumps(doc, indent=2, default=_json_default))
    return path


def run_cell(cell: Cell) -> Cell:
    """Run one cell; a user-facing error is recorded in ``error.json`` and the audit carries on."""
    from robaudit.eval.runner import run_uap

    try:
        cell.result = run_uap(cell.spec, out_dir=cell.dir, quiet=True).result
        (cell.dir / "error.json").unlink(missing_ok=True)
    except (KeyboardInterrupt, Interrupted):
        raise
    except (RobauditError, RuntimeError, ValueError) as exc:
        record_error(cell, f"{type(exc).__name__}: {exc}")
    return cell


def record_error(cell: Cell, error: str) -> None:
    """Set ``cell.error`` and write it to the cell's ``error.json`` (read back by ``--resume`` and reports)."""
    from robaudit.models.store import atomic_write_text

    cell.error = error
    cell.dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cell.dir / "error.json", json.dumps({"key": cell.key, "error": error,
                                                           "spec": cell.spec.model_dump()}, indent=2))


def _label(spec: UAPSpec) -> str:
    t = f" ->{spec.target}" if spec.target is not None else ""
    return f"{spec.model or Path(spec.checkpoint).stem} {spec.source} {spec.norm} z={spec.zeta:g} {spec.method}{t}"


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)


# ---- derived tables ---------------------------------------------------------------------------
def _success(cell: Cell) -> np.ndarray | None:
    """Per-image success vector of a cell (fooled, or hit the target) from its predictions file."""
    f = cell.dir / "predictions.npz"
    if not f.is_file():
        return None
    with np.load(f) as z:
        clean, adv = z["clean"], z["adv"]
    t = cell.result.attack.target
    return adv == t if t is not None else adv != clean


def _rate(cell: Cell):
    m = cell.result.metrics
    return m.targeted_success_rate if cell.result.attack.targeted else m.fooling_rate


def build_audit_doc(recipe: AuditRecipe, cells: list[Cell], out_dir: Path, seconds: float) -> dict:
    from robaudit.eval.runner import command_line, environment
    from robaudit.eval.stats import adjust_pvalues, mcnemar_exact

    done = [c for c in cells if c.result is not None]
    rows, pvals = [], []
    for c in done:
        r, a = c.result, c.result.attack
        rate, ctrl = _rate(c), c.result.control
        crate = (ctrl.targeted_success_rate if a.targeted else ctrl.fooling_rate) if ctrl else None
        rows.append([r.model.name, r.model.init, r.model.transfer, a.source, a.norm, a.zeta, a.method,
                     a.target_name or "-", rate.value, f"[{rate.ci[0]:.3f}, {rate.ci[1]:.3f}]",
                     crate.value if crate else None,
                     f"[{crate.ci[0]:.3f}, {crate.ci[1]:.3f}]" if crate else "",
                     c.result.comparison.p_value if c.result.comparison else None])
        pvals.append(c.result.comparison.p_value if c.result.comparison else None)

    # ImageNet init vs random init / linear / top-k on the same images: exact paired test
    init_rows, init_p = [], []
    by_setting = defaultdict(list)
    for c in done:
        a = c.result.attack
        recipe_key = (c.result.model.task, c.result.model.arch, a.source, a.norm, round(a.zeta, 6), a.method,
                      a.target, a.seed)
        by_setting[recipe_key].append(c)
    for key, group in by_setting.items():
        base = [c for c in group if c.result.model.init == "imagenet" and c.result.model.transfer == "full"]
        for b in base:
            for o in group:
                if o is b:
                    continue
                sb, so = _success(b), _success(o)
                if sb is None or so is None or sb.shape != so.shape:
                    continue
                stat, p, detail = mcnemar_exact(sb, so)
                init_rows.append([key[1], key[2], key[3], key[4], key[5], b.result.attack.target_name or "-",
                                  f"{b.result.model.name}", _rate(b).value,
                                  f"{o.result.model.name} ({o.result.model.init}/{o.result.model.transfer})",
                                  _rate(o).value, p])
                init_p.append(p)

    family = [p for p in pvals if p is not None] + init_p
    adjusted = iter(adjust_pvalues(family, PVALUE_CORRECTION))
    for row, p in zip(rows, pvals, strict=True):
        row.append(next(adjusted) if p is not None else None)
    for row in init_rows:
        row.append(next(adjusted))

    sources_rows = []
    by_model_setting = defaultdict(dict)
    for c in done:
        a = c.result.attack
        if a.targeted:
            continue
        k = (c.result.model.name, a.norm, round(a.zeta, 6), a.method)
        by_model_setting[k][a.source] = _rate(c).value
        if c.result.control:
            by_model_setting[k]["random control"] = c.result.control.fooling_rate.value
    source_cols = sorted({s for d in by_model_setting.values() for s in d if s != "random control"})
    for (model, norm, zeta, method), d in sorted(by_model_setting.items()):
        sources_rows.append([model, norm, zeta, method] + [d.get(s) for s in source_cols] + [d.get("random control")])

    matrices = transfer_matrices(done, recipe) if recipe.transfer_eval else []
    failed = [{"key": c.key, "cell": _label(c.spec), "error": c.error} for c in cells if c.error]
    tables = {
        "1. UAP vs random control (every cell)": {
            "columns": ["model", "init", "transfer", "source", "norm", "zeta", "method", "target", "rate", "95% CI",
                        "control", "control CI", "p (McNemar exact)", f"p ({PVALUE_CORRECTION})"],
            "rows": rows},
        "2. Natural vs training vs random source (non-targeted fooling rate)": {
            "columns": ["model", "norm", "zeta", "method"] + source_cols + ["random control"],
            "rows": sources_rows},
        "3. ImageNet init vs other initialisations / transfer configurations (same images)": {
            "columns": ["arch", "source", "norm", "zeta", "method", "target", "ImageNet full", "rate", "other",
                        "rate", "p (McNemar exact)", f"p ({PVALUE_CORRECTION})"],
            "rows": init_rows},
    }
    for i, m in enumerate(matrices):
        tables[f"4.{i + 1} Transfer: {m['title']}"] = {
            "columns": ["UAP built on \\ evaluated on"] + m["cols"],
            "rows": [[r] + vals for r, vals in zip(m["rows"], m["values"], strict=True)]}
    if failed:
        tables["5. Failed cells"] = {"columns": ["cell", "error"], "rows": [[f["cell"], f["error"]] for f in failed]}
    return {
        "kind": AUDIT_KIND, "schema_version": "1.0", "robaudit_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": command_line() or None,
        "recipe": recipe.model_dump(), "environment": done[0].result.environment if done else environment("cpu"),
        "seconds": seconds,
        "counts": {"cells": len(cells), "done": len(done), "failed": len(failed),
                   "cached": sum(c.cached for c in cells)},
        "multiple_comparison": {"method": PVALUE_CORRECTION, "family_size": len(family),
                                "note": "Holm correction over every UAP-vs-control and init comparison test"},
        "cells": [_cell_json(c) for c in done],
        "failed": failed, "tables": tables,
        "transfer": matrices[0] if matrices else None, "transfer_matrices": matrices,
    }


def _cell_json(cell: Cell) -> dict:
    """A cell's result with its artifacts made relative to the audit folder (``cells/<hash>/...``)."""
    doc = json.loads(cell.result.model_dump_json())
    doc["artifacts"] = {k: f"cells/{cell.key}/{v}" for k, v in doc["artifacts"].items()} | {
        "cell_dir": f"cells/{cell.key}"}
    return doc


def transfer_matrices(done: list[Cell], recipe: AuditRecipe) -> list[dict]:
    """UAP from model A evaluated on model B (same task, source, norm, zeta, method; non-targeted)."""
    import torch

    from robaudit.attacks.lp import project
    from robaudit.data import load_task
    from robaudit.data.images import resize_batch
    from robaudit.eval.metrics import predict
    from robaudit.models import load_model

    groups = defaultdict(list)
    for c in done:
        a = c.result.attack
        if not a.targeted:
            groups[(c.result.data.name, a.source, a.norm, round(a.zeta, 6), a.method, a.seed)].append(c)
    out = []
    models_cache: dict = {}
    for (data_name, source, norm, zeta, method, _seed), group in sorted(groups.items(), key=lambda kv: str(kv[0])):
        if len(group) < 2:
            continue
        names = [c.result.model.name for c in group]
        values = []
        for a_cell in group:
            v = torch.from_numpy(np.load(a_cell.dir / "uap.npy"))
            row = []
            for b_cell in group:  # the diagonal goes through the same path: it must equal the cell's own rate
                spec = b_cell.spec
                if spec.model not in models_cache:
                    models_cache[spec.model] = load_model(spec.model, checkpoint=spec.checkpoint, arch=spec.arch,
                                                          device=spec.device, task=spec.data)
                lm = models_cache[spec.model]
                size = lm.card.input_size
                task = load_task(spec.data or lm.card.task, size=size)
                x, _ = task.tensors(spec.split, size=size, limit=spec.eval_limit, seed=spec.seed)
                vb = v if v.shape[-1] == size else project(resize_batch(v, size), norm, b_cell.result.attack.eps)
                with np.load(b_cell.dir / "predictions.npz") as z:
                    clean = torch.from_numpy(z["clean"])
                adv = predict(lm.module, x, vb, clip=spec.clip, batch_size=256, device=lm.device)
                row.append(float((adv != clean).float().mean()))
            values.append(row)
        out.append({"title": f"{data_name} | source {source} | {norm} zeta={zeta:g} | {method}",
                    "rows": names, "cols": names, "values": values, "metric": "fooling rate"})
    return out


def cells_of(recipe: AuditRecipe) -> list[UAPSpec]:
    return recipe.cells(_classes_of)

