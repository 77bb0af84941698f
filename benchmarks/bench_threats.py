"""Threat models (issue 26): query-only (scores, labels) vs same-norm noise vs white-box at the same photos, and
delivered vs at-input fooling with and without EOT (resize from the stored size, JPEG 90 / 75).

Default scale: the embedded chest X-rays (pneumonia-mini, 64 px stored, 300 test images), the tests' small CNN
at 32 px, bundled natural photos, L-inf zeta 4 %. The issue's scale (benchmarks/README.md "Threat models": the
three shared tasks' fine-tuned lite0, the data root's ImageNet photos, 500 test images, seeds 0-2) is
``--model TASK_tf_efficientnet_lite0 --source imagenet --eval 500``; ``--budget`` with ``--cells`` gives the
query-only rate at smaller budgets.

    python benchmarks/bench_threats.py [--seeds 0 1 2] [--model ZOO_NAME [--data TASK]] [--budget 100000] \
        [--parts query delivery] [--cells ...] [--eval 500] [--source imagenet] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn

import robaudit as ra
from robaudit.core.stats import mcnemar_exact


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


def audited_model(name: str | None) -> ra.Model:
    """The tests' small CNN, or a zoo model, trained here first if missing exactly as bench_strength.py trains
    it (the issue's scale: lite0, 3 epochs, 64 px, 2,000 training images)."""
    if name is None:
        return small_cnn()
    from bench_strength import TRAIN  # this folder is on sys.path when a benchmark runs as a script

    from robaudit.models.store import is_trained
    from robaudit.models.train import train_model

    if not is_trained(name):
        train_model(name, TRAIN, device="cpu", quiet=True)
    return ra.load_model(name)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--model", help="zoo name, e.g. skin_tf_efficientnet_lite0 (default: the tests' small CNN)")
    ap.add_argument("--data", default=None, help="task (default: the model's own, or pneumonia-mini)")
    ap.add_argument("--source", default="natural", help="natural (bundled photos) or imagenet (the data root's)")
    ap.add_argument("--budget", type=int, default=None, help="query budget (default: the device's)")
    ap.add_argument("--eval", type=int, default=None, help="test images (default: the whole split)")
    ap.add_argument("--parts", nargs="+", default=["query", "delivery"], choices=["query", "delivery"])
    ap.add_argument("--cells", nargs="+", default=["white-box", "query scores", "query labels"],
                    choices=["white-box", "query scores", "query labels"], help="the query part's cells")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="write every row here as it is measured")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = audited_model(args.model)
    data = args.data or (None if args.model else "pneumonia-mini")
    base = dict(source=args.source, norm="linf", zeta=0.04, controls=5,
                **({"eval_limit": args.eval} if args.eval else {}))
    cells = {"white-box": {}, "query scores": dict(access="query", query_budget=args.budget),
             "query labels": dict(access="query", query_output="labels", query_budget=args.budget)}
    rows = []

    def emit(row: dict) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.json:
            doc = {"model": args.model or "xray-cnn", "data": data, "settings": base, "rows": rows}
            with open(args.json, "w") as f:
                json.dump(doc, f, indent=1)

    for seed in args.seeds:
        if "query" in args.parts:
            for name, kw in cells.items():
                if name not in args.cells:
                    continue
                t = time.time()
                r = ra.uap(model, data, seed=seed, **base, **{k: v for k, v in kw.items() if v is not None})
                m, c = r.result.metrics, r.result.control
                emit(dict(cell=name, seed=seed, fooling=m.fooling_rate.value, ci=m.fooling_rate.ci,
                          noise=c.fooling_rate.value, noise_ci=c.fooling_rate.ci, p=r.result.comparison.p_value,
                          queries=r.result.attack.queries_used, budget=r.result.attack.query_budget,
                          seconds=round(time.time() - t, 1)))
        if "delivery" not in args.parts:
            continue
        # one plain v per seed (built at the model input, measured by the library as delivered through JPEG 75),
        # one EOT v per quality; every v delivered by hand to the same stored test images for the paired test
        plain = ra.uap(model, data, seed=seed, delivery="jpeg=75", **base)
        for q in (90, 75):
            t = time.time()
            eot = ra.uap(model, data, seed=seed, delivery=f"jpeg={q}", eot=True, **base)
            seconds = round(time.time() - t, 1)
            hits = {"plain": delivered_hits(model, plain, q), "eot": delivered_hits(model, eot, q)}
            # where the library measured the same v at this quality, the hand count must agree (up to a
            # borderline image or two: the library predicts through its own fused copy of the model)
            for kind, r in (("eot", eot), *((("plain", plain),) if q == 75 else ())):
                k, n = int(hits[kind].sum()), r.result.metrics.delivered.fooling_rate
                assert abs(k - n.k) <= max(2, n.n // 100), (kind, q, k, n)
            _, p, detail = mcnemar_exact(hits["eot"], hits["plain"])
            emit(dict(cell=f"delivery jpeg={q}", seed=seed, plain_at_input=plain.result.metrics.fooling_rate.value,
                      eot_at_input=eot.result.metrics.fooling_rate.value,
                      plain_delivered=float(hits["plain"].mean()), eot_delivered=float(hits["eot"].mean()),
                      eot_delivered_ci=eot.result.metrics.delivered.fooling_rate.ci,
                      noise_delivered=eot.result.metrics.delivered.control_fooling_rate,
                      paired_p=p, eot_only=detail["a_only"], plain_only=detail["b_only"],
                      stored=eot.result.metrics.delivered.stored_size, eot_seconds=seconds))


def delivered_hits(model: ra.Model, run, q: int):
    """Per-image outcomes of ``run.v`` delivered through 8-bit, JPEG ``q`` and the model's resize, on the run's
    evaluated test images at their stored size (``eval.delivery``'s own steps, at any quality)."""
    from robaudit.core.results import success_vector
    from robaudit.eval.delivery import delivered_predictions, stored_eval_images

    d, task = run.result.metrics.delivered, ra.load_data(run.result.data.name).task
    xs = stored_eval_images(task, run.spec, d.stored_size, run.v.shape[1])
    with torch.inference_mode():
        clean, adv = delivered_predictions(model.module, xs, [None, run.v], grey=bool(task.is_grey), q=q,
                                           input_size=d.input_size, channels=model.channels)
    return success_vector(clean, adv, None).astype(bool)

if __name__ == "__main__":
    main()
