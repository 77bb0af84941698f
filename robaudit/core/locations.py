"""Process-wide settings: the data root (ROBAUDIT_DATA) and the model store (ROBAUDIT_HOME)."""

from __future__ import annotations

import os
from pathlib import Path

from robaudit.core.errors import BadInput

_DATA_ROOT_OVERRIDE: Path | None = None


def set_data_root(path: str | Path | None) -> None:
    """Override the data root for this process (the CLI's --data-root)."""
    global _DATA_ROOT_OVERRIDE
    _DATA_ROOT_OVERRIDE = Path(path).expanduser() if path else None


def configured_override() -> Path | None:
    """The process-wide --data-root override (None when unset)."""
    return _DATA_ROOT_OVERRIDE


def configured_data_root() -> Path | None:
    """The data root set by --data-root or $ROBAUDIT_DATA, whether or not it exists yet (None if unset)."""
    if _DATA_ROOT_OVERRIDE is not None:
        return _DATA_ROOT_OVERRIDE
    env = os.environ.get("ROBAUDIT_DATA")
    return Path(env).expanduser() if env else None


def data_root_origin() -> str | None:
    """Where the data root comes from: '--data-root', 'ROBAUDIT_DATA', or None (MedMNIST's cache)."""
    if _DATA_ROOT_OVERRIDE is not None:
        return "--data-root"
    return "ROBAUDIT_DATA" if os.environ.get("ROBAUDIT_DATA") else None


def data_root(required: bool = True) -> Path | None:
    """The data root: --data-root, else $ROBAUDIT_DATA, else MedMNIST's cache (~/.medmnist)."""
    root = configured_data_root()
    if root is None:
        root = Path("~/.medmnist").expanduser()
        if not root.is_dir():
            if required:
                raise BadInput(
                    "no data root is set",
                    "set ROBAUDIT_DATA or pass --data-root DIR (a folder of MedMNIST .npz files), "
                    "or run 'robaudit data fetch NAME' when online",
                )
            return None
    if not root.is_dir():
        if required:
            raise BadInput(f"data root {str(root)!r} (from {data_root_origin()}) is not a folder",
                           "point ROBAUDIT_DATA or --data-root at an existing folder")
        return None
    return root


def home() -> Path:
    """The robaudit home ($ROBAUDIT_HOME, default ~/.cache/robaudit); created on demand (BadInput when it cannot be)."""
    return _folder(Path(os.environ.get("ROBAUDIT_HOME", "~/.cache/robaudit")).expanduser())


def _folder(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInput(f"the robaudit home {str(path)!r} cannot hold robaudit's files: {exc.strerror or exc}",
                       "point ROBAUDIT_HOME at a folder you can write to (or unset it)") from None
    return path


def model_store() -> Path:
    """Folder of trained models (safetensors weights + JSON cards)."""
    return _folder(home() / "models")
