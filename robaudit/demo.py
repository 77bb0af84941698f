"""``robaudit demo``: an offline end-to-end audit that a newcomer can run on a laptop CPU.

Fine-tunes ``tf_efficientnet_lite0`` from its offline ImageNet weights and trains its random-init twin
on a medical task, builds natural-image, training-image and random-control perturbations
(non-targeted and one targeted), evaluates them, and writes HTML + Markdown reports.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from robaudit import settings
from robaudit.audit import AuditRecipe, run_audit
from robaudit.audit.recipes import TrainSettings
from robaudit.console import info, warn
from robaudit.data import load_task
from robaudit.data.bundled import CLASSES, build_modality_task
from robaudit.data.fetch import fetch_medmnist
from robaudit.errors import RobauditError
from robaudit.grading import load_input
from robaudit.report import write_reports

#: preferred demo tasks, with the clinically worrying target (disease -> "healthy"-looking class)
DEMO_TASKS = (("pneumonia", "normal"), ("skin", "melanocytic nevi"), ("retina:referable", "non-referable"))
ARCH = "tf_efficientnet_lite0"


@dataclass
class DataChoice:
    task: str
    target: str
    source: str
    why: str
    source_why: str


def choose_data(allow_download: bool = True) -> DataChoice:
    """Medical data, first found wins: data root, MedMNIST cache, a download, bundled wheel images."""

    root = settings.data_root(required=False)
    why = task = target = None
    for candidate, candidate_target in DEMO_TASKS if root is not None else ():
        try:
            load_task(candidate).labels("test")
        except RobauditError:
            continue
        task, target = candidate, candidate_target
        why = f"found in the data root {root} (from {settings.data_root_origin() or 'MedMNIST cache'})"
        break
    if why is None and allow_download:
        try:
            path = fetch_medmnist("pneumoniamnist", 64)
            settings.set_data_root(path.parent)
            task, target, why = "pneumonia", "normal", f"downloaded PneumoniaMNIST (64 px) to {path.parent}"
        except RobauditError as exc:
            warn(f"no medical data root and no download ({exc.message})")
    if why is None:
        folder = settings.home() / "bundled-data"
        build_modality_task(folder)
        settings.set_data_root(folder)
        task, target = "modality", CLASSES[0]
        why = ("no data root, MedMNIST cache or network: built an imaging-modality task from the medical images "
               "that ship inside installed wheels (few source images; a demonstration, not a clinical model)")
    root = settings.data_root()
    if (root / "imagenet").is_dir() and any((root / "imagenet").iterdir()):
        source, source_why = "imagenet", f"ImageNet images under {root / 'imagenet'}"
    else:
        source, source_why = "natural", "photos bundled with scikit-image, scikit-learn and matplotlib (offline)"
    return DataChoice(task, target, source, why, source_why)


def demo_recipe(choice: DataChoice, small: bool = False):
    """The demo's audit recipe: ImageNet vs random init x natural vs training source x (non-)targeted."""
    n = 96 if small else 300
    return AuditRecipe(
        name="demo", description="robaudit demo: natural-image vs training-image UAPs vs random noise, "
        "ImageNet init vs random init", tasks=[choice.task.replace(":", "-")], archs=[ARCH],
        transfers=["full", "scratch"], sources=[choice.source, "train"], norms=["l2"], zetas=[0.04],
        targets=[choice.target], controls=3 if small else 10, eval_limit=n, source_limit=n,
        max_iter=2 if small else 3, batch_size=32, clip=True, seed=0, device="auto",
        # a random init starts from logits far off (loss ~5 in its first epoch): give the twin more epochs
        train=TrainSettings(epochs=1 if small else 2, scratch_epochs=2 if small else 5, image_size=64,
                            train_limit=300 if small else 1200))


def run_demo(out: Path = Path("reports/demo"), small: bool = False, device: str | None = None,
             quiet: bool = False, allow_download: bool = True) -> tuple[dict, DataChoice, dict]:
    """Run the demo audit into ``out``; returns (audit document, data choice, report paths)."""
    choice = choose_data(allow_download)
    info(f"[bold]medical data:[/] {choice.task} — {choice.why}")
    info(f"[bold]natural source:[/] {choice.source} — {choice.source_why}")
    recipe = demo_recipe(choice, small)
    if device:
        recipe = recipe.model_copy(update={"device": device})
    if (out / "cells").exists():
        shutil.rmtree(out / "cells")  # cells are recomputed; trained models are reused from the store
    notes = [f"medical data: {choice.task} ({choice.why})", f"natural source: {choice.source_why}"]
    doc = run_audit(recipe, out, resume=False, train_missing=True, quiet=quiet, notes=notes)
    paths = write_reports(load_input(out / "audit.json"), out, formats=("html", "md"))
    return doc, choice, paths
