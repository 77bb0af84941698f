"""The report's mitigation figure: UAP rates before/after hardening per cell, with the accuracy cost beside.

The before/after table itself is an audit table (``8. Mitigation ...``) that every report renders; this
adds the figure when the document has a ``mitigation`` section (``robaudit harden``, ``harden = true``).
"""

from __future__ import annotations

import numpy as np

from robaudit.reporting.build import Report
from robaudit.reporting.plots import Plot, _figure, _pct_axis, _png, _text


def mitigation_plot(report: Report) -> Plot | None:
    """Grouped bars: each re-audited UAP cell before and after hardening (95 % CI), then clean and balanced
    accuracy; significant reductions (McNemar, Holm) are starred."""
    section = report.meta.get("mitigation") if isinstance(report.meta, dict) else None
    pairs = [p for p in (section or {}).get("pairs", []) if p.get("accuracy")]
    if not pairs:
        return None
    fig, axes = _figure(7.5 * len(pairs), 3.6, ncols=len(pairs))
    for ax, pair in zip(axes, pairs, strict=True):
        rows = [r for r in pair["cells"] if "reduction" in r]
        labels = [r["threat"] + (f"->{r['target']}" if r["target"] else "") for r in rows] + ["clean acc",
                                                                                            "balanced acc"]
        acc = pair["accuracy"]
        before = [r["before"]["value"] for r in rows] + [acc["clean"]["before"], acc["balanced"]["before"]]
        after = [r["after"]["value"] for r in rows] + [acc["clean"]["after"], acc["balanced"]["after"]]
        err_b = [[r["before"]["value"] - r["before"]["ci"][0] for r in rows] + [0, 0],
                 [r["before"]["ci"][1] - r["before"]["value"] for r in rows] + [0, 0]]
        err_a = [[r["after"]["value"] - r["after"]["ci"][0] for r in rows] + [0, 0],
                 [r["after"]["ci"][1] - r["after"]["value"] for r in rows] + [0, 0]]
        x = np.arange(len(labels))
        ax.bar(x - 0.2, before, 0.4, yerr=err_b, label=_text(pair["original"], 40), color="#d62728", capsize=2)
        ax.bar(x + 0.2, after, 0.4, yerr=err_a, label=_text(pair["hardened"], 40), color="#1f77b4", capsize=2)
        for i, r in enumerate(rows):
            if r.get("significant"):
                ax.text(i, max(before[i], after[i]) + 0.05, "*", ha="center")
        ax.axvline(len(rows) - 0.5, color="grey", lw=0.8, ls=":")
        ax.set_xticks(x, labels, fontsize=7, rotation=20)
        _pct_axis(ax)
        ax.set_title(_text(pair["verdict"], 80), fontsize=8)
        ax.legend(fontsize=7)
    return Plot("mitigation", "Mitigation: before and after hardening",
                "UAP fooling rate (targeted success for targeted cells) of the original and the hardened model, "
                "each UAP rebuilt against the model it is measured on, on the same test images (95% CI; * = "
                "significant drop, exact McNemar, Holm); right of the dotted line: clean and balanced accuracy.",
                _png(fig))


def mitigation_plots(report: Report) -> list[Plot]:
    p = mitigation_plot(report)
    return [p] if p is not None else []
