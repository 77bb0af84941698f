"""Rich console summaries of results (stderr)."""

from __future__ import annotations

from pathlib import Path

from robaudit.results import Result


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.1f}%"


def _ci(ci) -> str:
    return f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def print_uap_summary(result: Result, out_dir: Path | None = None) -> None:
    """A table: UAP vs random control with intervals and the paired test, plus where files went."""
    from rich.table import Table

    from robaudit.console import err

    a, m = result.attack, result.metrics
    title = (f"{result.model.name} | {a.method}/{a.mode or '-'} {a.norm} zeta={a.zeta:.3%} eps={a.eps:.4g} | "
             f"source {a.source} (n={a.source_n}) | {result.data.name} {result.data.split} n={result.data.n}"
             f" | {'clip' if a.clip else 'no clip'}")
    t = Table(title=title, title_justify="left")
    for col in ("metric", "UAP", "95% CI", "random control (mean of draws)", "control CI"):
        t.add_column(col)
    c = result.control
    t.add_row("fooling rate", _pct(m.fooling_rate.value), _ci(m.fooling_rate.ci),
              _pct(c.fooling_rate.value) if c else "", _ci(c.fooling_rate.ci) if c else "")
    if m.targeted_success_rate is not None:
        ts = m.targeted_success_rate
        t.add_row(f"targeted success -> {a.target_name}", _pct(ts.value), _ci(ts.ci),
                  _pct(c.targeted_success_rate.value) if c and c.targeted_success_rate else "",
                  _ci(c.targeted_success_rate.ci) if c and c.targeted_success_rate else "")
        t.add_row("  clean rate of target", _pct(ts.clean_rate), "", "", "")
    t.add_row("accuracy clean -> adversarial", f"{_pct(m.clean_accuracy)} -> {_pct(m.adv_accuracy)}", "", "", "")
    err.print(t)
    if result.comparison:
        err.print(f"UAP vs control: {result.comparison.test}, p = {result.comparison.p_value:.3g}; "
                  f"built in {a.seconds:.1f} s on {a.device}")
    if out_dir is not None:
        html = out_dir / "report.html"
        err.print(f"[green]wrote[/] {out_dir / 'result.json'}" + (f" and [bold]{html}[/]" if html.exists() else ""))
