"""Threat models (issue 26): query-only (scores, labels) vs same-norm noise vs white-box at the same photos, and
delivered vs at-input fooling with and without EOT (resize from the stored size, JPEG 90 / 75).

Scale run so far (benchmarks/README.md "Threat models"): the embedded chest X-rays (pneumonia-mini, 64 px stored,
300 test images), the tests' small CNN at 32 px, bundled natural photos, L-inf zeta 4 %, seeds 0-2, 1 CPU
thread. The issue's full scale (three shared tasks, fine-tuned lite0) is ``--model NAME --data TASK``.

    python benchmarks/bench_threats.py [--seeds 0 1 2] [--model ZOO_NAME --data TASK] [--budget 100000]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn

import robaudit as ra


def small_cnn(size: int = 32) -> ra.Model:
    xray = ra.load_data("pneumonia-mini")
    x, y = xray.tensors("train", size=size)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 2))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(3):
        for i in torch.randperm(len(x)).split(32):
            opt.zero_grad()
            nn.functional.cross_entropy(net((x[i] - 0.5) / 0.25), y[i]).backward()
            opt.step()
    return ra.Model(net, classes=xray.classes, mean=(0.5,) * 3, std=(0.25,) * 3, input_size=size, name="xray-cnn")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--model")
    ap.add_argument("--data", default="pneumonia-mini")
    ap.add_argument("--budget", type=int, default=None, help="query budget (default: the device's)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = ra.load_model(args.model) if args.model else small_cnn()
    base = dict(source="natural", norm="linf", zeta=0.04, controls=5)
    cells = {"white-box": {}, "query scores": dict(access="query", query_budget=args.budget),
             "query labels": dict(access="query", query_output="labels", query_budget=args.budget)}
    rows = []
    for seed in args.seeds:
        for name, kw in cells.items():
            t = time.time()
            r = ra.uap(model, args.data, seed=seed, **base, **{k: v for k, v in kw.items() if v is not None})
            m, c = r.result.metrics, r.result.control
            rows.append(dict(cell=name, seed=seed, fooling=m.fooling_rate.value, ci=m.fooling_rate.ci,
                             noise=c.fooling_rate.value, noise_ci=c.fooling_rate.ci,
                             queries=r.result.attack.queries_used, seconds=round(time.time() - t, 1)))
            print(json.dumps(rows[-1]))
        for q in ("jpeg=90", "jpeg=75"):
            for eot in (False, True):
                t = time.time()
                r = ra.uap(model, args.data, seed=seed, delivery=q, eot=eot, **base)
                d = r.result.metrics.delivered
                rows.append(dict(cell=f"delivery {q}{' eot' if eot else ''}", seed=seed,
                                 at_input=r.result.metrics.fooling_rate.value, delivered=d.fooling_rate.value,
                                 delivered_ci=d.fooling_rate.ci, noise_delivered=d.control_fooling_rate,
                                 seconds=round(time.time() - t, 1)))
                print(json.dumps(rows[-1]))


if __name__ == "__main__":
    main()
