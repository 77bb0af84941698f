"""The files of a UAP run folder: result.json (last, atomically), uap.npy, predictions, and its pictures
(the perturbation amplified, before/after examples with predicted labels); the partial of an interrupted run.

Nothing computed is lost: the folder is checked and locked before the run (:func:`guard_output`), written
as one transaction (:func:`write_run`), and a perturbation that cannot be written where it was asked is
kept in ``$ROBAUDIT_HOME/rescued/`` (or the temp folder) with a message saying where (:func:`rescue`).
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

from robaudit.core.errors import BadInput, Interrupted, RuntimeFailure
from robaudit.core.files import (
    OutputLock,
    atomic_write_bytes,
    atomic_write_text,
    keep_somewhere,
    os_error_text,
    preflight_dir,
    read_npy,
    stamp,
)
from robaudit.core.results import Result
from robaudit.core.specs import UAPSpec

PARTIAL = "uap.partial.npy"
ARTIFACTS = {"perturbation": "uap.npy", "perturbation_png": "uap.png", "examples_png": "examples.png",
             "predictions": "predictions.npz"}
PREDICTIONS_CSV = "predictions.csv"
#: predictions.csv's columns, one row per evaluated image, in the order of the evaluated images
PREDICTION_COLUMNS = ("index", "label", "clean", "adv", "clean_score", "adv_score", "control_adv")


def image_ids(task, split: str, limit: int | None, seed: int) -> list[str]:
    """Each evaluated image's identity: its position in the data's split, or its file (relative to the folder
    root) for an image folder: what a reviewer needs to pull a record back to the image."""
    idx = task.select(split, limit, seed)
    folder = getattr(task, "_folder", None) if getattr(task, "kind", "") == "folder" else None
    if folder:
        root = Path(task.path)
        return [str(p.relative_to(root)) if p.is_relative_to(root) else p.name
                for p in (folder[split][int(i)][0] for i in idx)]
    return [str(int(i)) for i in idx]


def write_predictions_csv(path: Path, ids, labels, clean, adv, classes: list[str], records=None) -> None:
    """predictions.csv: one row per evaluated image (:data:`PREDICTION_COLUMNS`); classes by name, scores the
    softmax of the predicted class, ``control_adv`` the median control draw's prediction (empty without one)."""
    labels, clean, adv = (np.asarray(a).astype(int).reshape(-1) for a in (labels, clean, adv))
    name = (lambda k: classes[k]) if classes else str
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(PREDICTION_COLUMNS)
    for i in range(len(clean)):
        row = [ids[i] if ids is not None else i, name(labels[i]), name(clean[i]), name(adv[i])]
        if records is not None:
            ctrl = records.control_adv
            row += [f"{records.clean_score[i]:.6f}", f"{records.adv_score[i]:.6f}",
                    name(int(ctrl[i])) if ctrl is not None else ""]
        else:
            row += ["", "", ""]
        w.writerow(row)
    atomic_write_text(path, buf.getvalue())


def amplified(a: np.ndarray) -> tuple[np.ndarray, float]:
    """A perturbation (..., C) as a viewable image in [0, 1] and its gain: ``0.5 + gain * a`` with
    ``gain = 0.5 / peak``, so grey is zero and the largest component spans the range. One formula for
    the saved ``uap.png`` and the report's picture, so the two never disagree."""
    peak = float(np.abs(a).max())
    gain = 0.5 / peak if peak > 0 else 1.0
    return np.clip(0.5 + 0.5 * a / (peak or 1.0), 0, 1), gain


def amplify(v) -> np.ndarray:
    """Map a perturbation (C,H,W or 1,C,H,W) to an HWC uint8 image (see :func:`amplified`)."""
    a = np.asarray(v, dtype=np.float32)
    shown, _ = amplified(a.reshape(a.shape[-3:]).transpose(1, 2, 0))
    out = (shown * 255).round().clip(0, 255).astype(np.uint8)
    return out[..., 0] if out.shape[-1] == 1 else out  # a greyscale model's v: an (H, W) grey image


def save_uap_png(v, path: Path, scale: int = 4) -> None:
    """Save the amplified perturbation as a PNG (nearest-neighbour upscaled for small inputs)."""
    img = Image.fromarray(amplify(v.numpy() if hasattr(v, "numpy") else v))
    if img.width < 256:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    img.save(path)


def save_examples_png(x, v, clean, adv, classes: list[str], path: Path, n: int = 6, clip: bool = True) -> None:
    """A grid: clean images with their predictions above, x+v with adversarial predictions below.

    Fooled images are shown first, so a reviewer sees what the attack does.
    """
    clean_np, adv_np = np.asarray(clean), np.asarray(adv)
    order = np.concatenate([np.flatnonzero(clean_np != adv_np), np.flatnonzero(clean_np == adv_np)])[:n]
    if len(order) == 0:
        return
    xs = x[order].float()
    xa = xs + v.reshape(1, *v.shape[-3:])
    if clip:
        xa = xa.clamp(0, 1)
    fig = Figure(figsize=(2.1 * len(order), 4.6))
    axes = fig.subplots(2, len(order), squeeze=False)
    for j, i in enumerate(order):
        for row, (img, pred) in enumerate(((xs[j], clean_np[i]), (xa[j], adv_np[i]))):
            ax = axes[row][j]
            hwc = img.permute(1, 2, 0).clamp(0, 1).numpy()
            ax.imshow(hwc[..., 0] if hwc.shape[-1] == 1 else hwc, interpolation="nearest", cmap="gray", vmin=0, vmax=1)
            name = classes[int(pred)]
            ax.set_title(("clean: " if row == 0 else "x+v: ") + (name[:18] + "…" if len(name) > 19 else name),
                         fontsize=8, color="black" if row == 0 or clean_np[i] == adv_np[i] else "#b00020")
            ax.axis("off")
    fig.suptitle("Model predictions before (top) and after (bottom) adding the UAP", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


@contextmanager
def guard_output(out_dir: Path | None) -> Iterator[None]:
    """Before any compute: ``out_dir`` is creatable and writable, and locked against a second run into it.

    Only rank 0 of a torchrun job (``RANK``) checks and locks: the other ranks write nothing. A folder
    created here and still empty when the run fails (bad input found in ``prepare``) is removed again."""
    if out_dir is None or int(os.environ.get("RANK", "0") or 0) != 0:
        yield
        return
    out_dir = Path(out_dir)
    created = not out_dir.exists()
    preflight_dir(out_dir)
    try:
        with OutputLock(out_dir):
            yield
    finally:
        if created:
            try:
                out_dir.rmdir()  # only succeeds when nothing was written
            except OSError:
                pass


def write_run(out_dir: Path, result: Result, v, x_eval, clean, adv, classes: list[str], spec: UAPSpec, *,
              labels=None, records=None, ids=None) -> None:
    """Write uap.npy, predictions.npz, the PNGs and spec.json, then result.json; drop a resumed partial.

    One transaction: every file goes into a temporary folder inside ``out_dir`` and is renamed into place,
    result.json last (an older result.json is removed first, so a result.json always describes the files
    beside it). If a write fails (a full disk, permissions changed mid-run), v and its result are kept
    by :func:`rescue` and a RuntimeFailure (exit 3) says where."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for old in out_dir.glob(".staging-*"):  # left by a killed run (we hold the folder's lock)
            shutil.rmtree(old, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(dir=out_dir, prefix=".staging-"))
        try:
            _write_files(staging, result, v, x_eval, clean, adv, classes, spec, labels, records, ids)
            (out_dir / "result.json").unlink(missing_ok=True)
            for f in sorted(staging.iterdir(), key=lambda f: f.name == "result.json"):
                os.replace(f, out_dir / f.name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        (out_dir / PARTIAL).unlink(missing_ok=True)
    except OSError as exc:
        kept = rescue(v, result, spec)
        where = (f"the perturbation is kept in {kept} (its result.json beside it)" if kept else
                 "the perturbation could not be kept anywhere else either")
        raise RuntimeFailure(f"cannot write the run folder {out_dir}: {os_error_text(exc)}; {where}",
                             "free disk space or fix the folder, then re-run" +
                             (f" (--init {kept} starts from the kept perturbation)" if kept else "")) from None


def _write_files(folder: Path, result: Result, v, x_eval, clean, adv, classes: list[str], spec: UAPSpec,
                 labels=None, records=None, ids=None) -> None:
    np.save(folder / ARTIFACTS["perturbation"], _numpy(v))
    np.savez_compressed(folder / ARTIFACTS["predictions"], clean=np.asarray(clean), adv=np.asarray(adv))
    save_uap_png(v, folder / ARTIFACTS["perturbation_png"])
    save_examples_png(x_eval, v, clean, adv, classes, folder / ARTIFACTS["examples_png"], clip=spec.clip)
    result.artifacts = dict(ARTIFACTS)
    if labels is not None:
        write_predictions_csv(folder / PREDICTIONS_CSV, ids, labels, clean, adv, classes, records)
        result.artifacts["predictions_csv"] = PREDICTIONS_CSV
    atomic_write_text(folder / "spec.json", spec.model_dump_json(indent=2))
    atomic_write_text(folder / "result.json", result.model_dump_json(indent=2))


def _numpy(v) -> np.ndarray:
    return v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)


def _npy_bytes(v) -> bytes:
    buf = io.BytesIO()
    np.save(buf, _numpy(v))
    return buf.getvalue()


def rescue(v, result: Result | None = None, spec: UAPSpec | None = None) -> Path | None:
    """Keep a perturbation that could not be written where it was asked: ``<stamp>-uap.npy`` (and its
    result and spec, best effort) in ``$ROBAUDIT_HOME/rescued/``, else the temp folder. The path, or None."""
    prefix = stamp()
    data = _npy_bytes(v)
    kept = keep_somewhere("rescued", f"{prefix}-uap.npy", lambda p: atomic_write_bytes(p, data))
    if kept is not None:
        for name, doc in (("result.json", result), ("spec.json", spec)):
            if doc is not None:
                try:
                    atomic_write_text(kept.with_name(f"{prefix}-{name}"), doc.model_dump_json(indent=2))
                except OSError:
                    pass
    return kept


def save_partial(out_dir: Path, v, spec: UAPSpec) -> Path:
    """Keep an interrupted run's perturbation (and its spec) where the same command resumes from.

    Written atomically (a second Ctrl-C never leaves half a file to resume from); if it cannot be written
    there, it is rescued and the Interrupted message says where."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out_dir / PARTIAL, _npy_bytes(v))
        atomic_write_text(out_dir / "spec.json", spec.model_dump_json(indent=2))
    except OSError as exc:
        kept = rescue(v, spec=spec)
        where = f"it is kept in {kept}; resume with --init {kept}" if kept else "it could not be kept anywhere"
        raise Interrupted(f"interrupted: cannot save the best perturbation so far in {out_dir / PARTIAL} "
                          f"({os_error_text(exc)}); {where}") from None
    return out_dir / PARTIAL


def load_perturbation(path: Path, what: str, hint: str) -> torch.Tensor:
    """A saved perturbation (``uap.npy``) as a float32 tensor: a finite (C,H,W) or (1,C,H,W) array, else
    BadInput naming the file (an .npz, a pickle, garbage, NaN)."""
    arr = read_npy(path, what, hint)
    if arr.ndim not in (3, 4) or (arr.ndim == 4 and arr.shape[0] != 1) or arr.shape[-3] not in (1, 3):
        raise BadInput(f"{what} {str(path)!r} has shape {arr.shape}, not a perturbation (1, 3, H, W)", hint)
    if not np.isfinite(arr).all():
        raise BadInput(f"{what} {str(path)!r} holds NaN or infinite values", hint)
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


def load_partial(out_dir: Path | None):
    """The partial perturbation an interrupted run left in ``out_dir`` (a float tensor), or None; a file
    that is not one is BadInput (never executed: no pickles), with the advice to delete it."""
    if out_dir is None or not (out_dir / PARTIAL).is_file():
        return None
    path = out_dir / PARTIAL
    return load_perturbation(path, "partial perturbation", f"delete {path} to start afresh (an interrupted run "
                             "leaves it to resume from)")


#: the attack libraries a run may use, in the bill of materials beside the environment robaudit records
BOM_PACKAGES = ("adversarial-robustness-toolbox", "foolbox", "torchattacks", "torchvision", "scipy", "statsmodels")


def software_versions() -> dict[str, str]:
    """Installed versions of :data:`BOM_PACKAGES` ('not installed' when absent): a reviewer's bill of materials
    names every library that could have computed a number."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in BOM_PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out
