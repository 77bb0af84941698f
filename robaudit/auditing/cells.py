"""One audit cell: a UAP run in ``cells/<hash>/``, cached by its spec hash, its failure kept in error.json."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from robaudit.core.errors import Interrupted, RobauditError
from robaudit.core.files import atomic_write_text, read_json
from robaudit.core.results import Rate, Result, success_vector
from robaudit.core.specs import UAPSpec
from robaudit.eval.run import Given, Memo, run_uap


@dataclass
class Cell:
    key: str
    spec: UAPSpec
    dir: Path
    result: Result | None = None
    error: str | None = None
    cached: bool = False

    @property
    def label(self) -> str:
        s = self.spec
        t = f" ->{s.target}" if s.target is not None else ""
        return f"{s.model or Path(s.checkpoint).stem} {s.source} {s.norm} z={s.zeta:g} {s.method}{t}"

    @property
    def rate(self) -> Rate:
        return self.result.primary_rate()

    def success(self) -> np.ndarray | None:
        """Per-image success (fooled, or hit the target) from the cell's predictions file."""
        f = self.dir / "predictions.npz"
        if not f.is_file():
            return None
        with np.load(f) as z:
            clean, adv = z["clean"], z["adv"]
        return success_vector(clean, adv, self.result.attack.target)


def make_cell(spec: UAPSpec, out_dir: Path) -> Cell:
    key = spec.cache_key()
    return Cell(key, spec, Path(out_dir) / "cells" / key)


def load_cached(cell: Cell) -> bool:
    """Fill ``cell.result`` from a finished run of the same spec in its folder; False if there is none."""
    f, s = cell.dir / "result.json", cell.dir / "spec.json"
    if not (f.is_file() and s.is_file()):
        return False
    try:
        if UAPSpec.model_validate(read_json(s, "spec")).cache_key() != cell.key:
            return False
        cell.result = Result.model_validate(read_json(f, "result file"))
    except (ValueError, RobauditError):  # a hostile or stale file: run the cell again
        return False
    cell.cached = True
    return True


def run_cell(cell: Cell, memo: Memo | None = None) -> Cell:
    """Run one cell; a user-facing error is recorded in ``error.json`` and the audit carries on. ``memo``: what
    the audit's cells share (clean and noise predictions, the model check; eval/run.py)."""
    try:
        cell.result = run_uap(cell.spec, out_dir=cell.dir, quiet=True, given=Given(memo=memo)).result
        (cell.dir / "error.json").unlink(missing_ok=True)
    except (KeyboardInterrupt, Interrupted):
        raise
    except (RobauditError, RuntimeError, ValueError) as exc:
        record_error(cell, f"{type(exc).__name__}: {exc}")
    return cell


def record_error(cell: Cell, error: str) -> None:
    """Set ``cell.error`` and write it to the cell's ``error.json`` (read back by ``--resume`` and reports)."""
    cell.error = error
    cell.dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cell.dir / "error.json", json.dumps({"key": cell.key, "error": error,
                                                           "spec": cell.spec.model_dump()}, indent=2))
