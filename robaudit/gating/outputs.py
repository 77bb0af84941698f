"""A gate's verdict for machines and people: JUnit XML and a Markdown summary."""

from __future__ import annotations

from pathlib import Path

from robaudit import __version__
from robaudit.core.fmt import ICONS, md, pct
from robaudit.gating.checks import Check
from robaudit.gating.junit import Case, write_junit_cases
from robaudit.gating.verdict import GateResult


def junit_cases(result: GateResult):
    """One JUnit test case per check."""
    status = {"pass": "passed", "fail": "failed", "error": "error", "skipped": "skipped"}
    cases = []
    for c in result.checks:
        detail = "\n".join(x for x in (c.message, f"rule: {c.rule} ({c.kind})", f"select: {c.selector}",
                                        c.description or "") if x)
        props = {"rule": c.rule, "kind": c.kind}
        if c.measured is not None:
            props["measured"] = f"{c.measured:.6g}"
        if c.threshold is not None:
            props["threshold"] = c.threshold if isinstance(c.threshold, str) else f"{c.threshold:.6g}"
            props["comparison"] = c.op
        cases.append(Case(name=c.subject, classname=f"robaudit.gate.{c.rule}", status=status[c.status],
                          message=c.message, detail=detail, properties=props))
    return cases


def write_junit(result: GateResult, path: str | Path) -> Path:
    return write_junit_cases(path, f"robaudit gate: {result.policy.name}", junit_cases(result),
                  {"verdict": result.verdict, "source": result.source or "", "robaudit_version": __version__})


def summary_markdown(result: GateResult) -> str:
    """The verdict as Markdown (for ``$GITHUB_STEP_SUMMARY`` or a pull-request comment)."""
    n = result.counts()
    lines = [f"## {ICONS[result.verdict]} robaudit gate: {result.verdict.upper()} ({md(result.policy.name)})", "",
             f"{n['pass']} passed, {n['fail']} failed, {n['error']} error(s), {n['skipped']} skipped"
             + (f" · result `{md(Path(result.source).name)}`" if result.source else ""), "",
             "| | rule | subject | measured | limit |", "|---|---|---|---|---|"]
    order = {"fail": 0, "error": 1, "pass": 2, "skipped": 3}
    for c in sorted(result.checks, key=lambda c: order[c.status]):
        icon = ICONS.get(c.status, "\u2796")
        lines.append(f"| {icon} | {md(c.rule)} | {md(c.subject)} | {md(c.message)} | "
                     f"{md(c.op)} {md(_fmt_threshold(c))} |")
    return "\n".join(lines) + "\n"


def _fmt_threshold(c: Check) -> str:
    if c.threshold is None:
        return ""
    if isinstance(c.threshold, str):
        return c.threshold
    if c.kind == "max_control_ratio":
        return f"{c.threshold:.2f}x"
    if c.kind == "require_cells":
        return f"{c.threshold:.0f}"
    return pct(c.threshold)
