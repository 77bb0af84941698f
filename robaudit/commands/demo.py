"""``robaudit demo``: the offline end-to-end audit behind the README's first command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def demo(
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("reports/demo"),
    small: Annotated[bool, typer.Option("--small", help="A reduced setting (CI smoke test).")] = False,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda or mps.")] = None,
    data: Annotated[Optional[str], typer.Option(
        help="A task of your data root instead of the embedded chest X-rays (pneumonia-mini).")] = None,
) -> None:
    """Fine-tune a model and train its random-init twin on real chest X-rays (embedded, offline), attack both
    with natural-photo UAPs (and the fine-tune targeted to 'normal'), and write the reports."""
    from robaudit.commands._shared import print_audit_summary
    from robaudit.core.console import err
    from robaudit.demo import run_demo

    doc, choice, paths = run_demo(out, small=small, device=device, data=data)
    print_audit_summary(doc)
    err.print(f"[bold]data used:[/] {choice.why}")
    err.print(f"[green]report:[/] [bold]{paths.get('html')}[/]  (Markdown: {paths.get('md')})")
