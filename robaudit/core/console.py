"""One output sink: rich for people on stderr, plain JSON for machines on stdout."""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from typing import Any

from rich.console import Console

#: progress, tables and hints go to stderr so stdout stays clean for --json; logs (not a terminal, no
#: COLUMNS) get 120 columns instead of rich's 80, so model names and timings are not folded
err = Console(stderr=True, highlight=False,
              width=None if sys.stderr.isatty() or os.environ.get("COLUMNS") else 120)


def print_json(obj: Any) -> None:
    """Print a JSON document (and nothing else) on stdout."""
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
    sys.stdout.flush()


def info(message: str) -> None:
    err.print(message)


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {message}")


def progress(transient: bool = False, disable: bool = False):
    """A rich Progress on stderr with a bar, counts, rate and time remaining."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=transient,
        disable=disable,
    )


@contextmanager
def task_progress(description: str, total: int | None, disable: bool = False):
    """Context manager yielding ``advance(n=1, status="")`` for one progress bar."""
    with progress(disable=disable) as prog:
        task = prog.add_task(description, total=total, status="")

        def advance(n: int = 1, status: str | None = None) -> None:
            if status is None:
                prog.advance(task, n)
            else:
                prog.update(task, advance=n, status=status)

        yield advance
