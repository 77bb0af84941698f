"""Robustness reports: one result or an audit's cells -> severity, findings, HTML / Markdown / PDF / JSON.

Severity rule (per UAP cell; the report's severity is the worst cell's):

* The measured rate ``m`` is the fooling rate (non-targeted) or the targeted success rate (targeted),
  with its confidence interval ``[m_lo, m_hi]``. For a targeted cell the baseline ``b`` is the
  fraction of clean images already predicted as the target; otherwise ``b = 0``.
* The UAP is *beyond control* when ``m_lo`` exceeds the upper end of the random-control interval
  (same norm, repeated draws) and, where a paired test is recorded, its p-value (Holm-adjusted over
  the cells of the report) is below 0.05. A cell that is not beyond control is ``none``: the
  perturbation does no more than random noise of the same size.
* Otherwise the grade is set by the pessimistic effect ``L = m_lo - b``: ``critical`` at L >= 0.50,
  ``high`` at L >= 0.25, ``moderate`` at L >= 0.10, ``low`` below. A cell without a control is
  graded on L alone and says so.
* Per-sample attacks (an attacker holding each image and the model's gradients) are a different
  threat and are reported as ``info``, beside the UAP verdict rather than in it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robaudit.errors import BadInput
from robaudit.results import SCHEMA_VERSION, Result

SEVERITIES = ("none", "low", "moderate", "high", "critical")
_RANK = {"info": -1, **{s: i for i, s in enumerate(SEVERITIES)}}
#: pessimistic-effect thresholds, highest first
THRESHOLDS = (("critical", 0.50), ("high", 0.25), ("moderate", 0.10))
ALPHA = 0.05
FORMATS = ("html", "md", "pdf", "json")
SUFFIX = {"html": ".html", "md": ".md", "pdf": ".pdf", "json": ".json"}

SEVERITY_RULE = (
    "A UAP cell is beyond control when the lower confidence bound of its rate (fooling rate, or targeted "
    "success for a targeted UAP) exceeds the upper end of the random-control interval at the same norm and "
    f"the paired test (Holm-adjusted over the report's cells) gives p < {ALPHA}. Cells not beyond control "
    "are 'none'. Otherwise the grade follows the pessimistic effect L = lower bound minus the clean rate of "
    "the target (0 for non-targeted): critical L >= 50%, high >= 25%, moderate >= 10%, low below. Without "
    "a control the grade uses L alone. Per-sample attacks are 'info' (a stronger attacker, reported beside "
    "the verdict)."
)

NATURAL_SOURCES = ("imagenet", "ilsvrc", "openimages", "open-images", "open_images", "natural", "skimage",
                   "coco", "photos", "places", "laion")


def severity_rank(severity: str) -> int:
    """Order of severities: info < none < low < moderate < high < critical."""
    return _RANK[severity]


@dataclass(frozen=True)
class Assessment:
    """How one cell is graded (see the module docstring for the rule)."""

    severity: str
    measure: str
    value: float | None = None
    ci: tuple[float, float] | None = None
    baseline: float = 0.0
    control: float | None = None
    control_ci: tuple[float, float] | None = None
    p_value: float | None = None
    p_adjusted: float | None = None
    beyond_control: bool | None = None
    effect_lower: float | None = None
    reason: str = ""

    @property
    def excess(self) -> float | None:
        """Measured rate minus the control's mean rate."""
        if self.value is None or self.control is None:
            return None
        return self.value - self.control


@dataclass
class AuditInput:
    """What a report or a gate reads: result cells, plus an audit's derived tables and transfer matrix."""

    cells: list[Result]
    tables: dict[str, Any] = field(default_factory=dict)
    transfer: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    kind: str = "result"

    @property
    def run_dir(self) -> Path | None:
        return self.path.parent if self.path is not None else None


@dataclass
class Report:
    """Everything the renderers need: the cells, their grades, the verdict and the audit extras."""

    cells: list[Result]
    assessments: list[Assessment]
    severity: str
    verdict: str
    summary: str
    headline: int | None
    tables: dict[str, Any] = field(default_factory=dict)
    transfer: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    run_dir: Path | None = None
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


# ---------------------------------------------------------------------------------------------- input


def _validate_cell(raw: Any, where: str) -> Result:
    from pydantic import ValidationError

    try:
        return Result.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        raise BadInput(f"{where} does not match result schema {SCHEMA_VERSION}: {loc}: {first['msg']}") from None


def load_input(path: str | Path) -> AuditInput:
    """Read a result.json (one ``Result``), an audit JSON (``{"kind": "audit", "cells": [...]}``) or a
    JSON list of results. Raises BadInput with a one-line reason."""
    from robaudit.results import load_result

    p = Path(path)
    if not p.is_file():
        raise BadInput(f"result file {str(p)!r} does not exist", "pass the result.json or audit.json a run wrote")
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BadInput(f"result file {str(p)!r} is not valid JSON: {exc}") from None
    if isinstance(raw, list):
        cells = [_validate_cell(c, f"{str(p)!r} item {i}") for i, c in enumerate(raw)]
        return AuditInput(cells=cells, path=p, kind="list")
    if isinstance(raw, dict) and raw.get("kind") == "audit":
        cells_raw = raw.get("cells")
        if not isinstance(cells_raw, list):
            raise BadInput(f"audit file {str(p)!r} has no 'cells' list")
        cells = [_validate_cell(c, f"audit file {str(p)!r} cell {i}") for i, c in enumerate(cells_raw)]
        tables = raw.get("tables") if isinstance(raw.get("tables"), dict) else {}
        transfer = raw.get("transfer") if isinstance(raw.get("transfer"), dict) else None
        meta = {k: v for k, v in raw.items() if k not in ("cells", "tables", "transfer")}
        return AuditInput(cells=cells, tables=tables, transfer=transfer, meta=meta, path=p, kind="audit")
    if isinstance(raw, dict) and "kind" in raw and "attack" not in raw:
        raise BadInput(f"{str(p)!r} is a {raw['kind']!r} document, not a result or an audit")
    return AuditInput(cells=[load_result(p)], path=p, kind="result")


def as_input(results: Result | Sequence[Result] | AuditInput, **extras: Any) -> AuditInput:
    """Normalise one Result, a list of Results or an AuditInput (keyword extras fill empty fields)."""
    if isinstance(results, AuditInput):
        ai = results
    elif isinstance(results, Result):
        ai = AuditInput(cells=[results])
    else:
        cells = list(results)
        bad = [type(c).__name__ for c in cells if not isinstance(c, Result)]
        if bad:
            raise TypeError(f"expected Result objects, got {bad[0]}")
        ai = AuditInput(cells=cells, kind="list")
    for key in ("tables", "transfer", "meta"):
        if extras.get(key) and not getattr(ai, key):
            setattr(ai, key, extras[key])
    return ai


# ------------------------------------------------------------------------------------------ grading


def source_kind(result: Result) -> str:
    """'natural' (photos: ImageNet, Open Images, ...), 'task' (the task's own images) or 'other'."""
    src = (result.attack.source or "").lower()
    if not src:
        return "other"
    data = result.data.name.lower()
    if data and (src == data or src.startswith(data + ":") or src.startswith(data + "/")
                 or (data in src and "train" in src)):
        return "task"
    if src in ("train", "training", "task", "task-train"):
        return "task"
    if any(name in src for name in NATURAL_SOURCES):
        return "natural"
    return "other"


def cell_label(result: Result) -> str:
    """A short human label for one cell: model, source, norm, zeta/eps, method, target."""
    a = result.attack
    parts = [result.model.name]
    if a.kind == "uap":
        parts.append(a.source or "unknown source")
    parts.append(a.norm.upper() if a.norm == "l2" else "Linf")
    if a.zeta is not None:
        parts.append(f"zeta={a.zeta * 100:g}%")
    elif isinstance(a.eps, (int, float)):
        parts.append(f"eps={a.eps:.4g}")
    parts.append(a.method)
    if a.targeted:
        parts.append(f"\u2192 {a.target_name or a.target}")
    return " / ".join(str(p) for p in parts)


def _grade(effect: float) -> str:
    for name, threshold in THRESHOLDS:
        if effect >= threshold:
            return name
    return "low"


def assess(result: Result, p_adjusted: float | None = None) -> Assessment:
    """Grade one cell with the documented severity rule (``p_adjusted`` overrides the raw p-value)."""
    a = result.attack
    if a.kind == "per-sample":
        rows = result.per_eps or []
        if rows:
            top = max(rows, key=lambda r: r.eps)
            return Assessment("info", f"per-sample success at eps={top.eps:.4g}", top.success_rate.value,
                              tuple(top.success_rate.ci), reason="per-sample attack (attacker holds each image)")
        return Assessment("info", "per-sample", reason="per-sample attack without per-epsilon rows")
    m = result.metrics
    if m is None:
        return Assessment("info", "fooling rate", reason="no metrics recorded for this cell")
    if a.targeted and m.targeted_success_rate is not None:
        rate, baseline, measure = m.targeted_success_rate, m.targeted_success_rate.clean_rate, "targeted success"
        ctrl = result.control.targeted_success_rate if result.control else None
    else:
        rate, baseline, measure = m.fooling_rate, 0.0, "fooling rate"
        ctrl = result.control.fooling_rate if result.control else None
    lo, hi = float(rate.ci[0]), float(rate.ci[1])
    p_raw = result.comparison.p_value if result.comparison else None
    p = p_adjusted if p_adjusted is not None else p_raw
    effect = max(0.0, lo - baseline)
    common = dict(measure=measure, value=float(rate.value), ci=(lo, hi), baseline=float(baseline),
                  p_value=p_raw, p_adjusted=p_adjusted, effect_lower=effect)
    if ctrl is None:
        sev = _grade(effect)
        return Assessment(sev, **common, reason=f"no random control: graded on the lower bound alone "
                          f"({effect:.1%} beyond baseline)")
    c_hi = float(ctrl.ci[1])
    beyond = lo > c_hi and (p is None or p < ALPHA)
    common.update(control=float(ctrl.value), control_ci=(float(ctrl.ci[0]), c_hi), beyond_control=beyond)
    if not beyond:
        why = (f"lower bound {lo:.1%} does not exceed the control's upper bound {c_hi:.1%}" if lo <= c_hi
               else f"paired test not significant (p={p:.3g})")
        return Assessment("none", **common, reason=f"no effect beyond random noise: {why}")
    sev = _grade(effect)
    base = f" minus clean rate {baseline:.1%}" if baseline else ""
    return Assessment(sev, **common, reason=f"beyond control; pessimistic effect {effect:.1%} (lower bound "
                      f"{lo:.1%}{base}) vs control upper bound {c_hi:.1%}")


def _adjusted_pvalues(cells: Sequence[Result]) -> list[float | None]:
    idx = [i for i, c in enumerate(cells) if c.attack.kind == "uap" and c.comparison is not None]
    out: list[float | None] = [None] * len(cells)
    if len(idx) < 2:
        return out
    from robaudit.eval.stats import adjust_pvalues

    for i, p in zip(idx, adjust_pvalues([cells[i].comparison.p_value for i in idx]), strict=True):
        out[i] = p
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
    """Grade every cell and pick the verdict: the worst UAP cell (ties: the larger pessimistic effect)."""
    ai = as_input(results, tables=tables, transfer=transfer, meta=meta)
    if not ai.cells:
        raise BadInput("nothing to report: the input has no result cells")
    adjusted = _adjusted_pvalues(ai.cells)
    assessments = [assess(c, p) for c, p in zip(ai.cells, adjusted, strict=True)]
    uap = [i for i, c in enumerate(ai.cells) if c.attack.kind == "uap" and assessments[i].severity != "info"]
    if uap:
        headline = max(uap, key=lambda i: (severity_rank(assessments[i].severity),
                                           assessments[i].effect_lower or 0.0, assessments[i].value or 0.0))
        severity = assessments[headline].severity
        h, cell = assessments[headline], ai.cells[headline]
        summary = f"{cell_label(cell)}: {h.measure} {h.value:.1%} [{h.ci[0]:.1%}, {h.ci[1]:.1%}]"
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
    return Report(cells=list(ai.cells), assessments=assessments, severity=severity, verdict=verdict,
                  summary=summary, headline=headline, tables=ai.tables or {}, transfer=ai.transfer,
                  meta=ai.meta or {}, run_dir=rd, title=title or default_title)


# ------------------------------------------------------------------------------------------- output


def report_json(report: Report) -> dict[str, Any]:
    """A machine-readable summary: verdict, severity rule and one finding per cell."""
    from robaudit import __version__

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
            "reason": a.reason,
        })
    return {"kind": "robaudit-report", "robaudit_version": __version__, "result_schema": SCHEMA_VERSION,
            "title": report.title, "severity": report.severity, "verdict": report.verdict,
            "summary": report.summary, "headline": report.headline, "counts": report.counts(),
            "severity_rule": SEVERITY_RULE, "findings": findings}


def check_formats(formats: Sequence[str]) -> list[str]:
    """Canonical format names (md for markdown), deduplicated; BadInput for unknown ones."""
    out = []
    for f in formats:
        f = {"markdown": "md", "htm": "html"}.get(f.lower(), f.lower())
        if f not in FORMATS:
            raise BadInput(f"unknown report format {f!r}", f"choose from {', '.join(FORMATS)}")
        if f not in out:
            out.append(f)
    return out


def render(report: Report, fmt: str) -> str:
    """The report as text in ``fmt`` (html, md or json; PDF is a file, see :func:`write_reports`)."""
    (fmt,) = check_formats([fmt])
    if fmt == "html":
        from robaudit.report.html import render_html

        return render_html(report)
    if fmt == "md":
        from robaudit.report.markdown import render_markdown

        return render_markdown(report)
    if fmt == "json":
        return json.dumps(report_json(report), indent=2, default=str) + "\n"
    raise BadInput("a PDF report is a file, not text", "use write_reports(..., formats=('pdf',))")


def write_report(report: Report, fmt: str, path: str | Path) -> Path:
    """Write one format to ``path`` (PDF goes through headless Chromium)."""
    (fmt,) = check_formats([fmt])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "pdf":
        from robaudit.report.pdf import html_to_pdf, require_chromium

        require_chromium()
        return html_to_pdf(render(report, "html"), path)
    path.write_text(render(report, fmt), encoding="utf-8")
    return path


def write_reports(results: Result | Sequence[Result] | AuditInput | Report, out_dir: str | Path,
                  formats: Sequence[str] = ("html", "md"), *, basename: str = "report",
                  run_dir: str | Path | None = None, tables: dict | None = None, transfer: dict | None = None,
                  title: str | None = None) -> dict[str, Path]:
    """Write ``<out_dir>/<basename>.<ext>`` for each format; returns ``{format: path}``.

    ``run_dir`` is where the cells' artifacts (``uap.npy``, ``examples.png``) live; it defaults to
    ``out_dir``, which is what the ``uap`` and ``audit`` commands want.
    """
    fmts = check_formats(formats)
    if "pdf" in fmts:
        from robaudit.report.pdf import require_chromium

        require_chromium()
    out = Path(out_dir)
    if isinstance(results, Report):
        report = results
    else:
        report = build_report(results, tables=tables, transfer=transfer, title=title,
                              run_dir=run_dir if run_dir is not None else out)
    written: dict[str, Path] = {}
    html_text: str | None = None
    for fmt in fmts:
        path = out / f"{basename}{SUFFIX[fmt]}"
        out.mkdir(parents=True, exist_ok=True)
        if fmt in ("html", "pdf"):
            if html_text is None:
                html_text = render(report, "html")
            if fmt == "html":
                path.write_text(html_text, encoding="utf-8")
            else:
                from robaudit.report.pdf import html_to_pdf

                html_to_pdf(html_text, path)
        else:
            path.write_text(render(report, fmt), encoding="utf-8")
        written[fmt] = path
    return written


def is_step_summary(path: str | Path) -> bool:
    """Whether ``path`` is GitHub's ``$GITHUB_STEP_SUMMARY`` (written by appending, never overwritten)."""
    import os

    step = os.environ.get("GITHUB_STEP_SUMMARY")
    return bool(step) and Path(path).resolve() == Path(step).resolve()


__all__ = [
    "ALPHA", "FORMATS", "SEVERITIES", "SEVERITY_RULE", "SUFFIX", "Assessment", "AuditInput", "Report", "as_input",
    "assess", "build_report", "cell_label", "check_formats", "is_step_summary", "load_input", "render",
    "report_json", "severity_rank", "source_kind", "write_report", "write_reports",
]
