"""Model store (``$ROBAUDIT_HOME/models/<name>/``): safetensors weights + a JSON model card.

Loading is safe by default: safetensors, or torch files with ``weights_only=True``. A checkpoint that
needs pickled code is refused unless the caller opts in with ``trust_checkpoint``.
"""

from __future__ import annotations

import hashlib
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from robaudit.core import locations
from robaudit.core.errors import BadInput, UnsafeCheckpoint
from robaudit.core.files import atomic_write_bytes, atomic_write_text, read_model
from robaudit.models.zoo import canonical_name

WEIGHTS = "model.safetensors"
CARD = "card.json"


class ModelCard(BaseModel):
    """Everything needed to rebuild, preprocess and cite a trained model."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())
    name: str
    arch: str
    #: keyword arguments of an arch of the user's own code (package.module:factory)
    arch_kwargs: dict[str, Any] | None = None
    init: str = "unknown"
    weights_source: str | None = None
    transfer: str | None = None
    top_k: int | None = None
    replicate: int | None = Field(None, ge=0, description="training replicate (NAME@R); None: not a zoo training run")
    task: str | None = None
    classes: list[str] = Field(min_length=1)
    #: bounded so a typo (1e9, -64) is one line here, not an out-of-memory or a resize error mid-run
    input_size: int = Field(ge=8, le=4096, description="square input side in pixels")
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    channels: int = Field(3, ge=1, le=3, description="input channels the network takes (1: greyscale)")
    metrics: dict[str, float] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict)
    data_sha256: dict[str, str] = Field(default_factory=dict)
    weights_sha256: str | None = None
    versions: dict[str, str] = Field(default_factory=dict)
    #: what decides the weights besides seed and data (torch, timm, threads, CPU ISA, device): a retrain under
    #: other conditions gives other weights; ``models list`` and the report say when they differ from now
    trained_under: dict[str, Any] = Field(default_factory=dict)
    created: str | None = None
    #: how the weights were read ("torch state_dict", "onnx", ...; None: robaudit's own store)
    format: str | None = None
    #: where each preprocessing field came from: field -> "card" | "flag" | "given" | "data" | "weights" |
    #: "model file" | "default (...)"
    provenance: dict[str, str] = Field(default_factory=dict)
    #: ONNX: max abs logit difference of the converted module vs onnxruntime on real inputs
    parity: float | None = None

    @field_validator("mean", "std")
    @classmethod
    def _per_channel(cls, v: tuple[float, ...], info) -> tuple[float, ...]:
        if len(v) not in (1, 3) or not all(x == x and abs(x) != float("inf") for x in v):
            raise ValueError(f"{info.field_name} must be 1 or 3 finite numbers, got {list(v)}")
        if info.field_name == "std" and min(v) <= 0:
            raise ValueError(f"std must be positive, got {list(v)}")
        return v


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def store_root() -> Path:
    """The model store folder (BadInput when ``$ROBAUDIT_HOME`` cannot hold it: a file, unwritable)."""
    return locations.model_store()


def model_dir(name: str) -> Path:
    """A model's folder; ``NAME@0`` is ``NAME`` (replicate 0), ``NAME@R`` its own folder beside it."""
    return store_root() / canonical_name(name)


def is_trained(name: str) -> bool:
    d = model_dir(name)
    return (d / WEIGHTS).is_file() and (d / CARD).is_file()


def trained_names() -> list[str]:
    root = store_root()
    return sorted(d.name for d in root.iterdir() if d.is_dir() and (d / CARD).is_file() and (d / WEIGHTS).is_file())


def save_model(net, card: ModelCard) -> Path:
    """Store ``net``'s weights (safetensors) and its card; returns the model folder."""

    d = model_dir(card.name)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    blob = save(state)
    atomic_write_bytes(d / WEIGHTS, blob)
    card.weights_sha256 = hashlib.sha256(blob).hexdigest()
    atomic_write_text(d / CARD, card.model_dump_json(indent=2))
    return d


def read_card(path: Path) -> ModelCard:
    return read_model(ModelCard, path, "model card", "retrain the model or fix the card")


def load_state(path: Path, trust: bool = False) -> dict:
    """Read a state dict from safetensors or a torch file (``weights_only`` unless ``trust``)."""

    if not path.is_file():
        raise BadInput(f"checkpoint {str(path)!r} does not exist", "check the path")
    if path.suffix == ".safetensors":

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise BadInput(f"checkpoint {str(path)!r} is not a valid safetensors file: {exc}") from None
    with open(path, "rb") as f:
        pickle_head = f.read(1) == b"\x80"  # a legacy torch.save file is a pickle (protocol >= 2)
    if not pickle_head and not zipfile.is_zipfile(path):  # torch.save writes a zip archive since torch 1.6
        raise BadInput(f"checkpoint {str(path)!r} is not a torch or safetensors file",
                       "check the path; save weights with safetensors or torch.save(model.state_dict())")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as exc:
        if not trust and "weights_only" in str(exc).lower() or "unsupported global" in str(exc).lower():
            raise UnsafeCheckpoint(
                f"checkpoint {str(path)!r} contains pickled code, which robaudit refuses to execute",
                "convert it to safetensors, or pass --trust-checkpoint if you trust its origin") from None
        raise BadInput(f"checkpoint {str(path)!r} is not a readable torch file: {exc}") from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise BadInput(f"checkpoint {str(path)!r} is not a readable torch file: {str(exc).splitlines()[0]}") from None
    return _unwrap_state(obj, path)


def _unwrap_state(obj, path: Path) -> dict:

    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model", "net", "weights"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise BadInput(f"checkpoint {str(path)!r} holds no state dict of tensors",
                       "save model.state_dict() (ideally with safetensors)")
    prefixes = ("module.", "model.", "net.")
    for p in prefixes:
        if all(k.startswith(p) for k in obj):
            obj = {k[len(p):]: v for k, v in obj.items()}
    return obj
