"""Attacker strength and time to verdict, on the number the verdict rests on: the medical TEST fooling rate.

For each shared task (a tf_efficientnet_lite0 fine-tuned on it) and each seed, on the same model,
the same ImageNet photos and the same eps:

* ART's ``UniversalPerturbation`` (attacker fgsm, step eps/10, on the plain photos), 1 and 3 passes:
  the published algorithm; its best test rate is the bar, its one-pass time the clock to beat;
* robaudit's default ``robaudit uap`` (0.9: sgd, on a two-class model an sgd build toward each class raced),
  ``--toward-classes`` (those builds raced on any model of up to 10 classes), ``--method best`` (fgsm, sgd and
  perphoto raced: the 0.5-0.8 default), and ``--method fgsm`` / ``sgd`` / ``perphoto`` with the other defaults;
* optionally robaudit 0.4's default from another source tree (``--baseline-tree DIR``, run in a
  subprocess on the same model and seed), for "no strength traded for speed".

Reported per run: the test fooling rate, the build time, the share of it spent on selection checks,
and from the build's trajectory (test rates of the checked v's, measured after the build, never
steering it) the time at which the v the build would have returned (the best so far on the
selection split) first reached ART's best test rate, and that v's test rate at ART's one-pass time.
Usage: ``python benchmarks/bench_strength.py [--tasks pneumonia skin retina] [--seeds 0 1 2]
[--threads 1] [--baseline-tree DIR] [--json out.json]`` (needs ROBAUDIT_DATA with the tasks and
imagenet/; trains missing models into ROBAUDIT_HOME).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from robaudit.attacks.predict import predict
from robaudit.core.specs import make_spec
from robaudit.data import load_source
from robaudit.eval.run import run_uap
from robaudit.models import load_model_and_task
from robaudit.models.store import is_trained
from robaudit.models.train import TrainConfig, train_model

ARCH = "tf_efficientnet_lite0"
#: robaudit configurations compared (name -> `robaudit uap` options over its defaults)
VARIANTS = {
    "default": {},
    "fgsm": {"method": "fgsm"},
    "sgd": {"method": "sgd"},
    "perphoto": {"method": "perphoto"},
    "toward classes": {"toward_classes": True},
    "best": {"method": "best"},
    "fgsm full budget": {"method": "fgsm", "stop_delta": 0},
    "fgsm 0.2 (5 plain passes)": {"method": "fgsm", "augment": False, "select": "none", "max_iter": 5},
}
TRAIN = TrainConfig(epochs=3, image_size=64, train_limit=2000)


def art_uap(model, x: torch.Tensor, classes: int, eps: float, norm: str, passes: int, seed: int):
    """ART's UniversalPerturbation (fgsm, step eps/10) on the plain photos: (noise, seconds, source rate)."""
    from art.attacks.evasion import UniversalPerturbation
    from art.estimators.classification import PyTorchClassifier

    clf = PyTorchClassifier(model, loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                            nb_classes=classes, clip_values=(0.0, 1.0))
    step = eps / 10 if norm == "linf" else eps / x[0].numel() ** 0.5 / 10
    attack = UniversalPerturbation(clf, attacker="fgsm", attacker_params={"eps": step}, delta=1e-6, max_iter=passes,
                                   eps=eps, norm=np.inf if norm == "linf" else 2, verbose=False)
    random.seed(seed)
    np.random.seed(seed)
    t0 = time.perf_counter()
    attack.generate(x.numpy())
    return torch.from_numpy(attack.noise).float(), time.perf_counter() - t0, float(attack.fooling_rate)


def test_rate(model, x, clean, v) -> float:
    return float((predict(model, x, v, batch_size=256) != clean).float().mean())


def _summary(res) -> dict:
    a = res.attack
    sel = a.selection
    traj = [(p.seconds, p.selection_rate, p.test_rate) for p in sel.trajectory] if sel else []
    return {"test": res.metrics.fooling_rate.value, "seconds": a.seconds, "trajectory": traj,
            "method": a.method, "budget": a.budget, "eps": a.eps,
            "images": max((c.images_seen or 0 for c in a.candidates), default=None) if a.candidates else
            (sel.trajectory[-1].images if sel and sel.trajectory else None),
            "check_share": (sel.check_seconds / a.seconds) if sel and sel.check_seconds is not None else None,
            "stop": getattr(sel, "stop_reason", None) if sel else None,
            "chosen": next((f"{c.method}/{c.seed}" for c in a.candidates if c.chosen), a.method),
            "candidates": [{"method": c.method + (f">{c.toward}" if getattr(c, "toward", None) else ""),
                            "selection_rate": c.selection_rate, "images": c.images_seen,
                            "seconds": c.seconds, "dropped_at": getattr(c, "dropped_at", None)}
                           for c in a.candidates]}


def robaudit_run(name: str, seed: int, args, **over) -> dict:
    spec = make_spec(model=name, source="imagenet", source_limit=args.photos, norm=args.norm, zeta=args.zeta,
                     seed=seed, eval_limit=args.eval, controls=0, device="cpu", **over)
    return _summary(run_uap(spec, quiet=True).result)


BASELINE = """
import json, sys, torch
torch.set_num_threads(int(sys.argv[2]))
from robaudit.core.specs import make_spec
from robaudit.eval.run import run_uap
r = run_uap(make_spec(**json.loads(sys.argv[1])), quiet=True).result
a = r.attack
print("RESULT " + json.dumps({"test": r.metrics.fooling_rate.value, "seconds": a.seconds, "method": a.method,
      "chosen": next((f"{c.method}/{c.seed}" for c in a.candidates if c.chosen), a.method),
      "candidates": [{"method": c.method, "selection_rate": c.selection_rate, "images": c.images_seen,
                      "seconds": c.seconds} for c in a.candidates]}))
"""


def baseline_run(name: str, seed: int, args) -> dict:
    """Another release's default on the same model and seed: its source tree first on the path, in a subprocess."""
    # the method named: the spec is made by this tree's make_spec (0.4 had no robaudit.core), whose default is not
    # 0.4's; 0.4's default was best (fgsm and sgd over the whole budget)
    spec = dict(model=name, source="imagenet", source_limit=args.photos, norm=args.norm, zeta=args.zeta, seed=seed,
                eval_limit=args.eval, controls=0, device="cpu", method="best")
    env = os.environ | {"PYTHONPATH": str(args.baseline_tree), "OMP_NUM_THREADS": str(args.threads)}
    out = subprocess.run([sys.executable, "-c", BASELINE, json.dumps(spec), str(args.threads)], env=env,
                         capture_output=True, text=True, check=True, cwd=args.baseline_tree).stdout
    return json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:]) | {"trajectory": []}


def time_to(traj: list[tuple[float, float, float | None]], rate: float) -> float | None:
    """Seconds at which the v the build would have returned then (best selection rate so far) reached ``rate``."""
    best_sel, kept = -1.0, None
    for sec, sel, test in traj:
        if sel > best_sel:
            best_sel, kept = sel, test
        if kept is not None and kept >= rate - 1e-12:
            return sec
    return None


def rate_at(traj: list[tuple[float, float, float | None]], seconds: float) -> float | None:
    """Test rate of the v the build would have returned if stopped at ``seconds`` (None: no check yet)."""
    best_sel, kept = -1.0, None
    for sec, sel, test in traj:
        if sec > seconds:
            break
        if sel > best_sel:
            best_sel, kept = sel, test
    return kept


def run_task(task_name: str, args) -> list[dict]:
    name = f"{task_name}_{ARCH}"
    if not is_trained(name):
        train_model(name, TRAIN, device="cpu", quiet=True)
    lm, task = load_model_and_task(name, device="cpu")
    size = lm.card.input_size
    x_test, _ = task.tensors("test", size=size, limit=args.eval, seed=0)
    clean = predict(lm.module, x_test, batch_size=256)
    rows = []
    for seed in args.seeds:
        row: dict = {"task": task.full_name, "seed": seed}
        runs = {k: VARIANTS[k] for k in args.variants}
        results = {}
        for k, v in runs.items():
            results[k] = robaudit_run(name, seed, args, **v)
            print(f"  {task.full_name} seed {seed} {k}: {results[k]['test']:.3f} in {results[k]['seconds']:.1f} s",
                  flush=True)
        if args.baseline_tree:
            results["0.4 default"] = baseline_run(name, seed, args)
            print(f"  {task.full_name} seed {seed} 0.4 default: {results['0.4 default']['test']:.3f} in "
                  f"{results['0.4 default']['seconds']:.1f} s", flush=True)
        eps = next(iter(results.values()))["eps"]
        photos = load_source("imagenet", limit=args.photos, seed=seed, grayscale=task.is_grey).tensor(size)
        for passes in (1, 3):
            v, secs, src = art_uap(lm.module, photos, len(lm.classes), eps, args.norm, passes, seed)
            row[f"art{passes}"] = {"test": test_rate(lm.module, x_test, clean, v), "seconds": secs, "source": src}
            print(f"  {task.full_name} seed {seed} ART {passes}: {row[f'art{passes}']['test']:.3f} in {secs:.1f} s",
                  flush=True)
        bar = max(row["art1"]["test"], row["art3"]["test"])
        art_best = min((row[k] for k in ("art1", "art3") if row[k]["test"] >= bar - 1e-12), key=lambda r: r["seconds"])
        row["art_best"] = {"test": bar, "seconds": art_best["seconds"]}
        for k, r in results.items():
            r["time_to_art_best"] = time_to(r["trajectory"], bar)
            r["test_at_art1_time"] = rate_at(r["trajectory"], row["art1"]["seconds"])
            row[k] = r
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def _fmt(x, spec=".3f", none="-") -> str:
    return none if x is None else format(x, spec)


def table(rows: list[dict]) -> str:
    keys = [k for k in [*VARIANTS, "0.4 default"] if k in rows[0]]
    out = ["| task | seed | ART 1 pass | ART 3 passes | " + " | ".join(keys) + " |",
           "|---|---|" + "---|" * (len(keys) + 2)]
    for r in rows:
        cells = [f"{r[k]['test']:.3f} ({r[k]['seconds']:.1f} s)" for k in ("art1", "art3", *keys)]
        out.append(f"| {r['task']} | {r['seed']} | " + " | ".join(cells) + " |")
    out += ["", "Time to ART's best test rate (speed-up = ART's time for its best / this) and the test rate at ART's "
            "one-pass time:", "", "| task | seed | bar | " + " | ".join(k for k in keys if k != "0.4 default") + " |",
            "|---|---|---|" + "---|" * len([k for k in keys if k != "0.4 default"])]
    for r in rows:
        cells = []
        for k in keys:
            if k == "0.4 default":
                continue
            t = r[k]["time_to_art_best"]
            up = f"{r['art_best']['seconds'] / t:.1f}x" if t else "never"
            cells.append((f"{t:.1f} s ({up})" if t else "never") + f"; {_fmt(r[k]['test_at_art1_time'])}")
        out.append(f"| {r['task']} | {r['seed']} | {r['art_best']['test']:.3f} ({r['art_best']['seconds']:.1f} s) | "
                   + " | ".join(cells) + " |")
    by_task: dict[str, list[dict]] = {}
    for r in rows:
        by_task.setdefault(r["task"], []).append(r)
    lead = keys[0]  # the first variant asked for (the default, unless --variants says otherwise)
    out += ["", "| task | ART best (mean) | ART 1 pass s | " + " | ".join(keys)
            + f" | {lead} s | {lead} check share |",
            "|---|---|---|" + "---|" * (len(keys) + 2)]
    for t, rs in by_task.items():
        out.append(f"| {t} | {statistics.mean(r['art_best']['test'] for r in rs):.3f} | "
                   f"{statistics.mean(r['art1']['seconds'] for r in rs):.1f} | "
                   + " | ".join(f"{statistics.mean(r[k]['test'] for r in rs):.3f}" for k in keys)
                   + f" | {statistics.mean(r[lead]['seconds'] for r in rs):.1f} | "
                   + f"{statistics.mean(r[lead]['check_share'] for r in rs):.1%} |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", nargs="+", default=["pneumonia", "skin", "retina"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--photos", type=int, default=200)
    p.add_argument("--eval", type=int, default=500)
    p.add_argument("--norm", default="linf")
    p.add_argument("--zeta", type=float, default=0.04)
    p.add_argument("--variants", nargs="+", default=["default", "fgsm", "sgd", "perphoto"], choices=list(VARIANTS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--baseline-tree", type=Path, help="source tree of another release (its default is run too)")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = [r for t in args.tasks for r in run_task(t, args)]
    if args.json:  # before the table: a table that fails must not lose an hour of runs
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows,
                                         "torch_threads": torch.get_num_threads(), "load": os.getloadavg()},
                                        indent=1))
    print(table(rows))


if __name__ == "__main__":
    main()
