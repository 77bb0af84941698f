"""The files of a UAP run folder: result.json (last, atomically), uap.npy, predictions, and its pictures
(the perturbation amplified, before/after examples with predicted labels); the partial of an interrupted run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

from robaudit.io import atomic_write_text
from robaudit.results import Result
from robaudit.specs import UAPSpec

PARTIAL = "uap.partial.npy"
ARTIFACTS = {"perturbation": "uap.npy", "perturbation_png": "uap.png", "examples_png": "examples.png",
             "predictions": "predictions.npz"}


def amplify(v) -> np.ndarray:
    """Map a perturbation (C,H,W or 1,C,H,W) to an HWC uint8 image: 0.5 + v scaled to fill [0,1]."""
    a = np.asarray(v, dtype=np.float32)
    a = a.reshape(a.shape[-3:]).transpose(1, 2, 0)
    m = float(np.abs(a).max()) or 1.0
    return ((0.5 + 0.5 * a / m) * 255).round().clip(0, 255).astype(np.uint8)


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
            ax.imshow(img.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
            name = classes[int(pred)]
            ax.set_title(("clean: " if row == 0 else "x+v: ") + (name[:18] + "…" if len(name) > 19 else name),
                         fontsize=8, color="black" if row == 0 or clean_np[i] == adv_np[i] else "#b00020")
            ax.axis("off")
    fig.suptitle("Model predictions before (top) and after (bottom) adding the UAP", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_run(out_dir: Path, result: Result, v, x_eval, clean, adv, classes: list[str], spec: UAPSpec) -> None:
    """Write uap.npy, predictions.npz, the PNGs and spec.json, then result.json (atomic); drop a resumed partial."""
    out_dir.mkdir(parents=True, exist_ok=True)
    np.save(out_dir / ARTIFACTS["perturbation"], v.numpy())
    np.savez_compressed(out_dir / ARTIFACTS["predictions"], clean=np.asarray(clean), adv=np.asarray(adv))
    save_uap_png(v, out_dir / ARTIFACTS["perturbation_png"])
    save_examples_png(x_eval, v, clean, adv, classes, out_dir / ARTIFACTS["examples_png"], clip=spec.clip)
    result.artifacts = dict(ARTIFACTS)
    atomic_write_text(out_dir / "spec.json", spec.model_dump_json(indent=2))
    atomic_write_text(out_dir / "result.json", result.model_dump_json(indent=2))
    (out_dir / PARTIAL).unlink(missing_ok=True)


def save_partial(out_dir: Path, v, spec: UAPSpec) -> Path:
    """Keep an interrupted run's perturbation (and its spec) where the same command resumes from."""
    out_dir.mkdir(parents=True, exist_ok=True)
    np.save(out_dir / PARTIAL, v.numpy())
    atomic_write_text(out_dir / "spec.json", spec.model_dump_json(indent=2))
    return out_dir / PARTIAL


def load_partial(out_dir: Path | None):
    """The partial perturbation an interrupted run left in ``out_dir`` (a float tensor), or None."""
    if out_dir is None or not (out_dir / PARTIAL).is_file():
        return None
    return torch.from_numpy(np.load(out_dir / PARTIAL))
