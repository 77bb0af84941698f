"""Typer options read from the one settings model: names, defaults and help are declared once, on the
pydantic fields (:class:`~robaudit.core.specs.UAPSpec`), and each command's parameters take them from here.
``tests/test_options.py`` checks every field has its option with the same default, and that no two
commands spell one setting differently (docs/options.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from pydantic import BaseModel

from robaudit.core.specs import ModelRef as _M


def field_default(model: type[BaseModel], name: str) -> Any:
    """The field's default (the CLI parameter's default is this value, never a second literal)."""
    return model.model_fields[name].default


def field_help(model: type[BaseModel], name: str) -> str:
    text = model.model_fields[name].description or ""
    return text[:1].upper() + text[1:] + ("." if text and not text.endswith(".") else "")


def option(model: type[BaseModel], name: str, *decls: str, **kwargs: Any):
    """``typer.Option`` for ``model``'s field ``name`` (flag ``--name-with-dashes`` unless ``decls``)."""
    return typer.Option(*decls, help=field_help(model, name), **kwargs)


def deprecated(old_value: Any, old_flag: str, new_flag: str, new_value: Any, default: Any = None) -> Any:
    """The value of a setting given under its old spelling (a hidden option kept for one release), with a
    one-line note; giving both spellings is bad input."""
    if old_value is None:
        return new_value
    from robaudit.core.console import warn
    from robaudit.core.errors import BadInput

    if new_value != default:
        raise BadInput(f"{old_flag} and {new_flag} name one setting", f"pass {new_flag} only")
    warn(f"{old_flag} is deprecated and will be removed in the next release; use {new_flag}")
    return old_value


# ---- the model arguments every command that takes a model shares (fields of ModelRef) ----------------------

ModelOpt = Annotated[Optional[str], option(_M, "model", "--model", "-m")]
CheckpointOpt = Annotated[Optional[Path], option(_M, "checkpoint")]
ArchOpt = Annotated[Optional[str], option(_M, "arch")]
ArchKwargsOpt = Annotated[Optional[str], option(_M, "arch_kwargs")]
TrustOpt = Annotated[bool, option(_M, "trust_checkpoint", "--trust-checkpoint")]
MeanOpt = Annotated[Optional[str], option(_M, "mean")]
StdOpt = Annotated[Optional[str], option(_M, "std")]
InputSizeOpt = Annotated[Optional[int], option(_M, "input_size")]
ChannelsOpt = Annotated[Optional[int], option(_M, "channels")]
ClassesOpt = Annotated[Optional[str], option(_M, "classes")]
MODEL_FIELDS = tuple(_M.model_fields)


def model_ref(values: dict) -> _M:
    """The :class:`ModelRef` of a command's model options (``locals()``), errors as one ``--flag`` line."""
    from robaudit.core.files import validate

    fields = {k: values.get(k) for k in MODEL_FIELDS if k in values}
    if fields.get("checkpoint") is not None:
        fields["checkpoint"] = str(fields["checkpoint"])
    return validate(_M, {k: v for k, v in fields.items() if v is not None}, flag=True)
