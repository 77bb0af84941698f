"""Does ``robaudit demo`` tell the same story on every machine? Retrain and re-audit it over training seeds
and torch thread counts, each run in a fresh process with an empty model store (as a fresh clone would).

A different CPU or thread count trains different weights from the same seed (kernels reduce in another
order), so the demo's verdict must hold over training draws, not for one. Per (seed, threads) this records
the fine-tune's and the twin's clean accuracy and epochs, every cell's test fooling rate against its same-norm
noise (Holm p over the document), the photo cells' trajectory (test rate against views, to see whether the
attacker converged within the budget) and the wall time of training and of the whole demo.

    python benchmarks/bench_demo.py --seeds 0 1 2 --threads 1 2 --json benchmarks/results/demo_stability.json
    python benchmarks/bench_demo.py --seeds 0 --threads 2 --set budget=6000 --set patience=None   # a probe

``--set KEY=VALUE`` overrides a field of the demo recipe (``train.KEY`` for its training settings), to probe
settings before they become the demo's. Run with nothing else on the machine when the seconds matter.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None if text == "None" else text


def worker(seed: int, threads: int, sets: dict, out: Path) -> dict:
    """One demo run in this process: ``threads`` torch threads, training seed ``seed``, recipe overrides."""
    import torch

    torch.set_num_threads(threads)
    from robaudit.auditing.tables import cell_rows
    from robaudit.demo import run_demo
    from robaudit.models.store import model_dir, read_card

    t0 = time.perf_counter()
    doc, choice, _ = run_demo(out, quiet=True, train_seed=seed, overrides=sets)
    wall = time.perf_counter() - t0
    models = {}
    for name in dict.fromkeys(c["model"]["name"] for c in doc["cells"]):
        card = read_card(model_dir(name) / "card.json")
        models[name] = {k: card.metrics.get(k) for k in ("test_accuracy", "val_accuracy", "best_epoch", "epochs_run",
                                                          "seconds")}
        models[name]["sha256"] = card.weights_sha256
    rows = cell_rows(doc)
    assert len(rows) == len(doc["cells"]), "one table row per cell"
    cells = []
    for row, c in zip(rows, doc["cells"], strict=True):
        sel = (c["attack"].get("selection") or {})
        traj = sel.get("trajectory") or []
        cells.append({
            "model": row.model, "init": row.init, "source": row.source, "target": row.target,
            "threat": row.threat_model,
            "rate": row.rate, "control": row.control, "p_holm": row.p_adjusted,
            "clean_accuracy": c["metrics"]["clean_accuracy"], "budget": c["attack"].get("budget"),
            "seconds": c["attack"].get("seconds"), "views_used": traj[-1]["images"] if traj else None,
            "trajectory": [(p["images"], p["selection_rate"], p.get("test_rate")) for p in traj]})
    return {"seed": seed, "threads": threads, "overrides": sets, "wall_seconds": wall, "models": models,
            "cells": cells, "cpu": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--set", action="append", default=[], help="KEY=VALUE recipe override (train.KEY for training)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--worker", nargs=2, type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    sets = {k: _value(v) for k, v in (s.split("=", 1) for s in a.set)}
    if a.worker:
        print(json.dumps(worker(a.worker[0], a.worker[1], sets, a.out)))
        return
    runs = []
    for seed in a.seeds:
        for threads in a.threads:
            with tempfile.TemporaryDirectory() as tmp:
                env = {**os.environ, "ROBAUDIT_HOME": str(Path(tmp) / "home"), "OMP_NUM_THREADS": str(threads)}
                cmd = [sys.executable, __file__, "--worker", str(seed), str(threads), "--out", str(Path(tmp) / "demo"),
                       *(x for s in a.set for x in ("--set", s))]
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
                if proc.returncode:
                    print(proc.stderr[-3000:], file=sys.stderr)
                    raise SystemExit(f"seed {seed}, {threads} threads failed (exit {proc.returncode})")
                run = json.loads(proc.stdout.strip().splitlines()[-1])
            runs.append(run)
            ft = [c for c in run["cells"]
                  if c["init"] == "imagenet" and c["source"] != "train" and c["rate"] is not None]
            print(f"seed {seed} threads {threads}: {run['wall_seconds']:.0f} s; "
                  + "; ".join(f"{m.split('_')[-1]} acc {v['test_accuracy']:.3f} ({v['epochs_run']} ep)"
                              for m, v in run["models"].items()) + "; "
                  + "; ".join(f"{c['threat']}{'->' + c['target'] if c['target'] else ''} {c['rate']:.3f} vs "
                              f"{c['control']:.3f} p={c['p_holm']:.2g}" for c in ft), flush=True)
            if a.json:
                a.json.write_text(json.dumps({"runs": runs}, indent=1))


if __name__ == "__main__":
    main()
