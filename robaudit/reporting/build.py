"""A report's content: every cell graded (see :mod:`robaudit.grading`), the verdict, and the audit extras."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robaudit import __version__
from robaudit.core.errors import BadInput
from robaudit.core.results import SCHEMA_VERSION, Result
from robaudit.grading import (
    PRIMARY,
    SEVERITIES,
    SEVERITY_RULE,
    Assessment,
    AuditInput,
    adjusted_pvalues,
    as_input,
    assess,
    cell_families,
    cell_label,
    severity_rank,
    source_kind,
)
from robaudit.reporting.facts import bill_of_materials, harm_line


@dataclass(kw_only=True)
class Report(AuditInput):
    """Everything the renderers need: the audit input (cells, tables, transfer, meta, run_dir) plus
    every cell's grade, the verdict and the title."""

    assessments: list[Assessment]
    severity: str
    verdict: str
    summary: str
    headline: int | None
    title: str = "robaudit robustness report"

    @property
    def uap_indices(self) -> list[int]:
        return [i for i, c in enumerate(self.cells) if c.attack.kind == "uap"]

    @property
    def per_sample_indices(self) -> list[int]:
        return [i for i, c in enumerate(self.cells) if c.attack.kind == "per-sample"]

    def counts(self) -> dict[str, int]:
        """Number of UAP cells per severity (worst first)."""
        out = {s: 0 for s in reversed(SEVERITIES)}
        for i in self.uap_indices:
            sev = self.assessments[i].severity
            if sev in out:
                out[sev] += 1
        return out


_VERDICTS = {
    "critical": "Vulnerable: a universal perturbation {verb} most diagnoses",
    "high": "Vulnerable: a universal perturbation {verb} a large share of diagnoses",
    "moderate": "Vulnerable: a universal perturbation {verb} a material share of diagnoses",
    "low": "Marginal: a small but real effect beyond random noise",
    "none": "Not shown vulnerable: no effect beyond random noise of the same size",
    "info": "No UAP cells: per-sample results only",
}


def build_report(results: Result | Sequence[Result] | AuditInput, *, tables: dict | None = None,
                 transfer: dict | None = None, meta: dict | None = None, run_dir: str | Path | None = None,
                 title: str | None = None) -> Report:
    """Grade every cell and pick the verdict: the worst UAP cell (ties: the larger pessimistic effect).

    With rows pooled over training replicates, the verdict is the worst pooled row (or cell outside the
    replication); the single replicates' cells are graded and shown, not used for the verdict."""
    ai = as_input(results, tables=tables, transfer=transfer, meta=meta)
    if not ai.cells:
        raise BadInput("nothing to report: the input has no result cells")
    adjusted = adjusted_pvalues(ai)
    assessments = [assess(c, p) for c, p in zip(ai.cells, adjusted, strict=True)]
    uap = [i for i, c in enumerate(ai.cells) if c.attack.kind == "uap" and assessments[i].severity != "info"]
    families = cell_families(ai.cells)
    # replicated training: the verdict reads the pooled rows (the primary family), not the luckiest single run
    uap = [i for i in uap if families[i] == PRIMARY]
    if uap:
        headline = max(uap, key=lambda i: (severity_rank(assessments[i].severity),
                                           assessments[i].effect_lower or 0.0, assessments[i].value or 0.0))
        severity = assessments[headline].severity
        h, cell = assessments[headline], ai.cells[headline]
        harm = harm_line(cell)  # the direction of the change leads where a critical class is declared
        summary = f"{cell_label(cell)}: " + (f"{harm}; " if harm else "") + \
            f"{h.measure} {h.value:.1%} [{h.ci[0]:.1%}, {h.ci[1]:.1%}]"
        if h.control is not None:
            summary += f" vs random control {h.control:.1%}"
        if h.p_value is not None:
            summary += f" (p={h.p_adjusted if h.p_adjusted is not None else h.p_value:.2g})"
    else:
        headline, severity = None, "info"
        rated = [(a, c) for a, c in zip(assessments, ai.cells, strict=True) if a.value is not None]
        if rated:
            a, c = max(rated, key=lambda ac: ac[0].value)
            summary = f"{cell_label(c)}: {a.measure} {a.value:.1%} [{a.ci[0]:.1%}, {a.ci[1]:.1%}]"
        else:
            summary = f"{len(ai.cells)} cell(s) without a UAP verdict"
    rd = Path(run_dir) if run_dir is not None else ai.run_dir
    models = sorted({c.model.name for c in ai.cells})
    default_title = f"robaudit robustness report: {', '.join(models[:3])}" + (" ..." if len(models) > 3 else "")
    targeted = headline is not None and ai.cells[headline].attack.targeted and "{verb}" in _VERDICTS[severity]
    verdict = _VERDICTS[severity].format(verb="steers" if targeted else "changes")
    if targeted:
        verdict += " to one chosen class"
    return Report(cells=list(ai.cells), tables=ai.tables or {}, transfer=ai.transfer, meta=ai.meta or {},
                  path=ai.path, kind=ai.kind, run_dir=rd, assessments=assessments, severity=severity,
                  verdict=verdict, summary=summary, headline=headline, title=title or default_title)


def report_json(report: Report) -> dict[str, Any]:
    """A machine-readable summary: verdict, severity rule and one finding per cell."""
    findings = []
    for cell, a in zip(report.cells, report.assessments, strict=True):
        findings.append({
            "cell": cell_label(cell), "model": cell.model.name, "kind": cell.attack.kind,
            "source": cell.attack.source, "source_kind": source_kind(cell), "norm": cell.attack.norm,
            "zeta": cell.attack.zeta, "targeted": cell.attack.targeted, "target": cell.attack.target,
            "severity": a.severity, "measure": a.measure, "value": a.value,
            "ci": list(a.ci) if a.ci else None, "baseline": a.baseline, "control": a.control,
            "control_ci": list(a.control_ci) if a.control_ci else None, "p_value": a.p_value,
            "p_adjusted": a.p_adjusted, "beyond_control": a.beyond_control, "effect_lower": a.effect_lower,
            "reason": a.reason, "replicate": cell.model.replicate,
            "pooled": cell.pooled.model_dump() if cell.pooled else None,
            "harm": cell.harm.model_dump() if cell.harm else None,
        })
    return {"kind": "robaudit-report", "robaudit_version": __version__, "result_schema": SCHEMA_VERSION,
            "title": report.title, "severity": report.severity, "verdict": report.verdict,
            "summary": report.summary, "headline": report.headline, "counts": report.counts(),
            "severity_rule": SEVERITY_RULE, "bill_of_materials": bill_of_materials(report.cells, report.meta),
            "findings": findings}
