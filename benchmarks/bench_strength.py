"""Attacker strength on the number the verdict rests on: the fooling rate on the medical TEST split.

For each shared task (a tf_efficientnet_lite0 fine-tuned on it) and each seed, on the same model,
the same ImageNet photos and the same eps:

* ART's ``UniversalPerturbation`` (attacker fgsm, step eps/10, on the plain photos), 1 and 3 passes:
  the published algorithm; its best test rate is the bar;
* robaudit's default ``robaudit uap`` (augmented photo stream, selection on the val split, its default
  method), and ``--method fgsm`` / ``--method sgd`` with the other defaults;
* robaudit 0.2's default (batched fgsm, 5 plain passes, no selection), to show what changed.

Reported per run: the test fooling rate, the build time, and for robaudit the time at which its
build first reached ART's best test rate (the test rates of the build's checkpoints are measured
after the build: they never steer it). Usage:
``python benchmarks/bench_strength.py [--tasks pneumonia skin retina] [--seeds 0 1 2] [--json out.json]``
(needs ROBAUDIT_DATA with the tasks and imagenet/; trains missing models into ROBAUDIT_HOME).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
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
    "fgsm plain+select": {"method": "fgsm", "augment": False, "max_iter": 5},
    "sgd plain+select": {"method": "sgd", "augment": False, "max_iter": 5},
    "best": {"method": "best"},
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


def robaudit_run(name: str, seed: int, args, **over) -> dict:
    spec = make_spec(model=name, source="imagenet", source_limit=args.photos, norm=args.norm, zeta=args.zeta,
                     seed=seed, eval_limit=args.eval, controls=0, device="cpu", **over)
    res = run_uap(spec, quiet=True).result
    a = res.attack
    traj = [(p.seconds, p.test_rate) for p in a.selection.trajectory] if a.selection else []
    return {"test": res.metrics.fooling_rate.value, "seconds": a.seconds, "trajectory": traj,
            "method": a.method, "budget": a.budget, "eps": a.eps,
            "chosen": next((f"{c.method}/{c.seed}" for c in a.candidates if c.chosen), a.method)}


def time_to(traj: list[tuple[float, float]], rate: float) -> float | None:
    return next((s for s, t in traj if t is not None and t >= rate - 1e-12), None)


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
            r["time_to_art_best"] = time_to(r.pop("trajectory"), bar)
            row[k] = r
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    keys = ["art1", "art3"] + [k for k in VARIANTS if k in rows[0]]
    out = ["| task | seed | " + " | ".join(keys) + " | default >= ART best? | fgsm / sgd speed-up to ART's best |",
           "|---|---|" + "---|" * (len(keys) + 2)]
    for r in rows:
        cells = [f"{r[k]['test']:.3f} ({r[k]['seconds']:.0f} s)" for k in keys]
        ups = []
        for k in ("default", "sgd"):
            t = r.get(k, {}).get("time_to_art_best")
            ups.append(f"{r['art_best']['seconds'] / t:.1f}x" if t else "never" if k in r else "-")
        ok = "-" if "default" not in r else "yes" if r["default"]["test"] >= r["art_best"]["test"] else "no"
        out.append(f"| {r['task']} | {r['seed']} | " + " | ".join(cells) + f" | {ok} | {' / '.join(ups)} |")
    by_task: dict[str, list[dict]] = {}
    for r in rows:
        by_task.setdefault(r["task"], []).append(r)
    means = ["art_best"] + keys[2:]
    out += ["", "| task | mean test rate: ART best of 1/3 passes | " + " | ".join(keys[2:]) + " |",
            "|---|" + "---|" * len(means)]
    for t, rs in by_task.items():
        out.append(f"| {t} | " + " | ".join(f"{statistics.mean(r[k]['test'] for r in rs):.3f}" for k in means)
                   + " |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", nargs="+", default=["pneumonia", "skin", "retina"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--photos", type=int, default=200)
    p.add_argument("--eval", type=int, default=500)
    p.add_argument("--norm", default="linf")
    p.add_argument("--zeta", type=float, default=0.04)
    p.add_argument("--variants", nargs="+", default=["default", "sgd", "best", "fgsm 0.2 (5 plain passes)"],
                   choices=list(VARIANTS))
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    torch.set_num_threads(2)
    rows = [r for t in args.tasks for r in run_task(t, args)]
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows,
                                         "torch_threads": torch.get_num_threads()}, indent=2))


if __name__ == "__main__":
    main()
