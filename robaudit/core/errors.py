"""User-facing errors: one line, a hint, and an exit code.

Exit codes are an interface (CI scripts branch on them): 0 pass, 1 a gate rule failed (``robaudit.gating``),
2 bad input (:class:`BadInput`: fix the command or the files), 3 runtime failure (:class:`RuntimeFailure`,
and any unexpected exception, which ``robaudit.cli.main`` reports as one ``internal error:`` line with the
traceback in a log file), 130 interrupted (:class:`Interrupted`); 143 and 129 when the stop was SIGTERM or
SIGHUP (128 + the signal, as shells report it).

Every stop signal is Ctrl-C: :func:`stop_signals` turns SIGTERM and SIGHUP into a :class:`StopSignal`, a
KeyboardInterrupt, so each path that saves its work on Ctrl-C (the best perturbation, finished cells and
epochs, released locks, the resume hint) does so for ``timeout``, a CI cancellation or a closed terminal.
"""

from __future__ import annotations

import difflib
import signal
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager


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


class StopSignal(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised as Ctrl-C is (a KeyboardInterrupt) so the same code saves the work."""

    def __init__(self, signum: int):
        super().__init__()
        self.signum = signum


#: the stop signals handled like Ctrl-C (SIGHUP does not exist on Windows)
STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))
_received: list[int] = []  # the stop signals delivered during this invocation, first first


def received_signal() -> int | None:
    """The first stop signal delivered since :func:`stop_signals` was entered, or None."""
    return _received[0] if _received else None


def interrupt_exit_code() -> int:
    """128 + the stop signal that ended the run (130 for Ctrl-C or an interruption without a signal)."""
    return 128 + int(received_signal() or signal.SIGINT)


def _on_stop(signum: int, frame) -> None:
    again = bool(_received)
    _received.append(signum)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt  # as Python's own handler: a second Ctrl-C stops the save too
    if not again:
        raise StopSignal(signum)
    # a repeated SIGTERM/SIGHUP while the first one's work is being saved: let the save finish


@contextmanager
def stop_signals() -> Iterator[None]:
    """Within the block, SIGINT, SIGTERM and SIGHUP raise KeyboardInterrupt in the main thread (a signal
    that was ignored when robaudit started, as ``nohup`` ignores SIGHUP, stays ignored); the previous
    handlers come back after it. Outside the main thread (signals cannot be handled there) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    _received.clear()
    for sig in STOP_SIGNALS:
        old = signal.getsignal(sig)
        if old is signal.SIG_IGN:
            continue
        previous[sig] = old
        signal.signal(sig, _on_stop)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)


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
