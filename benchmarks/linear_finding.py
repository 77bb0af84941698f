"""Why was the frozen-feature ``linear`` model not vulnerable to photo UAPs? Probes over training replicates.

Reads an audit with replicates of ``<task>_<arch>``, ``_random`` and ``_linear`` (the ``quick`` recipe)
and, per replicate and configuration, measures on the same test images:

* the audit's white-box photo-UAP fooling rate and its noise control (is the finding real?);
* the median logit margin of the clean predictions (is the linear head simply more confident?);
* the relative shift of the penultimate (pooled) features under the model's own photo UAP,
  ``||f(x+v) - f(x)|| / ||f(x)||`` (does the UAP move the ImageNet features, and does the head ignore it?);
* the photo UAP built on the fine-tuned model of the same replicate, applied to this model (transfer);
* a stronger attacker on this model (``--method best``, 4x the recipe's photo budget, L-inf): is the
  finding a property of the attack's strength?

    python benchmarks/linear_finding.py reports/audit-quick/audit.json [--strong-budget 8000]

Writes ``benchmarks/results/linear_finding.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from robaudit.attacks.predict import predict
from robaudit.core.specs import UAPSpec
from robaudit.core.stats import mean_ci, paired_replicate_test
from robaudit.data import load_task
from robaudit.eval.run import run_uap
from robaudit.models import load_model
from robaudit.models.zoo import parse_zoo_name, split_replicate

OUT = Path(__file__).parent / "results" / "linear_finding.json"


def features(lm, x: torch.Tensor) -> torch.Tensor:
    """Pooled penultimate features (timm ``forward_features`` + ``forward_head(pre_logits=True)``)."""
    net, out = lm.module.net, []
    with torch.inference_mode():
        for i in range(0, len(x), 128):
            xb = (x[i:i + 128] - lm.module.mean) / lm.module.std
            out.append(net.forward_head(net.forward_features(xb), pre_logits=True))
    return torch.cat(out)


def margins(lm, x: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        logits = torch.cat([lm.module(x[i:i + 256]) for i in range(0, len(x), 256)])
    top2 = logits.topk(2, dim=1).values
    return (top2[:, 0] - top2[:, 1]).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("audit", type=Path)
    ap.add_argument("--norm", default="linf")
    ap.add_argument("--strong-budget", type=int, default=8000)
    ap.add_argument("--no-strong", action="store_true")
    args = ap.parse_args()
    doc = json.loads(args.audit.read_text())
    root = args.audit.parent
    cells = [c for c in doc["cells"] if c.get("pooled") is None and c["attack"]["source"] == "imagenet"
             and not c["attack"]["targeted"] and not c["attack"]["surrogate"] and c["attack"]["norm"] == args.norm]
    by = {c["model"]["name"]: c for c in cells}
    rows = []
    for name, c in sorted(by.items()):
        base, rep = split_replicate(name)
        recipe = parse_zoo_name(name)
        lm = load_model(name, device="cpu")
        size = lm.card.input_size
        spec = UAPSpec.model_validate_json((root / c["artifacts"]["cell_dir"] / "spec.json").read_text())
        task = load_task(lm.card.task, size=size)
        x, _ = task.tensors(spec.split, size=size, limit=spec.eval_limit, seed=spec.seed)
        v = torch.from_numpy(np.load(root / c["artifacts"]["perturbation"]))
        f0, f1 = features(lm, x), features(lm, (x + v).clamp(0, 1))
        shift = float(((f1 - f0).norm(dim=1) / f0.norm(dim=1).clamp_min(1e-8)).median())
        row = {"model": name, "config": recipe.transfer, "replicate": rep,
               "fooling": c["metrics"]["fooling_rate"]["value"],
               "control": c["control"]["fooling_rate"]["value"], "p": c["comparison"]["p_value"],
               "clean_accuracy": c["metrics"]["clean_accuracy"], "median_margin": float(np.median(margins(lm, x))),
               "feature_shift": shift}
        full = by.get(name.replace("_linear", "").replace("_random", "")) if recipe.transfer != "full" else None
        if full is not None:  # the fine-tuned model's photo UAP of the same replicate, on this model
            vf = torch.from_numpy(np.load(root / full["artifacts"]["perturbation"]))
            clean = predict(lm.module, x, batch_size=256, device=lm.device)
            row["transfer_from_full"] = float((predict(lm.module, x, vf, batch_size=256, device=lm.device)
                                               != clean).float().mean())
        if not args.no_strong:
            strong = spec.model_copy(update={"method": "best", "budget": args.strong_budget, "controls": 3})
            with tempfile.TemporaryDirectory() as tmp:
                res = run_uap(strong, out_dir=Path(tmp), quiet=True).result
            row["strong_fooling"] = res.metrics.fooling_rate.value
            row["strong_control"] = res.control.fooling_rate.value
        rows.append(row)
        print(json.dumps(row), flush=True)
    pooled = {}
    groups = defaultdict(list)
    for r in rows:
        groups[r["config"]].append(r)
    for cfg, rs in groups.items():
        rs.sort(key=lambda r: r["replicate"])
        pooled[cfg] = {k: {"mean": float(np.mean([r[k] for r in rs])), "ci": mean_ci([r[k] for r in rs]),
                           "values": [r[k] for r in rs]}
                       for k in rs[0] if k not in ("model", "config", "replicate", "p")}
        pooled[cfg]["uap_vs_control"] = paired_replicate_test([r["fooling"] for r in rs], [r["control"] for r in rs])
        if "strong_fooling" in rs[0]:
            pooled[cfg]["strong_vs_control"] = paired_replicate_test([r["strong_fooling"] for r in rs],
                                                                     [r["strong_control"] for r in rs])
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"audit": str(args.audit), "norm": args.norm, "rows": rows, "pooled": pooled},
                              indent=2, default=float) + "\n")
    keys = [k for k in ("fooling", "control", "strong_fooling", "transfer_from_full", "feature_shift",
                        "median_margin", "clean_accuracy") if k in rows[0] or any(k in r for r in rows)]
    print("\n| config | " + " | ".join(keys) + " | p UAP vs control (paired t) |")
    print("|---" * (len(keys) + 2) + "|")
    for cfg, p in pooled.items():
        cols = [(f"{p[k]['mean']:.3f} ({', '.join(f'{v:.2f}' for v in p[k]['values'])})" if k in p else "-")
                for k in keys]
        print(f"| {cfg} | " + " | ".join(cols) + f" | {p['uap_vs_control']['p_value']:.3g} |")
    print(f"\nwrote {OUT}")


if __name__ == "__main__":
    main()
