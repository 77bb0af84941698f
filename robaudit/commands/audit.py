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
    from robaudit.auditing import load_recipe, run_audit
    from robaudit.commands._shared import print_audit_summary, write_reports_best_effort
    from robaudit.core.console import err, print_json
    from robaudit.core.errors import BadInput, Interrupted
    from robaudit.grading import load_input

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
    reports = {}
    if not no_report:
        reports = write_reports_best_effort(load_input(out_dir / "audit.json"), out_dir, out_dir / "audit.json")
    if json_out:
        print_json(doc)
        return
    print_audit_summary(doc)
    wrote = f" and [bold]{reports['html']}[/]" if "html" in reports else ""  # this run's report, never an old one
    err.print(f"[green]wrote[/] {out_dir / 'audit.json'}{wrote}")
