"""What the commands share: loading, default output folders, best-effort reports and console summaries.

Summaries go to stderr (rich), so ``--json`` output on stdout stays clean.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from robaudit.core.console import err, warn
from robaudit.core.errors import RobauditError
from robaudit.core.fmt import ci_text, pct
from robaudit.core.provenance import reports_root, run_stamp
from robaudit.core.results import Result
from robaudit.gating.verdict import GateResult
from robaudit.grading import AuditInput
from robaudit.reporting import write_reports


def default_out_dir(*parts: str) -> Path:
    """``reports/<stamp>-<part>-<part>...`` (``$ROBAUDIT_REPORTS`` instead of reports/), slashes made safe."""
    return reports_root() / "-".join([run_stamp(), *(p.replace("/", "_") for p in parts)])


def write_reports_best_effort(results: Result | AuditInput, out_dir: Path, kept: Path) -> dict[str, Path]:
    """HTML + Markdown reports in ``out_dir``; a report failure only warns (``kept`` holds the numbers).

    Returns ``{format: path}`` of the reports written (empty when none was), for the closing line."""
    try:
        return write_reports(results if isinstance(results, AuditInput) else [results], out_dir,
                             formats=("html", "md"))
    except (RobauditError, ImportError, OSError, ValueError) as exc:
        warn(f"report not written ({exc}); the result is in {kept}")
        return {}


def print_uap_summary(result: Result, out_dir: Path | None = None, reports: Iterable[Path] | None = None) -> None:
    """A table: UAP vs random control with intervals and the paired test, plus the files this run wrote.

    ``reports``: the reports written (``write_reports_best_effort``'s values). Without it, a report counts
    only if it is newer than the result.json just written: one an earlier run left (``--no-report``, a failed
    report) is never named as if this run had written it."""
    a, m = result.attack, result.metrics
    source = f"{a.budget} augmented views of {a.source}" if a.budget else f"{a.source} (n={a.source_n})"
    title = (f"{result.model.name} | {a.threat_model or 'uap'} | {a.method}/{a.mode or '-'} {a.norm} "
             f"zeta={a.zeta:.3%} eps={a.eps:.4g} | source {source}"
             + (f" on {a.surrogate}" if a.surrogate else "")
             + f" | {result.data.name} {result.data.split} n={result.data.n} | {'clip' if a.clip else 'no clip'}")
    t = Table(title=title, title_justify="left")
    for col in ("metric", "UAP", "95% CI", "random control (mean of draws)", "control CI"):
        t.add_column(col)
    c = result.control
    crit = result.harm.critical if result.harm is not None else None
    if crit is not None:  # the direction leads: how often the perturbation hides the disease
        r = crit.missed_disease
        t.add_row(f"missed {crit.name} (of {r.n} detected)", pct(r.value), ci_text(r.ci),
                  f"{pct(crit.control_missed_disease)} (median draw)" if crit.control_missed_disease is not None
                  else "", "")
        t.add_row(f"false {crit.name} alarms (of {crit.false_alarm.n})", pct(crit.false_alarm.value),
                  ci_text(crit.false_alarm.ci),
                  f"{pct(crit.control_false_alarm)} (median draw)" if crit.control_false_alarm is not None else "",
                  "")
    t.add_row("fooling rate", pct(m.fooling_rate.value), ci_text(m.fooling_rate.ci),
              pct(c.fooling_rate.value) if c else "", ci_text(c.fooling_rate.ci) if c else "")
    if m.targeted_success_rate is not None:
        ts = m.targeted_success_rate
        t.add_row(f"targeted success -> {a.target_name}", pct(ts.value), ci_text(ts.ci),
                  pct(c.targeted_success_rate.value) if c and c.targeted_success_rate else "",
                  ci_text(c.targeted_success_rate.ci) if c and c.targeted_success_rate else "")
        t.add_row("  clean rate of target", pct(ts.clean_rate), "", "", "")
    t.add_row("accuracy clean -> adversarial", f"{pct(m.clean_accuracy)} -> {pct(m.adv_accuracy)}", "", "", "")
    err.print(t)
    if a.selection is not None:
        s = a.selection
        ran = [c for c in a.candidates if c.skipped is None]
        err.print(f"v chosen on {s.n} {s.split} images: {pct(s.best_rate)} after {s.best_at} source images"
                  + (f" (last v {pct(s.final_rate)})" if s.final_rate is not None else "")
                  + (f"; strongest of {', '.join(f'{c.name}/{c.seed}' for c in ran)}" if len(ran) > 1 else ""))
    if _directed_not_raced(result):
        err.print(f"[dim]not raced: sgd toward each of the {len(result.model.classes)} classes (--toward-classes); on "
                  "the shared fundus photos it found 0.81 where sgd alone found 0.61 (benchmarks/README.md)[/]")
    if result.comparison:
        err.print(f"UAP vs control: {result.comparison.test}, p = {result.comparison.p_value:.3g}; "
                  f"built in {a.seconds:.1f} s on {a.device}")
    if out_dir is not None:
        res = out_dir / "result.json"
        if reports is None:
            reports = [p for p in (out_dir / "report.html", out_dir / "report.md") if _newer(p, res)]
        shown = [escape(str(res))] + [f"[bold]{escape(str(p))}[/]" for p in reports]
        err.print("[green]wrote[/] " + (", ".join(shown[:-1]) + " and " + shown[-1] if len(shown) > 1 else shown[0]),
                  soft_wrap=True)


def _directed_not_raced(result: Result) -> bool:
    """A non-targeted sgd or best on the audited model that did not race the class-directed builds it could have
    (the default races them on two-class models only)."""
    from robaudit.core.specs import TOWARD_MAX_CLASSES

    a = result.attack
    return (a.method in ("sgd", "best") and not a.targeted and not a.surrogate and a.selection is not None
            and not any(c.toward for c in a.candidates) and 2 <= len(result.model.classes) <= TOWARD_MAX_CLASSES)


def _newer(path: Path, than: Path) -> bool:
    """Whether ``path`` exists and was written no earlier than ``than``."""
    try:
        return path.stat().st_mtime_ns >= than.stat().st_mtime_ns
    except OSError:
        return False


def print_attack_summary(result, out_dir: Path | None = None) -> None:
    """A table on stderr: robust accuracy and success per epsilon with intervals, and the minimal norms."""
    a, m = result.attack, result.metrics
    title = (f"{result.model.name} | {a.method} {a.norm} via {a.backend}"
             f"{f' -> {a.target_name}' if a.targeted else ''} | {result.data.name} {result.data.split} "
             f"n={result.data.n} | clean accuracy {m.clean_accuracy:.1%}")
    t = Table(title=title, title_justify="left")
    for col in ("eps", "robust accuracy", "95% CI", "attack success", "95% CI", "attacked"):
        t.add_column(col, justify="right")
    for r in result.per_eps or []:
        ra, sr = r.robust_accuracy, r.success_rate
        t.add_row(f"{r.eps:.4g}", f"{ra.value:.1%}", f"[{ra.ci[0]:.1%}, {ra.ci[1]:.1%}]", f"{sr.value:.1%}",
                  f"[{sr.ci[0]:.1%}, {sr.ci[1]:.1%}]", str(sr.n))
    if result.per_eps:
        err.print(t)
    if result.min_norm is not None:
        mn = result.min_norm
        q = ", ".join(f"q{k}={v:.4g}" for k, v in mn.quantiles.items())
        err.print(f"minimal {a.norm} norm found: median {mn.median:.4g} ({q}); found for {mn.success_rate:.1%} of "
                  "the attacked images")
    elif a.mode == "minimal-norm":
        err.print("minimal-norm attack found no adversarial example")
    err.print(f"[dim]success = prediction {'is the target' if a.targeted else 'differs from the label'}, over images "
              f"correct when clean; {a.seconds:.1f} s on {a.device}[/]")
    if out_dir is not None:
        err.print(f"[green]wrote[/] {out_dir / 'result.json'}")


def print_audit_summary(doc: dict) -> None:
    """The audit's cells in one table (UAP vs control, Holm-adjusted p); constant columns go to the caption."""
    from robaudit.auditing.tables import cell_rows  # the audit layer pulls torch in: not for --help

    c = doc["counts"]
    rows = cell_rows(doc)
    # shown title -> CellRow field
    keys = {"model": "model", "init": "init", "transfer": "transfer", "threat model": "threat_model",
            "source": "source", "norm": "norm", "zeta": "zeta", "target": "target", "rate": "rate",
            "control": "control"}
    titles = list(keys)

    def cell(row, k: str) -> str:
        value = getattr(row, keys[k])
        if k in ("rate", "control", "zeta"):
            return f"{value:.1%}" if value is not None else ""
        return "-" if value is None else str(value)

    # columns equal in every row go to the caption; the model column only when init+transfer don't name it
    constant = [k for k in titles[:8] if len({cell(r, k) for r in rows}) == 1 and len(rows) > 1]
    shown = [k for k in titles if k not in constant]
    if "model" in shown and len({cell(r, "model") for r in rows}) == len({(cell(r, "init"), cell(r, "transfer"))
                                                                           for r in rows}):
        shown.remove("model")
        constant.insert(0, "model")
    table = Table(title=f"audit {doc['recipe']['name']}: {c['done']}/{c['cells']} cells ({c['cached']} cached, "
                  f"{c['failed']} failed) in {doc['seconds']:.0f} s; p-values Holm-corrected",
                  caption="; ".join(f"{k}: {cell(rows[0], k)}" if k != "model" else
                                    "model: " + ", ".join(sorted({cell(r, k) for r in rows})) for k in constant)
                  if rows else None)
    for col in [*shown, "p (holm)"]:
        table.add_column(col, overflow="fold", justify="right" if col in ("rate", "control", "p (holm)") else "left")
    for row in rows:
        table.add_row(*(cell(row, k) for k in shown), f"{row.p_adjusted:.2g}" if row.p_adjusted is not None else "")
    err.print(table)


def print_gate_table(result: GateResult, console=None) -> None:
    """A rich table of the checks and the verdict, on stderr."""
    console = console or err
    style = {"pass": "green", "fail": "bold red", "error": "bold yellow", "skipped": "dim"}
    table = Table(title=f"robaudit gate: {escape(result.policy.name)}", title_justify="left")
    for col in ("status", "rule", "subject", "result"):
        table.add_column(col, overflow="fold")
    for c in result.checks:
        table.add_row(f"[{style[c.status]}]{c.status}[/]", escape(c.rule), escape(c.subject), escape(c.message))
    console.print(table)
    n = result.counts()
    console.print(f"[{style.get(result.verdict, 'bold')}]{result.verdict.upper()}[/]: {n['pass']} passed, "
                  f"{n['fail']} failed, {n['error']} error(s), {n['skipped']} skipped")
