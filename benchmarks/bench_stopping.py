"""Choosing the stop rule, the check interval and the racing rungs of ``best`` from measurements.

Phase 1 (``--collect OUT.json``): for each shared task (lite0 fine-tuned as in ``bench_strength.py``),
seed and method (fgsm, sgd, perphoto), one build over the whole budget (2,000 augmented views of 200
ImageNet photos, L-inf zeta 4 %) with no stop rule, v checked every 128 views on the selection split
(256 val images): the per-image success of every checked v, its test rate (500 test images,
measured after the build), the seconds per view and per check.

Phase 2 (``--replay OUT.json``): replays, on those trajectories, every combination of check interval,
stop window, delta and confidence, alone and inside a successive-halving race of the three methods
(first rung = one check interval, rungs doubling, the better half kept), and reports per setting: the
mean test rate of the v it keeps, its loss against the best v of the whole budget, the share of the
budget's views it used and its modelled seconds (views x measured seconds per view of each method +
checks x measured seconds per check). The defaults of ``UAPConfig`` were chosen from this table
(benchmarks/README.md, "Time to verdict").
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from robaudit.attacks.uap.select import StopRule
from robaudit.core.specs import make_spec
from robaudit.eval.run import build, measure, prepare
from robaudit.models.store import is_trained
from robaudit.models.train import TrainConfig, train_model

ARCH = "tf_efficientnet_lite0"
TRAIN = TrainConfig(epochs=3, image_size=64, train_limit=2000)
METHODS = ("fgsm", "sgd", "perphoto")
#: the check interval the trajectories were collected at (``--every``)
BASE_EVERY = 128


def collect(args) -> list[dict]:
    rows = []
    for task in args.tasks:
        name = f"{task}_{ARCH}"
        if not is_trained(name):
            train_model(name, TRAIN, device="cpu", quiet=True)
        for seed in args.seeds:
            for method in args.methods:
                spec = make_spec(model=name, source="imagenet", source_limit=args.photos, norm="linf", zeta=0.04,
                                 seed=seed, eval_limit=args.eval, controls=0, device="cpu", method=method,
                                 stop_delta=0, patience=None, select_every=args.every, select_limit=args.select)
                prep = prepare(spec, None)
                t0 = time.perf_counter()
                out = build(prep, True)
                secs = time.perf_counter() - t0
                measure(prep, out.v)
                sel = out.selection
                checks = len(sel.trajectory)
                row = {"task": task, "seed": seed, "method": method, "seconds": secs,
                       "check_seconds": sel.check_seconds, "checks": checks, "images": out.images_seen,
                       "per_view": (secs - sel.check_seconds) / out.images_seen,
                       "per_check": sel.check_seconds / checks,
                       "at": [p[0] for p in sel.trajectory], "selection": [p[1] for p in sel.trajectory],
                       "test": prep.test_rates,
                       "success": [np.packbits(s).tobytes().hex() for s in sel.successes], "n": len(sel.successes[0])}
                rows.append(row)
                if args.collect:  # after every build: a long collection keeps what it measured
                    args.collect.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                        "rows": rows}))
                print(f"{task} seed {seed} {method}: best sel {sel.best_rate:.3f} test "
                      f"{max(prep.test_rates):.3f} max, {secs:.1f} s, checks {sel.check_seconds:.1f} s", flush=True)
    return rows


def _vecs(row) -> list[np.ndarray]:
    return [np.unpackbits(np.frombuffer(bytes.fromhex(h), np.uint8))[: row["n"]].astype(bool) for h in row["success"]]


class Replay:
    """One method's trajectory seen through a check interval, stepping check by check with a stop rule."""

    def __init__(self, row, every: int, rule: StopRule | None):
        k = max(1, round(every / BASE_EVERY))  # checks fall near multiples of the collection's interval
        keep = [i for i in range(len(row["at"])) if (i + 1) % k == 0 or i == len(row["at"]) - 1]
        self.row, self.idx, self.rule, self.vec = row, keep, rule, _vecs(row)
        self.pos, self.best, self.best_i, self.hist, self.stopped = -1, -1.0, None, [], False

    def step(self) -> bool:
        """Next check; False when the rule stopped the build or the budget ran out."""
        if self.stopped or self.pos + 1 >= len(self.idx):
            self.stopped = True
            return False
        self.pos += 1
        i = self.idx[self.pos]
        rate = self.row["selection"][i]
        if rate > self.best:
            self.best, self.best_i = rate, i
        self.hist.append(self.vec[self.best_i])
        if self.rule is not None and len(self.hist) > self.rule.window:
            if self.rule.upper_gain(self.hist[-1], self.hist[-1 - self.rule.window]) < self.rule.delta:
                self.stopped = True
        return not self.stopped

    @property
    def views(self) -> int:
        return self.row["at"][self.idx[self.pos]]

    @property
    def seconds(self) -> float:
        return self.views * self.row["per_view"] + (self.pos + 1) * self.row["per_check"]

    @property
    def test(self) -> float:
        return self.row["test"][self.best_i]


def run_alone(row, every, rule) -> Replay:
    r = Replay(row, every, rule)
    while r.step():
        pass
    return r


def run_race(rows, every, rule) -> tuple[float, float, float]:
    """(test rate kept, views, seconds) of a successive-halving race of the methods' trajectories."""
    live = [Replay(r, every, rule) for r in rows]
    everyone = list(live)
    rung, at = every, 0
    while True:
        for r in live:
            r.step()
        at += every
        if at >= rung and len(live) > 1:
            live = sorted(live, key=lambda r: -r.best)[: -(-len(live) // 2)]
            rung *= 2
        if all(r.stopped for r in live):
            break
    win = max(live, key=lambda r: r.best)
    return win.test, sum(r.views for r in everyone), sum(r.seconds for r in everyone)


def replay(rows: list[dict], args) -> list[dict]:
    runs: dict[tuple, dict] = {}
    for r in rows:
        runs.setdefault((r["task"], r["seed"]), {})[r["method"]] = r
    out = []
    grid = [None] + [StopRule(w, d, c) for w, d, c in itertools.product(args.windows, args.deltas, args.confidences)]
    for every in args.everys:
        for rule in grid:
            alone, race = [], []
            for (task, _seed), by in runs.items():
                full = {m: max(row["test"][i] for i in Replay(row, every, None).idx) for m, row in by.items()}
                for m, row in by.items():
                    r = run_alone(row, every, rule)
                    full_best = run_alone(row, every, None)
                    alone.append((m, r.test, full_best.test, r.views / row["images"], r.seconds))
                t, v, s = run_race([by[m] for m in METHODS if m in by], every, rule)
                race.append((task, t, max(full.values()), v, s))
            out.append({"every": every, "rule": rule.info() if rule else None,
                        "alone_test": statistics.mean(a[1] for a in alone),
                        "alone_loss": statistics.mean(a[2] - a[1] for a in alone),
                        "alone_worst_loss": max(a[2] - a[1] for a in alone),
                        "alone_views": statistics.mean(a[3] for a in alone),
                        "alone_seconds": statistics.mean(a[4] for a in alone),
                        "race_test": statistics.mean(a[1] for a in race),
                        "race_loss_vs_best_method": statistics.mean(a[2] - a[1] for a in race),
                        "race_views": statistics.mean(a[3] for a in race),
                        "race_seconds": statistics.mean(a[4] for a in race),
                        "race_by_task": {t: statistics.mean(a[1] for a in race if a[0] == t) for t in args.tasks}})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--collect", type=Path, help="write trajectories here")
    p.add_argument("--replay", type=Path, help="read trajectories from here and print the grid")
    p.add_argument("--tasks", nargs="+", default=["pneumonia", "skin", "retina"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--photos", type=int, default=200)
    p.add_argument("--eval", type=int, default=500)
    p.add_argument("--select", type=int, default=256)
    p.add_argument("--every", type=int, default=128)
    p.add_argument("--everys", nargs="+", type=int, default=[128, 256, 384, 512])
    p.add_argument("--windows", nargs="+", type=int, default=[2, 3, 4])
    p.add_argument("--deltas", nargs="+", type=float, default=[0.01, 0.02, 0.03, 0.05])
    p.add_argument("--confidences", nargs="+", type=float, default=[0.8, 0.9])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, help="write the replay grid here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.collect:
        collect(args)
    if args.replay:
        rows = [r for f in str(args.replay).split(",") for r in json.loads(Path(f).read_text())["rows"]]
        args.tasks = sorted({r["task"] for r in rows})
        grid = replay(rows, args)
        print("| every | window | delta | conf | alone: test | loss | worst | views | s | race: test | "
              "views | s | " + " | ".join(args.tasks) + " |")
        for g in grid:
            r = g["rule"] or {"window": "-", "delta": "-", "confidence": "-"}
            print(f"| {g['every']} | {r['window']} | {r['delta']} | {r['confidence']} | {g['alone_test']:.3f} | "
                  f"{g['alone_loss']:.3f} | {g['alone_worst_loss']:.3f} | {g['alone_views']:.2f} | "
                  f"{g['alone_seconds']:.1f} | {g['race_test']:.3f} | {g['race_views']:.0f} | "
                  f"{g['race_seconds']:.1f} | "
                  + " | ".join(f"{g['race_by_task'][t]:.3f}" for t in args.tasks) + " |")
        if args.json:
            args.json.write_text(json.dumps(grid, indent=1))


if __name__ == "__main__":
    main()
