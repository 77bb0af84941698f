"""Hardening cost and effect on the three shared tasks (skin, retina, pneumonia; lite0 @ 64 px, CPU-sized).

Per task: train the model if missing (the conftest recipe: 2 epochs, 1500 images, balanced), harden it
(``robaudit harden``'s library call; sizes below), then re-audit original and hardened on the same test
images with photo and training-image UAPs rebuilt against each model (method best, audit seed and photos
set apart from hardening). Records the hardening time, fooling rates before/after with the paired
McNemar p, clean and balanced accuracy with their change and bootstrap interval, and per-sample PGD.
Usage: ``python benchmarks/bench_harden.py [--tasks pneumonia skin retina] [--json out.json]
[--readme benchmarks/README.md]`` (needs ROBAUDIT_DATA; trains into ROBAUDIT_HOME).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from robaudit.auditing.mitigation import ReauditConfig, compare_hardened
from robaudit.models.store import is_trained
from robaudit.models.train import TrainConfig, train_model
from robaudit.training.harden import HardenConfig, harden_model

HERE = Path(__file__).resolve().parent
TRAIN = dict(epochs=2, image_size=64, train_limit=1500, balanced=True)
#: the defaults (4 epochs, training-image inner UAP, loss on x + v only) on the 1,500 training images
HARDEN = dict(epochs=4, train_limit=1500)
REAUDIT = dict(threats=["photos", "train"], train_source_limit=400, controls=5, eval_limit=500, pgd_n=64,
               pgd_steps=10, bootstrap=1000, device="cpu")


def run_task(task: str, out_root: Path) -> dict:
    name = f"{task}_tf_efficientnet_lite0"
    t0 = time.time()
    if not is_trained(name):
        train_model(name, TrainConfig(**TRAIN), device="cpu", quiet=True)
    train_s = time.time() - t0
    t1 = time.time()
    card = harden_model(name, HardenConfig(**HARDEN), device="cpu", quiet=True, resume=False)
    harden_s = time.time() - t1
    t2 = time.time()
    doc = compare_hardened(name, out_root / task, ReauditConfig(**REAUDIT), quiet=True, resume=False)
    reaudit_s = time.time() - t2
    pair = doc["mitigation"]["pairs"][0]
    acc = pair["accuracy"]
    cells = {r["threat"]: {"before": r["before"]["value"], "after": r["after"]["value"], "n": r["before"]["n"],
                           "reduction": r["reduction"], "p_adjusted": r["p_adjusted"],
                           "baseline_beats_noise": r["baseline_beats_noise"]}
             for r in pair["cells"] if "reduction" in r}
    return {"task": task, "model": name, "hardened": card.name, "train_s": train_s, "harden_s": harden_s,
            "reaudit_s": reaudit_s, "cells": cells,
            "clean_accuracy": {k: acc["clean"][k] for k in ("before", "after", "change", "ci")},
            "balanced_accuracy": {k: acc["balanced"][k] for k in ("before", "after", "change", "ci")},
            "collapsed": acc["collapsed"], "verdict": pair["verdict"],
            "per_sample_pgd": doc["mitigation"].get("per_sample")}


def readme_section(res: dict) -> str:
    lines = ["## Hardening", "",
             f"`benchmarks/bench_harden.py` on {res['machine']}, torch {res['torch']}, {res['threads']} threads. "
             f"Sizes (reduced to fit a CPU run): hardening {json.dumps(HARDEN)}; re-audit {json.dumps(REAUDIT)}. "
             "Rates on the test split, each UAP rebuilt against the model it is measured on; p = exact McNemar "
             "(Holm); accuracy change with a 95% paired bootstrap interval.", "",
             "| task | harden s | cell | before | after | p | clean acc before -> after | balanced acc before -> "
             "after (change, CI) | verdict |", "|---|---|---|---|---|---|---|---|---|"]
    for r in res["tasks"]:
        c, b = r["clean_accuracy"], r["balanced_accuracy"]
        for i, (threat, x) in enumerate(r["cells"].items()):
            lines.append(f"| {r['task'] if i == 0 else ''} | {r['harden_s']:.0f} | {threat} | {x['before']:.1%} | "
                         f"{x['after']:.1%} | {x['p_adjusted']:.2g} | "
                         + (f"{c['before']:.1%} -> {c['after']:.1%} | {b['before']:.1%} -> {b['after']:.1%} "
                            f"({b['change']:+.1%}, [{b['ci'][0]:+.1%}, {b['ci'][1]:+.1%}]) | {r['verdict']} |"
                            if i == 0 else "| | |"))
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", nargs="+", default=["pneumonia", "skin", "retina"])
    ap.add_argument("--json", type=Path, default=HERE / "results" / "harden.json")
    ap.add_argument("--readme", type=Path, default=None, help="append/replace the 'Hardening' section here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tasks = [run_task(t, Path(tmp)) for t in args.tasks]
    res = {"machine": f"{platform.machine()} {platform.processor() or ''} ({torch.get_num_threads()} threads)".strip(),
           "torch": torch.__version__, "threads": torch.get_num_threads(), "train": TRAIN, "harden": HARDEN,
           "reaudit": REAUDIT, "tasks": tasks}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=2, default=float) + "\n")
    if args.readme is not None:
        text = args.readme.read_text()
        head = text.split("\n## Hardening\n")[0].rstrip("\n")
        args.readme.write_text(head + "\n\n" + readme_section(res))
    print(json.dumps(res, indent=2, default=float))


if __name__ == "__main__":
    main()
