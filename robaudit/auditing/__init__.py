"""The audit matrix: every cell of a recipe, cached by spec hash, resumable, with derived tables.

Layout of an audit folder::

    recipe.toml            the recipe as run
    cells/<hash>/          one ``robaudit uap`` run per cell (result.json, uap.npy, predictions.npz)
    cells/<hash>/error.json  a failed cell (the audit carries on)
    audit.json             cells + tables + transfer matrix + environment (written atomically)
"""

from __future__ import annotations

import time
from pathlib import Path

from robaudit.auditing.cells import Cell, Memo, load_cached, make_cell, record_error, run_cell
from robaudit.auditing.mitigation import harden_recipe_models
from robaudit.auditing.ray_executor import run_cells_ray, train_models_ray
from robaudit.auditing.recipes import AuditRecipe, load_recipe, recipe_names
from robaudit.auditing.tables import AUDIT_KIND, build_audit_doc, transfer_matrices
from robaudit.core.console import progress, warn
from robaudit.core.errors import BadInput, RuntimeFailure
from robaudit.core.files import OutputLock, atomic_write_text, preflight_dir, write_json
from robaudit.models import load_model
from robaudit.models.store import is_trained, model_dir, read_card
from robaudit.models.train import check_trainable, train_model
from robaudit.models.zoo import parse_zoo_name

__all__ = ["AUDIT_KIND", "AuditRecipe", "Cell", "build_audit_doc", "classes_of", "ensure_models", "load_recipe",
           "recipe_names", "record_error", "run_audit", "run_cell", "transfer_matrices", "write_audit_doc"]


def ensure_models(recipe: AuditRecipe, train_missing: bool, quiet: bool = False, executor: str = "local",
                  address: str | None = None) -> None:
    """Check every zoo model (every replicate) is trained; train the missing ones with ``--train-missing``
    (with ``executor = "ray"`` as parallel Ray tasks: replicates are independent runs)."""
    missing = [n for n in recipe.model_names() if not is_trained(n)]
    if not missing:
        return
    if not train_missing:
        raise BadInput(f"recipe {recipe.name!r} needs untrained model(s): {', '.join(missing)}",
                       "add --train-missing, or run 'robaudit train NAME' for each")
    for n in missing:
        check_trainable(n)
    t = recipe.train
    cfg, scratch_cfg = t.config(), t.config(scratch=True)
    jobs = [(n, scratch_cfg if parse_zoo_name(n).transfer == "scratch" else cfg) for n in missing]
    if executor == "ray":
        train_models_ray(jobs, device=recipe.device, address=address, quiet=quiet)
        return
    for n, c in jobs:
        train_model(n, c, device=recipe.device, quiet=quiet)


def classes_of(model_or_ckpt) -> list[str]:
    """A recipe model's class names (a zoo name's card, or a checkpoint loaded on the CPU)."""
    if isinstance(model_or_ckpt, str):
        return read_card(model_dir(model_or_ckpt) / "card.json").classes
    kw = model_or_ckpt.load_kwargs()
    lm = load_model(kw.pop("model"), task=model_or_ckpt.data, device="cpu", **kw)
    return lm.classes


def run_audit(recipe: AuditRecipe, out_dir: Path, *, recipe_text: str = "", resume: bool = False,
              train_missing: bool = False, quiet: bool = False, executor: str = "local",
              address: str | None = None, notes: list[str] | None = None) -> dict:
    """Run (or resume) every cell of ``recipe`` into ``out_dir`` and return the audit document.

    ``notes``: lines for the document's ``notes`` (e.g. which data was used and why).

    ``out_dir`` is checked and locked before any training or attack (a second audit into it is refused).
    Failed cells are recorded and the audit carries on; when every cell failed there is nothing to report
    and a RuntimeFailure (exit 3) says so, after audit.json is written."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any((out_dir / "cells").glob("*/result.json")) and not resume:
        raise BadInput(f"{out_dir} already holds audit cells", "pass --resume to reuse them, or another --out")
    preflight_dir(out_dir)
    with OutputLock(out_dir):
        doc = _run_locked(recipe, out_dir, recipe_text, resume, train_missing, quiet, executor, address, notes)
    counts = doc["counts"]
    if counts["cells"] and counts["failed"] == counts["cells"]:
        first = doc["failed"][0]["error"] if doc.get("failed") else "unknown"
        raise RuntimeFailure(f"every cell of audit {recipe.name!r} failed ({counts['cells']} of {counts['cells']}); "
                             f"the first: {first}", f"see {out_dir / 'audit.json'} and cells/*/error.json")
    if counts["failed"]:
        warn(f"{counts['failed']} of {counts['cells']} cells failed; they are listed in {out_dir / 'audit.json'} "
             "(table 5, failed cells) and the tables cover the rest")
    return doc


def _run_locked(recipe: AuditRecipe, out_dir: Path, recipe_text: str, resume: bool, train_missing: bool, quiet: bool,
                executor: str, address: str | None, notes: list[str] | None) -> dict:
    ensure_models(recipe, train_missing, quiet, executor=executor, address=address)
    recipe = harden_recipe_models(recipe, train_missing, quiet)
    if recipe_text:
        atomic_write_text(out_dir / "recipe.toml", recipe_text)
    cells = [make_cell(s, out_dir) for s in recipe.cells(classes_of)]
    todo = [c for c in cells if not (resume and load_cached(c))]
    t_start = time.time()
    if executor == "ray":
        run_cells_ray(todo, address=address, quiet=quiet)
    else:
        memo = Memo()
        with progress(disable=quiet) as prog:
            bar = prog.add_task(f"audit {recipe.name}", total=len(cells), completed=len(cells) - len(todo),
                                status=f"{len(cells) - len(todo)} cached" if len(todo) < len(cells) else "")
            for cell in todo:
                prog.update(bar, status=cell.label)
                run_cell(cell, memo)
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
    return write_json(Path(out_dir) / "audit.json", doc)
