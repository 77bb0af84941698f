"""How many training replicates does the published ImageNet-vs-random-init comparison need?

Reads an audit with replicates (e.g. ``robaudit audit --recipe quick``: 3 replicates), takes the measured
between-replicate SD of the paired differences (ImageNet full minus the other configuration, per
replicate), and solves a paired t-test's sample size (statsmodels ``TTestPower``, two-sided, power 0.8)
for several true differences, at alpha 0.05 (one comparison) and at the strictest Holm step of the
``paper`` recipe's family. Writes ``benchmarks/results/replicate_power.json`` and prints a Markdown table.

    python benchmarks/replicate_power.py reports/audit-quick/audit.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from robaudit.auditing import load_recipe
from robaudit.core.stats import replicates_for_power
from robaudit.data import load_task

DIFFERENCES = (0.05, 0.10, 0.20)
OUT = Path(__file__).parent / "results" / "replicate_power.json"


def paper_family_size() -> int:
    """Tests in the primary (verdict) family of a replicated ``paper`` audit: one pooled row per cell of
    the recipe and one pooled comparison (ImageNet full vs random init) per matched pair of cells. The
    single replicates' tests form their own family (robaudit.grading), so the count does not grow with R."""
    recipe, _ = load_recipe("paper")
    recipe = recipe.model_copy(update={"replicates": 1})
    n_classes: dict[str, int] = {}

    def classes_of(name: str) -> list[str]:
        task = name.split("_")[0].replace("-", ":", 1)
        if task not in n_classes:
            n_classes[task] = load_task(task).num_classes
        return list(range(n_classes[task]))

    cells = len(recipe.cells(classes_of))
    return cells + cells // 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("audit", type=Path)
    ap.add_argument("--power", type=float, default=0.8)
    args = ap.parse_args()
    doc = json.loads(args.audit.read_text())
    comparisons = doc.get("replicates", {}).get("comparisons") or []
    if not comparisons:
        raise SystemExit(f"{args.audit} has no comparisons pooled over replicates (run a recipe with replicates >= 2)")
    rows = []
    for c in comparisons:
        d = np.asarray(c["base_rates"]) - np.asarray(c["other_rates"])
        rows.append({"base": c["base"], "other": c["other"], "source": c["source"], "norm": c["norm"],
                     "target": c["target"], "surrogate": c["surrogate"], "differences": d.tolist(),
                     "mean_difference": float(d.mean()), "sd": float(d.std(ddof=1)), "replicates": len(d)})
    random_init = [r for r in rows if r["other"].endswith("_random")]
    sds = [r["sd"] for r in random_init] or [r["sd"] for r in rows]
    sd = float(np.median(sds))
    sd_max = float(np.max(sds))
    out: dict = {"audit": str(args.audit), "power": args.power, "comparisons": rows, "sd_median": sd,
                 "sd_max": sd_max, "needed": []}
    m = paper_family_size()
    out["paper_primary_family"] = m
    for diff in DIFFERENCES:
        out["needed"].append({
            "difference": diff,
            "alpha_0.05": {"median_sd": replicates_for_power(diff, sd, 0.05, args.power),
                           "max_sd": replicates_for_power(diff, sd_max, 0.05, args.power)},
            "alpha_holm_strictest": {"median_sd": replicates_for_power(diff, sd, 0.05 / m, args.power),
                                     "max_sd": replicates_for_power(diff, sd_max, 0.05 / m, args.power)}})
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, indent=2) + "\n")
    print(f"between-replicate SD of the ImageNet-full minus random-init difference: median {sd:.3f}, "
          f"max {sd_max:.3f} over {len(sds)} comparisons\n")
    print(f"| true difference | alpha 0.05: median SD / max SD | strictest Holm step (alpha 0.05/{m}): median / max |")
    print("|---:|---:|---:|")
    for n in out["needed"]:
        a, h = n["alpha_0.05"], n["alpha_holm_strictest"]
        print(f"| {n['difference']:.0%} | {a['median_sd']} / {a['max_sd']} | {h['median_sd']} / {h['max_sd']} |")
    print(f"\nwrote {OUT}")


if __name__ == "__main__":
    main()
