"""``robaudit report``: render a result or an audit as HTML, Markdown, PDF or JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

FORMAT_HELP = "html (self-contained, printable), md (pull-request summary), pdf (via headless Chromium) or json."


def report(
    result: Annotated[Path, typer.Argument(help="result.json from 'uap'/'attack', or the audit JSON from 'audit'.",
                                           show_default=False)],
    fmt: Annotated[str, typer.Option("--format", "-f", help=FORMAT_HELP)] = "html",
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="Output file ('-' for stdout, not for pdf; md appends to $GITHUB_STEP_SUMMARY). "
        "Default: report.<ext> next to RESULT (json: stdout).")] = None,
    title: Annotated[Optional[str], typer.Option(help="Report title (default: from the model names).")] = None,
    per_image: Annotated[bool, typer.Option("--per-image", help="Also write per-image.csv beside the report: every "
                                            "cell's predictions.csv in one file, a cell column first.")] = False,
) -> None:
    """Write a robustness report for a security or regulatory reviewer."""
    import sys

    from rich.markup import escape

    from robaudit.core.console import info, print_json
    from robaudit.core.errors import BadInput
    from robaudit.core.files import is_step_summary, preflight_file, write_failure
    from robaudit.grading import load_input
    from robaudit.reporting import (
        SUFFIX,
        build_report,
        bundle_predictions,
        check_formats,
        render,
        report_json,
        write_report,
    )

    (fmt,) = check_formats([fmt])
    rep = build_report(load_input(result), title=title)
    if per_image:
        target = out if out is not None and str(out) != "-" else result.parent
        folder = target if target.is_dir() or not target.suffix else target.parent
        bundle = folder / "per-image.csv"  # beside the report; never a run's own predictions.csv
        preflight_file(bundle, "--per-image")
        written, n = bundle_predictions(rep, bundle)
        info(f"wrote {escape(str(written))} (per-image records of {n} cell(s))")
    if out is None and fmt == "json":
        print_json(report_json(rep))
        return
    if out is not None and str(out) == "-":
        if fmt == "pdf":
            raise BadInput("a PDF cannot go to stdout", "pass --out FILE.pdf")
        sys.stdout.write(render(rep, fmt))
        sys.stdout.flush()
        return
    path = out if out is not None else result.parent / f"report{SUFFIX[fmt]}"
    if path.is_dir():
        path = path / f"report{SUFFIX[fmt]}"
    preflight_file(path, "--out")  # a parent that is a file, or no write access: one line, not a traceback
    try:
        if fmt == "md" and is_step_summary(path):
            with path.open("a", encoding="utf-8") as fh:
                fh.write(render(rep, "md"))
            written = path
        else:
            written = write_report(rep, fmt, path)
    except OSError as exc:
        raise write_failure(exc, path, "the report") from None
    info(f"[bold]{rep.severity.upper()}[/]: {escape(rep.verdict)}")
    info(f"wrote {escape(str(written))}")
