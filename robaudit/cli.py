"""The ``robaudit`` command: a thin Typer layer over the library.

Each command lives in ``robaudit/commands/<name>.py`` and imports heavy libraries (torch, timm,
attack libraries) inside its function, so ``robaudit --help`` stays instant. One place, ``main``,
turns user-facing errors into one line on stderr and an exit code.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from robaudit import __version__
from robaudit.commands import attack as attack_cmd
from robaudit.commands import audit as audit_cmd
from robaudit.commands import data as data_cmd
from robaudit.commands import demo as demo_cmd
from robaudit.commands import gate as gate_cmd
from robaudit.commands import harden as harden_cmd
from robaudit.commands import models as models_cmd
from robaudit.commands import report as report_cmd
from robaudit.commands import uap as uap_cmd

app = typer.Typer(
    name="robaudit",
    help="Audit transfer-learned medical image classifiers against universal adversarial "
    "perturbations built from natural images.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"robaudit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    data_root: Annotated[Optional[Path], typer.Option(
        "--data-root", envvar="ROBAUDIT_DATA", help="Data root: MedMNIST .npz files (+ cards) and imagenet/.",
        show_envvar=True)] = None,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    from robaudit.core.locations import set_data_root

    # only an explicit --data-root overrides; from the environment it stays "ROBAUDIT_DATA" in messages
    from_env = getattr(ctx.get_parameter_source("data_root"), "name", None) == "ENVIRONMENT"
    set_data_root(None if from_env else data_root)


def _stoppable(command, message: str = "interrupted"):
    """``command`` with a Ctrl-C (or SIGTERM/SIGHUP, see :func:`main`) that escapes it as :class:`Interrupted`.

    Typer turns a KeyboardInterrupt into a bare exit 130 and drops its message (the resume hint); an
    Interrupted passes through to :func:`main` like any robaudit error. ``message``: what a command that
    raises a plain KeyboardInterrupt (train: its epochs are checkpointed) tells the user."""
    import functools

    @functools.wraps(command)
    def run_command(*args, **kwargs):
        from robaudit.core.errors import Interrupted

        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt as exc:
            raise Interrupted(str(exc) or message) from None

    return run_command


app.add_typer(data_cmd.app, name="data")
app.add_typer(models_cmd.app, name="models")
app.command("train")(_stoppable(models_cmd.train, "interrupted: training resumes after the last finished epoch; "
                                "re-run the same command (--restart starts over)"))
app.command("uap")(_stoppable(uap_cmd.uap))
app.command("audit")(_stoppable(audit_cmd.audit))
app.command("demo")(_stoppable(demo_cmd.demo))
# further commands register below (one line each)
app.command("attack")(_stoppable(attack_cmd.attack))
app.command("report")(_stoppable(report_cmd.report))
app.command("gate")(_stoppable(gate_cmd.gate))
app.command("harden")(_stoppable(harden_cmd.harden))


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app and map every error to one line on stderr and an exit code.

    0 success, 1 a gate failed, 2 bad input (usage errors included), 3 runtime failure (an unexpected
    exception included: one ``internal error:`` line, the traceback in a log file), 130 Ctrl-C, 143 SIGTERM,
    129 SIGHUP: the stop signals are all handled as Ctrl-C (:func:`robaudit.core.errors.stop_signals`), so
    partial work is saved and locks released for each.
    """
    from rich.markup import escape

    try:  # typer >= 0.20 vendors click
        from typer._click import exceptions as cx
    except ImportError:  # pragma: no cover - older typer uses click itself
        from click import exceptions as cx

    from robaudit.core.console import err
    from robaudit.core.errors import Interrupted, RobauditError, interrupt_exit_code, received_signal, stop_signals

    def one_line(message: str, hint: str | None = None) -> None:
        err.print(f"[bold red]error:[/] {escape(message)}" + (f" [dim]({escape(hint)})[/]" if hint else ""),
                  soft_wrap=True, highlight=False)

    from robaudit.core import locations

    def stopped(message: str) -> int:
        sig = received_signal()
        name = signal.Signals(sig).name if sig is not None and sig != signal.SIGINT else None
        err.print(f"[yellow]{escape((f'{name}: ' if name else '') + message)}[/]", soft_wrap=True, highlight=False)
        return interrupt_exit_code()

    saved_root = locations.configured_override()  # --data-root lasts one invocation, also when called in-process
    try:
        with stop_signals():
            rv = app(args=argv, prog_name="robaudit", standalone_mode=False)
    except Interrupted as exc:
        return stopped(exc.message)
    except RobauditError as exc:
        one_line(exc.message, exc.hint)
        return exc.exit_code
    except getattr(cx, "NoArgsIsHelpError", ()) as exc:
        print(exc.ctx.get_help())
        return 0
    except cx.UsageError as exc:
        path = exc.ctx.command_path if exc.ctx else "robaudit"
        one_line(exc.format_message().replace("\n", " "), f"see '{path} --help'")
        return 2
    except cx.ClickException as exc:
        one_line(exc.format_message())
        return exc.exit_code
    except (typer.Exit, getattr(cx, "Exit", typer.Exit)) as exc:
        return exc.exit_code
    except (KeyboardInterrupt, typer.Abort, getattr(cx, "Abort", KeyboardInterrupt)) as exc:
        # older click turns Ctrl-C into Abort; the KeyboardInterrupt it wraps carries our resume hint
        cause = exc if isinstance(exc, KeyboardInterrupt) else (exc.__cause__ or exc.__context__)
        return stopped(str(cause or "") or "interrupted")
    except Exception as exc:  # a bug or an unforeseen failure: one line, the traceback in a log, exit 3
        err.print(f"[bold red]internal error:[/] {escape(_crash_line(exc, argv))}", soft_wrap=True, highlight=False)
        return 3
    finally:
        locations.set_data_root(saved_root)
    if rv == 130 and received_signal() is not None:  # typer's own exit for a KeyboardInterrupt (subcommands)
        return stopped("interrupted")
    return rv if isinstance(rv, int) else 0


def _crash_line(exc: BaseException, argv: list[str] | None) -> str:
    """``Type: message (details in <log>)``, the traceback written to a log file (never to the terminal:
    exit 3 says 'robaudit failed', distinct from a gate's 1 and from bad input's 2)."""
    import traceback

    from robaudit.core.files import write_crash_log

    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    args = sys.argv[1:] if argv is None else argv
    log = write_crash_log(f"robaudit {__version__}\nargs: {args!r}\n\n{text}")
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    where = f"details in {log}" if log else "no log could be written"
    return f"{type(exc).__name__}{': ' + first if first else ''} ({where}; please report it)"


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
