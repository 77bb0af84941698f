"""``robaudit audit``: the full experiment matrix of a recipe, cached per cell and resumable."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def audit(
    recipe: Annotated[str, typer.Option("--recipe", "-r", help="Packaged recipe name (quick, paper) or a TOML path.")]
    = "quick",
    out: Annotated[Optional[Path], typer.Option(help="Audit folder (default reports/audit-<recipe>).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Reuse finished cells in --out (crash or Ctrl-C).")]
    = False,
    train_missing: Annotated[bool, typer.Option("--train-missing", help="Train zoo models the recipe needs.")]
    = False,
    executor: Annotated[str, typer.Option(help="local, or ray (pip install 'robaudit\\[ray]').")] = "local",
    address: Annotated[Optional[str], typer.Option(help="Ray cluster address (with --executor ray).")] = None,
    device: Annotated[Optional[str], typer.Option(help="Override the recipe's device.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the audit JSON on stdout, nothing else.")] = False,
    no_report: Annotated[bool, typer.Option("--no-report", help="Skip the HTML/Markdown reports.")] = False,
) -> None:
    """Run every cell of a recipe (models x sources x norms x zetas x methods x targets) with statistics."""
    from robaudit.console import err, print_json, warn
    from robaudit.errors import BadInput, Interrupted
    from robaudit.eval.audit import run_audit
    from robaudit.eval.recipes import load_recipe

    if executor not in ("local", "ray"):
        raise BadInput(f"unknown executor {executor!r}", "choose local or ray")
    rec, text = load_recipe(recipe)
    if device:
        rec = rec.model_copy(update={"device": device})
    out_dir = out or Path("reports") / f"audit-{rec.name}"
    try:
        doc = run_audit(rec, out_dir, recipe_text=text, resume=resume, train_missing=train_missing, quiet=json_out,
                        executor=executor, address=address)
    except (KeyboardInterrupt, Interrupted):
        raise Interrupted(f"interrupted: finished cells are saved in {out_dir / 'cells'}; re-run with "
                          f"--resume --out {out_dir} to continue") from None
    if not no_report:
        try:
            from robaudit.report import load_input, write_reports

            write_reports(load_input(out_dir / "audit.json"), out_dir, formats=("html", "md"))
        except Exception as exc:  # a report failure never loses the audit
            warn(f"report not written ({exc}); the audit is in {out_dir / 'audit.json'}")
    if json_out:
        print_json(doc)
        return
    _print_summary(doc, out_dir)
    err.print(f"[green]wrote[/] {out_dir / 'audit.json'} and [bold]{out_dir / 'report.html'}[/]")


def _print_summary(doc: dict, out_dir: Path) -> None:
    from rich.table import Table

    from robaudit.console import err

    c = doc["counts"]
    t = doc["tables"]["1. UAP vs random control (every cell)"]
    cols = t["columns"]
    keys = ("model", "init", "transfer", "source", "norm", "zeta", "target", "rate", "control")
    idx = {name: cols.index(name) for name in keys}

    def cell(row, k):
        value = row[idx[k]]
        if k in ("rate", "control", "zeta"):
            return f"{value:.1%}" if value is not None else ""
        return "-" if value is None else str(value)

    rows = t["rows"]
    # columns equal in every row go to the caption; the model column only when init+transfer don't name it
    constant = [k for k in keys[:7] if len({cell(r, k) for r in rows}) == 1 and len(rows) > 1]
    shown = [k for k in keys if k not in constant]
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
        table.add_row(*(cell(row, k) for k in shown), f"{row[-1]:.2g}" if row[-1] is not None else "")
    err.print(table)
