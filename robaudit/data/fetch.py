"""MedMNIST downloads through the ``medmnist`` package (online users)."""

from __future__ import annotations

from pathlib import Path

from robaudit.core import locations
from robaudit.core.errors import BadInput, RuntimeFailure, unknown_name
from robaudit.data.cards import TASK_FLAGS


def fetch_medmnist(name: str, size: int = 28, root: Path | None = None) -> Path:
    """Download MedMNIST ``name`` (flag or task alias) at ``size`` px into the data root."""
    try:
        import medmnist
        from medmnist import INFO
    except ImportError:
        raise BadInput("downloading needs the medmnist package", "pip install 'robaudit[medmnist]'") from None
    flag = TASK_FLAGS.get(name, name)
    if flag not in INFO:
        raise unknown_name("MedMNIST dataset", name, list(INFO) + list(TASK_FLAGS))
    if size not in (28, 64, 128, 224):
        raise BadInput(f"MedMNIST has no {size} px release", "choose --size 28, 64, 128 or 224")
    if root is None:
        root = locations.configured_data_root() or Path("~/.medmnist").expanduser()
    root.mkdir(parents=True, exist_ok=True)
    cls = getattr(medmnist, INFO[flag]["python_class"])
    try:
        cls(split="train", download=True, root=str(root), size=size)
    except Exception as exc:  # network errors surface as many types (URLError, requests, RuntimeError)
        raise RuntimeFailure(f"could not download {flag} ({type(exc).__name__}: {str(exc)[:120]})",
                             "this machine looks offline; copy the .npz into the data root by hand") from None
    path = root / (f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz")
    if not path.is_file():
        raise RuntimeFailure(f"download finished but {path} is missing")
    return path
