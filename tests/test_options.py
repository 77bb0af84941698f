"""One name per idea (docs/options.md) and one declaration of the UAP settings (UAPSpec's fields)."""

from __future__ import annotations

import re
from pathlib import Path

import click
import typer

from robaudit.cli import app
from robaudit.core.specs import UAPConfig, UAPSpec

TABLE = Path(__file__).resolve().parents[1] / "docs" / "options.md"


def _commands():
    cmd = typer.main.get_command(app)
    ctx = click.Context(cmd)
    for name in cmd.list_commands(ctx):
        c = cmd.get_command(ctx, name)
        if hasattr(c, "list_commands"):
            for sub in c.list_commands(ctx):
                yield f"{name} {sub}", c.get_command(ctx, sub)
        else:
            yield name, c


def _flags(command, hidden: bool) -> set[str]:
    out = set()
    for p in command.params:
        if bool(getattr(p, "hidden", False)) == hidden:
            out |= {o for o in [*getattr(p, "opts", []), *getattr(p, "secondary_opts", [])] if o.startswith("--")}
    return out


def _table() -> list[tuple[str, list[str], list[str]]]:
    rows = []
    for line in TABLE.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[1].startswith("`--"):
            continue
        names = re.findall(r"--[a-z0-9-]+", cells[1])
        old = [m[0] for m in re.findall(r"`(--[a-z0-9-]+)(/--[a-z0-9-]+)?` \(", cells[3])]
        rows.append((cells[0], names, old))
    return rows


def test_no_command_shows_an_old_spelling_and_old_spellings_still_parse():
    rows = _table()
    assert len(rows) >= 10
    old = {o for _, _, olds in rows for o in olds}
    commands = dict(_commands())
    for name, command in commands.items():
        shown = _flags(command, hidden=False)
        clash = shown & old - {n for _, names, _ in rows for n in names}
        assert not clash, f"robaudit {name} shows old spelling(s) {sorted(clash)} (docs/options.md)"
    assert "--n" in _flags(commands["attack"], hidden=True)
    assert "--augment" in _flags(commands["train"], hidden=True)
    assert {"--eval-limit"} <= _flags(commands["attack"], hidden=False)


def test_uap_options_are_the_settings_fields():
    """Every UAPSpec field is a `robaudit uap` option with the field's default and help (declared once)."""
    command = dict(_commands())["uap"]
    params = {p.name: p for p in command.params}
    for name, field in UAPSpec.model_fields.items():
        assert name in params, f"UAPSpec.{name} has no robaudit uap option"
        default = params[name].default
        assert (str(default) if default is not None and name in ("checkpoint", "weights_file") else default) \
            == field.default, name
        assert field.description and field.description[:20].lower() in (params[name].help or "").lower(), name
    extra = set(params) - set(UAPSpec.model_fields) - {"init", "out", "json_out", "no_report"}
    assert not extra, f"robaudit uap options outside the settings model: {sorted(extra)}"
    assert set(UAPConfig.model_fields) < set(UAPSpec.model_fields)


def test_bounds_are_in_the_dtype_of_use_for_cli_and_library(capsys):
    """eps = 1e39 is finite in float64 and inf in the float32 tensor v: refused by the one settings model,
    with the CLI's flag name on the command line and the keyword's name in the library."""
    import pytest

    import robaudit as ra
    from robaudit.cli import main

    code = main(["uap", "--model", "pneumonia-mini_tf_efficientnet_lite0", "--eps", "1e39"])
    err = capsys.readouterr().err
    assert code == 2 and "--eps" in err and "float32" in err and "Traceback" not in err
    for bad in (dict(eps=1e39), dict(step_size=1e-50), dict(zeta=float("inf"))):
        with pytest.raises(ra.BadInput, match=rf"^{next(iter(bad))}: "):
            ra.uap("pneumonia-mini_tf_efficientnet_lite0", **bad)
