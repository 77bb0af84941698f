"""User-facing errors: one line, a hint, and an exit code.

Exit codes are an interface (CI scripts branch on them): 0 pass, 1 a gate rule failed (``robaudit.gate``),
2 bad input (:class:`BadInput`: fix the command or the files), 3 runtime failure (:class:`RuntimeFailure`,
and any unexpected exception, which ``robaudit.cli.main`` reports as one ``internal error:`` line with the
traceback in a log file), 130 interrupted (:class:`Interrupted`).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class RobauditError(Exception):
    """Base class for errors shown to the user as one line (no traceback)."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class BadInput(RobauditError):
    """The user's input (names, files, options) is wrong: exit code 2."""

    exit_code = 2


class RuntimeFailure(RobauditError):
    """Something failed while running on valid input (e.g. NaN outputs): exit code 3."""

    exit_code = 3


class Interrupted(RobauditError):
    """The user pressed Ctrl-C; what was computed is saved and the message says how to resume."""

    exit_code = 130


class UnsafeCheckpoint(BadInput):
    """A checkpoint would execute pickled code when loaded."""


def unknown_name(kind: str, name: str, choices: Iterable[str], hint: str | None = None) -> BadInput:
    """A BadInput for an unknown name that suggests close matches."""
    choices = sorted(set(choices))
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    if close:
        msg = f"unknown {kind} {name!r}; did you mean {', '.join(repr(c) for c in close)}?"
    else:
        shown = ", ".join(choices[:12]) + (", ..." if len(choices) > 12 else "")
        msg = f"unknown {kind} {name!r}; choose one of: {shown}" if choices else f"unknown {kind} {name!r}"
    return BadInput(msg, hint)
