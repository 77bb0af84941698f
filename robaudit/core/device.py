"""Device selection: auto picks CUDA, then Apple MPS, then CPU."""

from __future__ import annotations

import torch

from robaudit.core.errors import BadInput

DEVICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(name: str = "auto"):
    """A ``torch.device`` for 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps' (BadInput if unavailable)."""

    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise BadInput(f"device {name!r} requested but CUDA is not available", "use --device cpu or auto")
        return torch.device(name)
    if name == "mps":
        if not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            raise BadInput("device 'mps' requested but MPS is not available", "use --device cpu or auto")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise BadInput(f"unknown device {name!r}", "choose auto, cpu, cuda, cuda:N or mps")
