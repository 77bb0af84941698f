"""Files in and out: atomic writes, UTF-8 reads, and pydantic validation that fails as one-line BadInput.

Every module that writes a result, a card or a report goes through :func:`atomic_write_text` so a
crash never leaves half a file; every module that validates user input with pydantic goes through
:func:`validate` / :func:`first_error` so the user reads one line, never a ValidationError.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from robaudit.errors import BadInput

M = TypeVar("M", bound=BaseModel)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file and rename, so a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> Path:
    """``obj`` as indented JSON, atomically (NumPy scalars and paths become plain JSON)."""
    atomic_write_text(Path(path), json.dumps(obj, indent=2, default=json_default))
    return Path(path)


def json_default(o: Any) -> Any:
    if hasattr(o, "item") and callable(o.item):  # NumPy scalars
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)


def first_error(exc: ValidationError, *, flag: bool = False) -> str:
    """The first pydantic error as ``loc: message``; ``flag`` spells the location as a CLI option (--step-size)."""
    e = exc.errors()[0]
    where = ".".join(str(x) for x in e["loc"])
    msg = e["msg"].removeprefix("Value error, ")
    if not where:
        return msg
    return f"--{where.replace('_', '-')}: {msg}" if flag else f"{where}: {msg}"


def validate(model: type[M], data: Any, *, where: str = "", flag: bool = False, hint: str | None = None) -> M:
    """``model.model_validate(data)``, or a one-line BadInput naming ``where`` (a file, a recipe) first."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        msg = first_error(exc, flag=flag)
        raise BadInput(f"{where}: {msg}" if where else msg, hint) from None


def read_json(path: Path, what: str = "file") -> Any:
    """Parse a UTF-8 JSON file, or a one-line BadInput saying why it cannot be read."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BadInput(f"{what} {str(path)!r} is not valid JSON: {exc}") from None


def read_model(model: type[M], path: Path, what: str, hint: str | None = None) -> M:
    """A JSON file validated as ``model`` (cards, specs): one BadInput line for unreadable or invalid files."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BadInput(f"{what} {str(path)!r} is invalid: {exc}", hint) from None
    return validate(model, raw, where=f"{what} {str(path)!r} is invalid", hint=hint)


def is_step_summary(path: str | Path) -> bool:
    """Whether ``path`` is GitHub's ``$GITHUB_STEP_SUMMARY`` (written by appending, never overwritten)."""
    step = os.environ.get("GITHUB_STEP_SUMMARY")
    return bool(step) and Path(path).resolve() == Path(step).resolve()
