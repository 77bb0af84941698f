"""A model file of any common format, recognised by its content (never its name), as an ``nn.Module``.

Formats: safetensors and torch state dicts (timm, torchvision or the user's own ``package.module:factory``
architecture), pickled modules, TorchScript, ``torch.export`` programs (``.pt2``) and ONNX (converted with
onnx2torch, checked against onnxruntime). Every door has its guard, because a model file is input from
outside: formats that carry code (pickle, TorchScript, a ``.pt2`` with pickled payloads or calls outside
torch's operators) need ``trust``; ONNX external data must stay in the model's folder (the 2024 onnx path
traversal CVEs); files over :data:`MAX_MODEL_BYTES` are refused before they are read; damaged files are
one-line :class:`BadInput` errors, never a traceback.
"""

from __future__ import annotations

import importlib
import inspect
import io
import json
import os
import pickle
import re
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from robaudit.core.errors import BadInput, UnsafeCheckpoint, unknown_name
from robaudit.models.store import _unwrap_state, sha256_file

#: largest model file (plus its ONNX external data) robaudit reads; ``ROBAUDIT_MAX_MODEL_BYTES`` overrides it
MAX_MODEL_BYTES = 4 << 30
#: the newest ONNX opset onnx2torch converts
ONNX_MAX_OPSET = 17
ONNX_HINT = "pip install 'robaudit[onnx]'"
REEXPORT = "re-export with torch.onnx.export(..., dynamo=False, opset_version=17)"
TRUST_HINT = "pass --trust-checkpoint if you trust its origin"

FORMATS = ("safetensors state_dict", "torch state_dict", "pickled module", "torchscript", "torch.export", "onnx")


@dataclass
class NetFile:
    """A loaded model file: ``net`` takes normalised NCHW float32 and returns logits, in eval mode, on CPU."""

    net: nn.Module
    format: str
    arch: str | None
    note: str | None
    parity: float | None
    sha256: str


def max_model_bytes() -> int:
    raw = os.environ.get("ROBAUDIT_MAX_MODEL_BYTES")
    if raw is None or not raw.strip():
        return MAX_MODEL_BYTES
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise BadInput(f"ROBAUDIT_MAX_MODEL_BYTES={raw!r} is not a positive number of bytes",
                       "set it to an integer such as 8589934592 (8 GiB), or unset it")
    return value


def _check_size(path: Path, total: int | None = None) -> None:
    limit = max_model_bytes()
    size = path.stat().st_size if total is None else total
    if size > limit:
        what = "with its external data " if total is not None else ""
        raise BadInput(f"model file {str(path)!r} {what}is {_human(size)}, over robaudit's limit of {_human(limit)}",
                       "raise ROBAUDIT_MAX_MODEL_BYTES if the file is what you expect")


def _human(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


# ---------------------------------------------------------------------------------------------- sniffing


def sniff(path: Path) -> str:
    """The file's format by its bytes: "safetensors" | "torch" (torch.save zip or legacy pickle) |
    "torchscript" | "torch.export" | "onnx"; BadInput for anything else (and for a file over the limit)."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise BadInput(f"model file {str(path)!r} {what}", "check the path")
    _check_size(path)
    with open(path, "rb") as f:
        head = f.read(8)
    if head[:4] == b"PK\x03\x04":
        return _sniff_zip(path)
    if _is_safetensors(path):  # first: its 8-byte header length may well start with 0x80
        return "safetensors"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):  # legacy torch.save: a pickle
        return "torch"
    if _is_onnx(path):
        return "onnx"
    raise BadInput(f"model file {str(path)!r} is not a model file robaudit reads (safetensors, torch.save, "
                   "TorchScript, torch.export .pt2 or ONNX), or it is damaged",
                   "check the path; save weights with safetensors or torch.save(model.state_dict())")


def _sniff_zip(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
            names = [i.filename for i in infos]
            unpacked = sum(i.file_size for i in infos)
            if unpacked > max_model_bytes():  # torch's archives are stored uncompressed: a zip bomb is not
                raise BadInput(f"model file {str(path)!r} unpacks to {_human(unpacked)}, over robaudit's limit of "
                               f"{_human(max_model_bytes())}", "raise ROBAUDIT_MAX_MODEL_BYTES if that is expected")
            fmt_member = next((i for i in infos if i.filename.split("/", 1)[-1] == "archive_format"), None)
            if fmt_member is not None and fmt_member.file_size < 64 and z.read(fmt_member).strip() == b"pt2":
                return "torch.export"
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise BadInput(f"model file {str(path)!r} is a damaged or truncated zip archive ({exc})",
                       "copy the file again, or re-save it") from None
    if any("/code/" in n or n.endswith("/constants.pkl") for n in names):
        return "torchscript"
    if any(n.endswith("data.pkl") for n in names):
        return "torch"
    raise BadInput(f"model file {str(path)!r} is a zip archive but no torch, TorchScript or torch.export file",
                   "save the model with torch.save, torch.jit.save or torch.export.save")


def _is_safetensors(path: Path) -> bool:
    """8-byte little-endian header length, then that many bytes of JSON describing the tensors."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            return False
        (n,) = struct.unpack("<Q", raw)
        if n < 2 or n > min(size - 8, 100 << 20):
            return False
        header = f.read(n)
    if not header.lstrip().startswith(b"{"):
        return False
    try:
        return isinstance(json.loads(header), dict)
    except (ValueError, UnicodeDecodeError):
        return False


#: ModelProto's top-level fields and their protobuf wire types (onnx.proto)
_ONNX_FIELDS = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2, 26: 2}


def _is_onnx(path: Path) -> bool:
    """A protobuf whose top-level fields are exactly ModelProto's, with an ir_version and a graph: read
    without onnx itself, so a missing onnx install is a clear hint rather than "not a model file"."""
    size = path.stat().st_size
    seen = set()
    with open(path, "rb") as f:
        pos = 0
        for _ in range(1_000_000):
            if pos == size:
                return 1 in seen and 7 in seen
            tag, pos = _varint(f, pos)
            if tag is None:
                return False
            field, wire = tag >> 3, tag & 7
            if _ONNX_FIELDS.get(field) != wire:
                return False
            seen.add(field)
            if wire == 0:
                _, pos = _varint(f, pos)
                if _ is None:
                    return False
            else:
                length, pos = _varint(f, pos)
                if length is None or pos + length > size:
                    return False
                pos += length
                f.seek(pos)
    return False


def _varint(f, pos: int) -> tuple[int | None, int]:
    value = shift = 0
    for _ in range(10):
        b = f.read(1)
        if not b:
            return None, pos
        pos += 1
        value |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            return value, pos
        shift += 7
    return None, pos


# ---------------------------------------------------------------------------------------------- loading


def load_net(path, *, arch: str | None, arch_kwargs: dict | None, num_classes: int, channels: int, trust: bool,
             probe: torch.Tensor | None = None, parity_tol: float = 1e-3) -> NetFile:
    """The network in ``path`` (format by content), ready to audit. ``arch`` (+ ``arch_kwargs``) builds the
    network for a state dict: ``timm:NAME``, ``torchvision:NAME``, a bare ``NAME`` (the library whose key
    layout fits, timm first) or ``package.module:factory``. ``probe`` (normalised images) is what ONNX
    parity is checked on; without it, seeded noise."""
    path = Path(path)
    fmt = sniff(path)
    if fmt == "onnx":
        net, note, parity = _load_onnx(path, channels, probe, parity_tol)
        return NetFile(net, "onnx", None, _ignored(arch, "ONNX", note), parity, sha256_file(path))
    if fmt == "torchscript":
        net = _load_torchscript(path, trust)
        return NetFile(net, "torchscript", None, _ignored(arch, "TorchScript"), None, sha256_file(path))
    if fmt == "torch.export":
        net, note = _load_export(path, trust)
        return NetFile(net, "torch.export", None, _ignored(arch, "torch.export", note), None, sha256_file(path))
    obj = read_file_object(path, fmt, trust)
    module = _module_in(obj)
    if module is not None:
        return NetFile(_ready(module), "pickled module", None, _ignored(arch, "pickled module"), None,
                       sha256_file(path))
    state = _unwrap_state(obj, path)
    if not arch:
        raise BadInput(f"model file {str(path)!r} holds weights only (a state_dict) and no architecture",
                       "pass --arch NAME (timm or torchvision:NAME) or --arch package.module:factory")
    net, resolved, note = build_for_state(arch, arch_kwargs, state, num_classes, channels)
    label = "safetensors state_dict" if fmt == "safetensors" else "torch state_dict"
    return NetFile(net, label, resolved, note, None, sha256_file(path))


def _ignored(arch: str | None, what: str, note: str | None = None) -> str | None:
    if not arch:
        return note
    said = f"--arch {arch} ignored: the {what} file carries its own network"
    return f"{note}; {said}" if note else said


def _ready(net: nn.Module) -> nn.Module:
    return net.float().cpu().eval()


def read_file_object(path: Path, fmt: str, trust: bool):
    """What a safetensors or torch file holds (tensors dict, wrapper dict or, with ``trust``, a module)."""
    if fmt == "safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise BadInput(f"checkpoint {str(path)!r} is not a valid safetensors file: "
                           f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if fmt != "torch":
        raise BadInput(f"model file {str(path)!r} is {fmt}, not a state dict", "load it with load_net")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as exc:
        text = str(exc).lower()
        if not trust and ("weights_only" in text or "unsupported global" in text):
            raise UnsafeCheckpoint(
                f"checkpoint {str(path)!r} contains pickled code, which robaudit refuses to execute",
                f"convert it to safetensors, or {TRUST_HINT}") from None
        raise BadInput(f"checkpoint {str(path)!r} is not a readable torch file: {_first(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - a damaged or hostile file raises anything; it is the user's input
        raise BadInput(f"checkpoint {str(path)!r} is not a readable torch file: {_first(exc)}") from None


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _module_in(obj) -> nn.Module | None:
    if isinstance(obj, nn.Module):
        return obj
    if isinstance(obj, dict):
        for key in ("model", "net", "module", "state_dict"):
            if isinstance(obj.get(key), nn.Module):
                return obj[key]
    return None


# ---------------------------------------------------------------------------------------------- state dicts


class _Misfit(Exception):
    """A state dict whose keys or shapes do not fit an architecture (the message counts what differs)."""


def build_for_state(arch: str, arch_kwargs: dict | None, state: dict, num_classes: int,
                    channels: int) -> tuple[nn.Module, str, str | None]:
    """(network loaded with ``state``, the resolved arch, a note). A bare name tries timm then torchvision
    and keeps the first whose key layout fits, saying which."""
    kwargs = dict(arch_kwargs or {})
    lib, _, name = arch.partition(":") if ":" in arch else ("", "", arch)
    if lib in ("timm", "torchvision"):
        _known(lib, name)
        try:
            return _attempt(lib, name, kwargs, state, num_classes, channels)
        except _Misfit as exc:
            raise BadInput(f"checkpoint does not fit arch {arch!r}: {exc}",
                           _misfit_hint(state, channels)) from None
    if lib:
        net = own_module(arch, kwargs, num_classes)
        try:
            return _fit(net, arch, state, num_classes, channels, own=True)
        except _Misfit as exc:
            raise BadInput(f"checkpoint does not fit arch {arch!r}: {exc}",
                           "pass the factory and --arch-kwargs the checkpoint was trained with") from None
    libs = [x for x in ("timm", "torchvision") if _is_known(x, name)]
    if not libs:
        import timm
        import torchvision

        raise unknown_name("architecture", name, [*timm.list_models(), *torchvision.models.list_models()],
                           "pass a timm or torchvision:NAME architecture, or --arch package.module:factory")
    tried: list[tuple[str, str]] = []
    for lib in libs:
        try:
            net, resolved, note = _attempt(lib, name, kwargs, state, num_classes, channels)
        except _Misfit as exc:
            tried.append((lib, str(exc)))
            continue
        other = "torchvision" if lib == "timm" else "timm"
        if tried:
            why = f"{lib}'s key layout fits ({other}'s does not)"
        elif len(libs) == 2:
            why = f"{lib}'s key layout fits (timm is tried first)"
        else:
            why = f"{lib}'s architecture ({other} has no {name!r})"
        said = f"--arch {name}: {why}"
        return net, resolved, f"{said}; {note}" if note else said
    if len(tried) == 2:
        raise BadInput(f"checkpoint fits neither timm's {name!r} ({tried[0][1]}) nor torchvision's {name!r} "
                       f"({tried[1][1]})", "pass the --arch the checkpoint was trained with "
                       "(timm:NAME, torchvision:NAME or package.module:factory)")
    lib, why = tried[0]
    raise BadInput(f"checkpoint does not fit arch {lib + ':' + name!r} (only {lib} has {name!r}): {why}",
                   _misfit_hint(state, channels))


def _misfit_hint(state: dict, channels: int) -> str:
    ch = channels_of_state(state)
    if ch and ch != channels:
        return f"the checkpoint's stem takes {ch} channels: pass --channels {ch}"
    return "pass the --arch the checkpoint was trained with (timm:NAME, torchvision:NAME or package.module:factory)"


def _is_known(lib: str, name: str) -> bool:
    if lib == "timm":
        import timm

        return bool(timm.is_model(name))
    import torchvision

    return name in torchvision.models.list_models()


def _known(lib: str, name: str) -> None:
    if _is_known(lib, name):
        return
    if lib == "timm":
        import timm

        raise unknown_name("timm architecture", name, timm.list_models(), "pass a timm architecture name")
    import torchvision

    raise unknown_name("torchvision architecture", name, torchvision.models.list_models(),
                       "pass a torchvision.models name (torchvision.models.list_models())")


def _attempt(lib: str, name: str, kwargs: dict, state: dict, num_classes: int, channels: int):
    label = f"{lib}:{name}"
    try:
        if lib == "timm":
            import timm

            net = timm.create_model(name, pretrained=False, **{"num_classes": num_classes, "in_chans": channels,
                                                                **kwargs})
        else:
            import torchvision

            net = torchvision.models.get_model(name, weights=None, **{"num_classes": num_classes, **kwargs})
    except (TypeError, ValueError, RuntimeError, AssertionError) as exc:
        raise BadInput(f"arch {label!r} cannot be built with {kwargs or 'no arguments'}: {_first(exc)}",
                       "check --arch-kwargs") from None
    return _fit(net, label, state, num_classes, channels, own=False)


def _fit(net: nn.Module, label: str, state: dict, num_classes: int, channels: int, *, own: bool):
    """Load ``state`` into ``net`` after the head rename, the class count and the key/shape checks."""
    state, notes = dict(state), []
    head = _head_name(net)
    if head:
        state, renamed = _map_head(net, state, head)
        if renamed:
            notes.append(f"head {renamed}.* read as {head}.*")
    if not own:
        stem = _grey_stem(net, state, channels)
        if stem:
            notes.append(f"first conv {stem} takes 1 channel")
    if head and f"{head}.weight" in state and net.get_submodule(head).out_features == num_classes:
        n = int(state[f"{head}.weight"].shape[0])  # the arch's head is the num_classes head; is the checkpoint's?
        if n != num_classes:
            raise BadInput(f"checkpoint has a {n}-class head but the model expects {num_classes} classes "
                           f"({head}.weight {tuple(state[f'{head}.weight'].shape)})",
                           f"pass --classes naming the head's {n} outputs in order, or the matching checkpoint")
    own_state = net.state_dict()
    missing = [k for k in own_state if k not in state]
    unexpected = [k for k in state if k not in own_state]
    shapes = [k for k in own_state if k in state and tuple(own_state[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        parts = [f"{len(x)} {what}" for x, what in ((missing, "missing"), (unexpected, "unexpected"),
                                                     (shapes, "wrongly shaped")) if x]
        if shapes:
            k = shapes[0]
            eg = f"{k}: checkpoint {tuple(state[k].shape)}, {label} {tuple(own_state[k].shape)}"
        else:
            eg = (missing or unexpected)[0]
        raise _Misfit(f"{', '.join(parts)} tensors (e.g. {eg})")
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # dtype or other incompatibilities the key/shape check does not see
        raise _Misfit(str(exc).splitlines()[0]) from None
    return _ready(net), label, "; ".join(notes) or None


def _head_name(net: nn.Module) -> str | None:
    """The classifier: the last ``nn.Linear`` in module order (timm, torchvision and MONAI heads)."""
    names = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    return names[-1] if names else None


def _map_head(net: nn.Module, state: dict, head: str) -> tuple[dict, str | None]:
    """A checkpoint head one ``Sequential`` level deeper or shallower than the arch's (``fc.1.*`` for
    ``fc.*``: Dropout + Linear; ``classifier.*`` for ``classifier.1.*``) renamed when it is the only one."""
    if f"{head}.weight" in state:
        return state, None
    candidates = {k.rsplit(".", 1)[0] for k in state if k.endswith(".weight") and k not in net.state_dict()}
    fits = [c for c in candidates
            if re.fullmatch(re.escape(head) + r"\.\d+", c) or re.fullmatch(re.escape(c) + r"\.\d+", head)]
    if len(fits) != 1:
        return state, None
    old = fits[0]
    own = net.state_dict()
    moved = {f"{head}.{leaf}": state[f"{old}.{leaf}"] for leaf in ("weight", "bias") if f"{old}.{leaf}" in state}
    if set(moved) != {k for k in own if k.rsplit(".", 1)[0] == head}:
        return state, None
    if tuple(moved[f"{head}.weight"].shape[1:]) != tuple(own[f"{head}.weight"].shape[1:]):
        return state, None
    out = {k: v for k, v in state.items() if k.rsplit(".", 1)[0] != old}
    out.update(moved)
    return out, old


def _grey_stem(net: nn.Module, state: dict, channels: int) -> str | None:
    """A torchvision net built for RGB whose checkpoint's first conv takes 1 channel: that conv replaced by
    a 1-channel copy (torchvision has no ``in_chans``)."""
    first = next(((n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d)), None)
    if first is None or channels != 1:
        return None
    name, conv = first
    w = state.get(f"{name}.weight")
    if w is None or w.ndim != 4 or w.shape[1] != 1 or conv.in_channels == 1:
        return None
    new = nn.Conv2d(1, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups,
                    bias=conv.bias is not None, padding_mode=conv.padding_mode)
    parent, _, leaf = name.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, leaf, new)
    return name


def own_module(arch: str, arch_kwargs: dict | None, num_classes: int) -> nn.Module:
    """``package.module:factory`` (a class or a function): the user's own network, built with
    ``arch_kwargs`` (+ ``num_classes`` when the factory takes it and the kwargs do not give it). Only that
    module is imported, and only here: it is the user's code."""
    mod_name, _, attr = arch.partition(":")
    if not mod_name or not attr:
        raise BadInput(f"arch {arch!r} is not package.module:factory", "e.g. monai.networks.nets:DenseNet121")
    try:
        factory = importlib.import_module(mod_name)
        for part in attr.split("."):
            factory = getattr(factory, part)
    except (ImportError, AttributeError, ValueError) as exc:
        raise BadInput(f"arch {arch!r}: cannot import {attr!r} from {mod_name!r} ({_first(exc)})",
                       "put the module on PYTHONPATH (pip install it), or pass a timm/torchvision architecture") \
            from None
    kwargs = dict(arch_kwargs or {})
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    if "num_classes" in params and "num_classes" not in kwargs:
        kwargs["num_classes"] = num_classes
    try:
        net = factory(**kwargs)
    except Exception as exc:  # noqa: BLE001 - the user's factory may raise anything on wrong arguments
        raise BadInput(f"arch {arch!r} cannot be built with {kwargs or 'no arguments'}: {_first(exc)}",
                       "pass the factory's arguments as --arch-kwargs '{...}' (JSON)") from None
    if not isinstance(net, nn.Module):
        raise BadInput(f"arch {arch!r} returned a {type(net).__name__}, not a torch.nn.Module",
                       "point --arch at a function or class that builds the network")
    return net


# ---------------------------------------------------------------------------------------------- TorchScript


def _load_torchscript(path: Path, trust: bool) -> nn.Module:
    """The scripted graph itself (its code runs as the model), which is why it needs ``trust``."""
    if not trust:
        raise UnsafeCheckpoint(f"model file {str(path)!r} is TorchScript, which is code: robaudit runs it only "
                               "when told to", TRUST_HINT)
    try:
        net = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - torch.jit.load raises RuntimeError, ValueError, ... on damage
        raise BadInput(f"model file {str(path)!r} is not a readable TorchScript file: {_first(exc)}") from None
    return _ready(net)


# ---------------------------------------------------------------------------------------------- torch.export


#: graph call targets a .pt2 may name without trust (torch's operators, operator and math builtins)
_SAFE_TARGET = re.compile(r"(torch\.ops\.[a-z_][a-z0-9_]*\.[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)?|_?operator\.[a-z_]+"
                          r"|math\.[a-z_]+)")
#: torch's own shape-arithmetic and check functions that dynamic-shape graphs call
_SAFE_TORCH = ("sym_float", "sym_int", "sym_max", "sym_min", "sym_not", "sym_ite", "sym_sqrt", "sym_sum", "_check",
               "_check_is_size", "_assert", "_assert_async")


def _vet_export(path: Path) -> None:
    """A ``.pt2`` runs no code of its own unless it pickles objects or names calls outside torch's operators
    (``torch.export.load`` unpickles such payloads, and its graph may call any ``torch.*`` attribute):
    checked in the archive before anything is loaded."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            code = [n for n in names if "/aotinductor/" in n or n.endswith((".so", ".dll", ".dylib", ".cpp", ".py"))]
            if code:
                raise UnsafeCheckpoint(f"torch.export file {str(path)!r} carries compiled or Python code "
                                       f"({code[0].split('/', 1)[-1]})", TRUST_HINT)
            for n in names:
                rel = n.split("/", 1)[-1]
                if rel.startswith("models/") and rel.endswith(".json"):
                    bad = _unsafe_targets(json.loads(z.read(n)))
                    if bad:
                        raise UnsafeCheckpoint(f"torch.export file {str(path)!r} calls {bad[0]!r}, which is not "
                                               "a torch operator (code)", TRUST_HINT)
                elif rel.startswith("data/") and rel.endswith("_config.json"):
                    for fqn, meta in json.loads(z.read(n)).get("config", {}).items():
                        pickled = meta.get("use_pickle") or not str(meta.get("path_name", "")).startswith(
                            ("weight_", "tensor_"))
                        if pickled:
                            raise UnsafeCheckpoint(f"torch.export file {str(path)!r} holds {fqn!r} as a pickled "
                                                   "object (pickle runs code)", TRUST_HINT)
                elif rel.startswith("data/") and rel.endswith(".pt"):  # sample inputs, legacy weights
                    try:
                        torch.load(io.BytesIO(z.read(n)), map_location="cpu", weights_only=True)
                    except Exception:  # noqa: BLE001 - anything weights_only refuses is pickled code
                        raise UnsafeCheckpoint(f"torch.export file {str(path)!r} holds {rel!r}, which contains "
                                               "pickled code", TRUST_HINT) from None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError) as exc:
        raise BadInput(f"torch.export file {str(path)!r} is damaged: {_first(exc)}",
                       "re-save it with torch.export.save") from None


_SAFE_NAMES = {f"torch.{n}" for n in _SAFE_TORCH}


def _unsafe_targets(tree) -> list[str]:
    out, stack = [], [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            t = node.get("target")
            if isinstance(t, str) and ("__" in t or not _SAFE_TARGET.fullmatch(t)) and t not in _SAFE_NAMES:
                out.append(t)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return out


def _load_export(path: Path, trust: bool) -> tuple[nn.Module, str | None]:
    """``torch.export.load(path).module()``, in eval semantics: batch norm on running statistics and no
    dropout, also for a program exported in training mode (its ops' ``training`` flags set to False)."""
    if not trust:
        _vet_export(path)
    try:
        ep = torch.export.load(str(path))
        batch = _export_batch(ep)
        gm = ep.module()
    except Exception as exc:  # noqa: BLE001 - deserialisation raises many types on a damaged archive
        raise BadInput(f"torch.export file {str(path)!r} cannot be loaded: {_first(exc)}",
                       "re-save it with torch.export.save (same torch version)") from None
    if not trust:
        bad = [str(n.target) for n in gm.graph.nodes
               if n.op == "call_function" and not _safe_callable(n.target)]
        if bad:
            raise UnsafeCheckpoint(f"torch.export file {str(path)!r} calls {bad[0]!r}, which is not a torch "
                                   "operator (code)", TRUST_HINT)
    switched = 0
    for node in gm.graph.nodes:
        schema = getattr(node.target, "_schema", None) if node.op == "call_function" else None
        if schema is None:
            continue
        for i, arg in enumerate(schema.arguments):
            if arg.name in ("training", "train") and str(arg.type) == "bool":
                if i < len(node.args) and node.args[i] is True:
                    node.args = (*node.args[:i], False, *node.args[i + 1:])
                    switched += 1
                elif node.kwargs.get(arg.name) is True:
                    node.kwargs = {**node.kwargs, arg.name: False}
                    switched += 1
    for node in list(gm.graph.nodes):  # training's batch counter: in eval nothing in the model changes
        if (node.op == "call_function" and node.target is torch.ops.aten.add_.Tensor and not node.users
                and getattr(node.args[0], "op", None) == "get_attr"
                and str(node.args[0].target).endswith("num_batches_tracked")):
            gm.graph.erase_node(node)
            switched += 1
    note = None
    if switched:
        gm.recompile()
        note = "exported in training mode: batch norm and dropout switched to eval"
    for m in gm.modules():  # the flag says what the graph does now
        m.training = False
    net = _EvalProgram(gm)
    if batch:
        said = f"exported with a fixed batch size {batch}: run in chunks (export with dynamic_shapes for speed)"
        return _FixedBatch(net, batch).eval(), f"{note}; {said}" if note else said
    return net, note


class _EvalProgram(nn.Module):
    """An exported program, whose mode lives in its graph (fixed to eval at load): ``train()``/``eval()``
    leave it alone (``GraphModule.eval()`` raises for unlifted programs)."""

    def __init__(self, program: nn.Module):
        super().__init__()
        self.program = program
        self.training = False

    def train(self, mode: bool = True) -> _EvalProgram:
        return self

    def forward(self, x: torch.Tensor):
        return self.program(x)


def _export_input(ep):
    """The shape of an exported program's (first) user input: ints for static dims, SymInts for dynamic."""
    for node in ep.graph.nodes:
        if node.op == "placeholder" and node.name in ep.graph_signature.user_inputs:
            val = node.meta.get("val")
            return tuple(val.shape) if val is not None else None
    return None


def _export_batch(ep) -> int | None:
    shape = _export_input(ep)
    return int(shape[0]) if shape and type(shape[0]) is int else None


def _safe_callable(target) -> bool:
    import math
    import operator

    if isinstance(target, (torch._ops.OpOverload, torch._ops.OpOverloadPacket, torch._ops.HigherOrderOperator)):
        return True
    if any(target is getattr(torch, n, None) for n in _SAFE_TORCH):
        return True
    return any(target is getattr(mod, getattr(target, "__name__", ""), None) for mod in (operator, math))


# ---------------------------------------------------------------------------------------------- ONNX


def _onnx_modules():
    try:
        import onnx
        import onnx2torch
        import onnxruntime
    except ImportError as exc:
        raise BadInput(f"reading ONNX files needs onnx, onnxruntime and onnx2torch ({exc.name} is not installed)",
                       ONNX_HINT) from None
    return onnx, onnxruntime, onnx2torch


def _read_onnx(path: Path):
    """The ModelProto without its external data, whose every location is checked to stay in the model's
    folder first (CVE-2024-27318/-5187: ``../`` or absolute locations read or overwrite other files)."""
    onnx = _onnx_modules()[0]
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError, RuntimeError, ... on damage
        raise BadInput(f"ONNX file {str(path)!r} is damaged: {_first(exc)}", "re-export the model") from None
    folder = path.resolve().parent
    total = path.stat().st_size
    seen = set()
    for t in _onnx_tensors(model):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        loc = next((e.value for e in t.external_data if e.key == "location"), None)
        if not loc:
            raise BadInput(f"ONNX file {str(path)!r}: tensor {t.name!r} has external data without a location",
                           "re-export the model")
        target = (folder / loc).resolve()
        if Path(loc).is_absolute() or ".." in Path(loc.replace("\\", "/")).parts or not target.is_relative_to(folder):
            raise BadInput(f"ONNX file {str(path)!r}: tensor {t.name!r} points outside the model's folder "
                           f"(external data location {loc!r})", "refused: external data must sit beside the model")
        if not target.is_file():
            raise BadInput(f"ONNX file {str(path)!r}: external data {loc!r} of tensor {t.name!r} is missing",
                           "copy the data file beside the model")
        if target not in seen:
            seen.add(target)
            total += target.stat().st_size
    _check_size(path, total)
    return model


def _onnx_tensors(model):
    """Every TensorProto of a model: initializers, sparse ones, node attributes, subgraphs, functions."""
    graphs, out = [model.graph], []
    nodes = [n for f in model.functions for n in f.node]
    while graphs or nodes:
        if graphs:
            g = graphs.pop()
            out.extend(g.initializer)
            out.extend(s.values for s in g.sparse_initializer)
            out.extend(s.indices for s in g.sparse_initializer)
            nodes.extend(g.node)
            continue
        n = nodes.pop()
        for a in n.attribute:
            if a.HasField("t"):
                out.append(a.t)
            out.extend(a.tensors)
            if a.HasField("g"):
                graphs.append(a.g)
            graphs.extend(a.graphs)
    return out


def _onnx_input(model):
    init = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in init]
    if len(inputs) != 1:
        raise BadInput(f"the ONNX graph takes {len(inputs)} inputs ({', '.join(i.name for i in inputs)})",
                       "export a classifier that takes one image batch")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    return inputs[0].name, dims


def onnx_input_size(path: Path) -> int | None:
    """The square input side a fixed-shape ONNX graph declares (None when dynamic or not square)."""
    _, dims = _onnx_input(_read_onnx(Path(path)))
    if len(dims) == 4 and dims[2] and dims[2] == dims[3]:
        return int(dims[2])
    return None


def _opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def _unsupported_ops(model) -> list[str]:
    """Nodes onnx2torch has no converter for at the model's opset ("Op (opset N)", "domain.Op (opset N)"),
    and a Reshape whose ``allowzero=1`` matters (onnx2torch does not implement it)."""
    from onnx import defs
    from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY, OperationDescription

    versions = {o.domain or "": o.version for o in model.opset_import}
    out, stack = [], [model.graph]
    while stack:
        g = stack.pop()
        for n in g.node:
            domain = "" if n.domain in ("", "ai.onnx") else n.domain
            version = versions.get(domain, versions.get("ai.onnx", 1))
            try:
                since = defs.get_schema(n.op_type, domain=domain, max_inclusive_version=version).since_version
            except Exception:  # noqa: BLE001 - SchemaError / RuntimeError for an unknown op
                since = version
            allowzero = n.op_type == "Reshape" and any(a.name == "allowzero" and a.i == 1 for a in n.attribute)
            if allowzero or OperationDescription(domain, n.op_type, since) not in _CONVERTER_REGISTRY:
                name = f"{domain}.{n.op_type}" if domain else n.op_type
                name += " with allowzero=1" if allowzero else ""
                label = f"{name} (opset {version})"
                if label not in out:
                    out.append(label)
            for a in n.attribute:
                if a.HasField("g"):
                    stack.append(a.g)
                stack.extend(a.graphs)
    return out


def _clean_graph(model) -> int:
    """Identity nodes folded into their inputs, Constant nodes turned into initializers (torch's exporter
    writes conv biases through an Identity, where onnx2torch expects an initializer) and needless
    ``allowzero`` flags dropped; the count changed."""
    from onnx import numpy_helper

    g = model.graph
    outputs = {o.name for o in g.output}
    alias, keep, removed = {}, [], 0
    for n in g.node:
        n.input[:] = [alias.get(i, i) for i in n.input]
        if n.op_type == "Identity" and n.domain in ("", "ai.onnx") and n.output[0] not in outputs:
            alias[n.output[0]] = n.input[0]
            removed += 1
            continue
        if n.op_type == "Reshape" and _drop_allowzero(n, g):
            removed += 1
        if (n.op_type == "Constant" and n.domain in ("", "ai.onnx") and len(n.attribute) == 1
                and n.attribute[0].name == "value" and n.output[0] not in outputs):
            t = numpy_helper.from_array(numpy_helper.to_array(n.attribute[0].t), n.output[0])
            g.initializer.append(t)
            removed += 1
            continue
        keep.append(n)
    if not removed:
        return 0
    del g.node[:]
    g.node.extend(keep)
    return removed


def _drop_allowzero(node, graph) -> bool:
    """``allowzero=1`` (which onnx2torch does not implement) only differs from 0 for a 0 in the target
    shape: dropped when the shape is a constant without one (torch's dynamo exporter writes it always)."""
    from onnx import numpy_helper

    attrs = [a for a in node.attribute if a.name == "allowzero" and a.i == 1]
    shape = next((t for t in graph.initializer if t.name == node.input[1]), None) if len(node.input) > 1 else None
    if not attrs or shape is None or (numpy_helper.to_array(shape) == 0).any():
        return False
    node.attribute.remove(attrs[0])
    return True


class _FixedBatch(nn.Module):
    """Runs a graph exported with a fixed batch size on any batch, chunk by chunk (zero-padded last chunk)."""

    def __init__(self, net: nn.Module, batch: int):
        super().__init__()
        self.net, self.batch = net, batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from robaudit.models.normalize import logits_of

        outs = []
        for start in range(0, x.shape[0], self.batch):
            chunk = x[start:start + self.batch]
            n = chunk.shape[0]
            if n < self.batch:
                chunk = torch.cat([chunk, chunk.new_zeros((self.batch - n, *chunk.shape[1:]))])
            outs.append(logits_of(self.net(chunk))[:n])
        return torch.cat(outs)


def _load_onnx(path: Path, channels: int, probe: torch.Tensor | None, tol: float):
    onnx, ort, onnx2torch = _onnx_modules()
    model = _read_onnx(path)
    name, dims = _onnx_input(model)
    if len(dims) != 4:
        raise BadInput(f"the ONNX graph's input {name!r} has {len(dims)} dimensions, not (N, C, H, W)",
                       "export an image classifier taking NCHW batches")
    if dims[1] and dims[1] != channels:
        raise BadInput(f"the ONNX graph takes {dims[1]} channels but channels={channels}",
                       f"pass --channels {dims[1]}")
    try:
        onnx.load_external_data_for_model(model, str(path.resolve().parent))
    except Exception as exc:  # noqa: BLE001 - damaged external data
        raise BadInput(f"ONNX file {str(path)!r}: external data cannot be read: {_first(exc)}") from None
    notes = []
    removed = _clean_graph(model)
    if removed:
        notes.append(f"{removed} Identity/Constant/allowzero nodes simplified")
    opset = _opset(model)
    bad = _unsupported_ops(model)
    if bad and opset > ONNX_MAX_OPSET:
        try:
            from onnx import version_converter

            down = version_converter.convert_version(model, ONNX_MAX_OPSET)
        except Exception:  # noqa: BLE001 - the converter raises on ops it cannot down-convert
            down = None
        if down is not None and not _unsupported_ops(down):
            model, bad = down, []
            notes.append(f"ONNX opset {opset} converted to {ONNX_MAX_OPSET}")
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise BadInput(f"the ONNX graph uses {', '.join(bad[:3])}{more}, which robaudit's converter (onnx2torch) "
                       "does not support", REEXPORT)
    try:
        net = onnx2torch.convert(model)
    except Exception as exc:  # noqa: BLE001 - onnx2torch raises KeyError, NotImplementedError, ... per op
        raise BadInput(f"the ONNX graph cannot be converted to torch: {_first(exc)}", REEXPORT) from None
    net = _ready(net)
    if dims[0]:
        net = _FixedBatch(net, dims[0])
        notes.append(f"fixed ONNX batch size {dims[0]}: run in chunks (export with dynamic_axes for speed)")
    if probe is None:
        side = dims[2] if dims[2] and dims[2] == dims[3] else 224
        probe = torch.rand(4, channels, side, side, generator=torch.Generator().manual_seed(0)) * 4.0 - 2.0
    parity = _parity(path, ort, name, net, probe.detach().float().cpu(), dims[0])
    if not parity <= tol:
        raise BadInput(f"the ONNX model converted to torch differs from onnxruntime by {parity:.3g} "
                       f"(max abs logit) on the probe images, over the tolerance {tol:g}", REEXPORT)
    notes.append(f"ONNX parity vs onnxruntime {parity:.2g}")
    return net, "; ".join(notes), parity


def _parity(path: Path, ort, name: str, net: nn.Module, probe: torch.Tensor, batch: int | None) -> float:
    """Max abs logit difference of the converted module vs onnxruntime on the original file."""
    from robaudit.models.normalize import logits_of

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, torch.get_num_threads())
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        step = batch or probe.shape[0]
        ref = []
        for start in range(0, probe.shape[0], step):
            chunk = probe[start:start + step].numpy()
            n = chunk.shape[0]
            if batch and n < batch:
                chunk = torch.cat([probe[start:], probe.new_zeros((batch - n, *probe.shape[1:]))]).numpy()
            ref.append(torch.from_numpy(sess.run(None, {name: chunk})[0][:n]))
        ref = torch.cat(ref).float()
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise BadInput(f"onnxruntime cannot run the ONNX file {str(path)!r}: {_first(exc)}",
                       "check --channels/--input-size, or re-export the model") from None
    with torch.no_grad():
        try:
            out = logits_of(net(probe)).float()
        except Exception as exc:  # noqa: BLE001 - a converted graph that fails to run is bad input
            raise BadInput(f"the ONNX model converted to torch fails on the probe images: {_first(exc)}",
                           REEXPORT) from None
    if out.shape != ref.shape:
        raise BadInput(f"the converted ONNX model returns {tuple(out.shape)}, onnxruntime {tuple(ref.shape)}",
                       REEXPORT)
    return float((out - ref).abs().max())


# ---------------------------------------------------------------------------------------------- input channels


def channels_of_state(state: dict) -> int | None:
    """Input channels a state dict's stem takes: 3 if any conv takes 3 channels, else 1 if any takes 1
    (a grey stem; depthwise convs also take 1, but only in a net with no RGB stem), else None. Key order is
    not used: safetensors files store keys sorted."""
    convs = [v for v in state.values() if isinstance(v, torch.Tensor) and v.ndim == 4]
    if any(v.shape[1] == 3 for v in convs):
        return 3
    if any(v.shape[1] == 1 for v in convs):
        return 1
    return None


def declared_input(path: Path, fmt: str, trust: bool) -> tuple[int | None, int | None]:
    """(channels, square side) the model file itself declares, None where it does not: read with the same
    guards as :func:`load_net` (a ``.pt2`` is vetted before ``torch.export.load``, which unpickles)."""
    path = Path(path)
    side = None
    if fmt == "onnx":
        side = onnx_input_size(path)
    elif fmt == "torch.export":
        if not trust:
            _vet_export(path)
        try:
            shape = _export_input(torch.export.load(str(path)))
        except Exception:  # noqa: BLE001 - load_net says why
            shape = None
        if shape and len(shape) == 4 and type(shape[2]) is int and shape[2] == shape[3]:
            side = int(shape[2])
    return input_channels(path, fmt, trust), side


def input_channels(path: Path, fmt: str, trust: bool) -> int | None:
    """The channels the model in ``path`` takes, when the file says (None: it does not, or only after
    running code that ``trust`` does not allow)."""
    path = Path(path)
    if fmt == "onnx":
        _, dims = _onnx_input(_read_onnx(path))
        return int(dims[1]) if len(dims) == 4 and dims[1] in (1, 3) else None
    if fmt == "torchscript":
        if not trust:
            return None
        return channels_of_state(_load_torchscript(path, trust).state_dict())
    if fmt == "torch.export":
        if not trust:
            _vet_export(path)
        try:
            shape = _export_input(torch.export.load(str(path)))
        except Exception:  # noqa: BLE001 - load_net says why
            return None
        return int(shape[1]) if shape and len(shape) == 4 and type(shape[1]) is int else None
    obj = read_file_object(path, fmt, trust)
    module = _module_in(obj)
    state = module.state_dict() if module is not None else _unwrap_state(obj, path)
    return channels_of_state(state)

