"""Load a model for auditing: a trained zoo name from the store, or a user's checkpoint + arch."""

from __future__ import annotations

from pathlib import Path

import timm

from robaudit.core.device import resolve_device
from robaudit.core.errors import BadInput, unknown_name
from robaudit.core.files import validate
from robaudit.core.results import ModelInfo
from robaudit.data import TaskData, load_task
from robaudit.models.normalize import Normalized
from robaudit.models.store import ModelCard, is_trained, load_state, model_dir, read_card, sha256_file
from robaudit.models.zoo import parse_zoo_name


class Model:
    """A classifier ready for auditing: ``module`` takes [0, 1] images (N, C, S, S) and returns logits.

    ``Model(net, classes=..., mean=..., std=..., input_size=...)`` wraps any ``nn.Module`` that maps
    normalised NCHW float to logits; robaudit owns the [0, 1] -> normalised step (torchattacks'
    convention), so every attack and metric works in pixel units, and records the preprocessing it
    assumed (mean, std, input size, channels) in every result. :func:`load_model` returns the same type
    for zoo names and checkpoints."""

    def __init__(self, module, *, classes, mean, std, input_size: int, channels: int = 3, name: str | None = None,
                 device: str = "auto", arch: str | None = None, init: str = "unknown", task: str | None = None):
        import torch

        if not isinstance(module, torch.nn.Module):
            raise BadInput(f"module is a {type(module).__name__}, not a torch.nn.Module",
                           "pass the network itself (an nn.Module mapping normalised NCHW floats to logits)")
        classes = [str(c) for c in classes] if classes is not None else []
        if len(classes) < 2 or len(set(classes)) != len(classes):
            raise BadInput(f"classes must name at least two distinct classes in the order of the model's outputs, "
                           f"got {classes}", "pass classes=[...] as the head's output order")
        if channels not in (1, 3):
            raise BadInput(f"channels must be 1 or 3, got {channels}", "pass the number of input channels")
        mean, std = _per_channel(mean, "mean", channels), _per_channel(std, "std", channels)
        card = validate(ModelCard, dict(name=name or type(module).__name__, arch=arch or type(module).__name__,
                                        init=init, task=task, classes=classes, input_size=input_size,
                                        mean=mean, std=std, channels=channels), where="Model")
        card.weights_sha256 = state_sha256(module)
        dev = resolve_device(device)
        wrapped = Normalized(module, card.mean, card.std).to(dev).eval()
        self._set(wrapped, card, dev)
        self._check_outputs()

    @classmethod
    def from_card(cls, module, card: ModelCard, device) -> Model:
        """A model whose ``module`` already takes [0, 1] images (the loaders' path)."""
        self = cls.__new__(cls)
        self._set(module, card, device)
        return self

    def _set(self, module, card: ModelCard, device) -> None:
        self.module, self.card, self.device = module, card, device

    def _check_outputs(self) -> None:
        """One forward pass on a grey image: the output must be (1, len(classes)) logits."""
        import torch

        x = torch.full((1, self.channels, self.input_size, self.input_size), 0.5, device=self.device)
        try:
            with torch.inference_mode():
                out = self.module(x)
        except Exception as exc:  # noqa: BLE001 - any failure of the user's forward is the user's input
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise BadInput(f"the model's forward pass fails on a (1, {self.channels}, {self.input_size}, "
                           f"{self.input_size}) input: {type(exc).__name__}: {first}",
                           "check channels= and input_size= (the model's input), or the module itself") from None
        if out.ndim != 2 or out.shape[1] != len(self.classes):
            raise BadInput(f"the model returns shape {tuple(out.shape)} but classes names {len(self.classes)} classes",
                           "pass classes= in the order of the model's outputs, one name per logit")

    @property
    def classes(self) -> list[str]:
        return list(self.card.classes)

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def input_size(self) -> int:
        return self.card.input_size

    @property
    def channels(self) -> int:
        return int(getattr(self.card, "channels", None) or 3)

    @property
    def mean(self) -> tuple[float, ...]:
        return tuple(self.card.mean)

    @property
    def std(self) -> tuple[float, ...]:
        return tuple(self.card.std)

    def __repr__(self) -> str:
        return (f"Model({self.name!r}, classes={self.classes}, input_size={self.input_size}, channels={self.channels}, "
                f"mean={self.mean}, std={self.std}, device={self.device})")

    def info(self) -> ModelInfo:
        init = self.card.init if self.card.init in ("imagenet", "random") else "unknown"
        return ModelInfo(name=self.card.name, arch=self.card.arch, init=init, transfer=self.card.transfer,
                         task=self.card.task, classes=self.classes, input_size=self.card.input_size,
                         sha256=self.card.weights_sha256, replicate=self.card.replicate,
                         channels=self.channels, mean=list(self.mean), std=list(self.std))

    def resolve_target(self, target: str | int | None) -> int | None:
        """A target class given as an index or a (case-insensitive, unique-prefix) class name."""
        return resolve_target(target, self.classes)


#: the loaders' name for the same type (internal code written before the public ``Model``)
LoadedModel = Model


def _per_channel(values, what: str, channels: int) -> tuple[float, ...]:
    vals = (values,) if isinstance(values, (int, float)) else tuple(values)
    if len(vals) == 1:
        vals = vals * channels
    if len(vals) != channels:
        raise BadInput(f"{what} has {len(vals)} values for a {channels}-channel model",
                       f"pass {channels} values (or one, used for every channel)")
    return tuple(float(v) for v in vals)


def state_sha256(module) -> str:
    """sha256 over a module's state dict (names, shapes, bytes): identifies a live model in results."""
    import hashlib

    h = hashlib.sha256()
    for k, t in module.state_dict().items():
        h.update(k.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def resolve_target(target: str | int | None, classes: list[str]) -> int | None:
    """A target class given as an index or a (case-insensitive, unique-prefix) class name."""
    if target is None:
        return None
    text = str(target).strip()
    if text.lstrip("-").isdigit():
        idx = int(text)
        if not 0 <= idx < len(classes):
            raise BadInput(f"target class {idx} is outside the model's classes 0..{len(classes) - 1}",
                           "pass an index in range or a class name: " + ", ".join(classes))
        return idx
    lowered = [c.lower() for c in classes]
    if text.lower() in lowered:
        return lowered.index(text.lower())
    hits = [i for i, c in enumerate(lowered) if c.startswith(text.lower())]
    if len(hits) == 1:
        return hits[0]
    raise unknown_name("target class", text, classes, "pass an index or one of the model's class names")


def check_classes(model_classes: list[str], data_classes: list[str], data_name: str) -> None:
    """The model's output order must be the data's label order: same count, and, where the data names its
    classes, the same names in the same order (a head trained as [nv, mel] read on labels [mel, nv] is the
    silent failure this refuses)."""
    if len(model_classes) != len(data_classes):
        raise BadInput(f"the model has {len(model_classes)} classes but data {data_name!r} has {len(data_classes)}",
                       "pass the data the model was trained on, or classes= matching its head")
    named = not all(c == str(i) for i, c in enumerate(data_classes))
    if named and [c.lower() for c in model_classes] != [c.lower() for c in data_classes]:
        if sorted(c.lower() for c in model_classes) == sorted(c.lower() for c in data_classes):
            raise BadInput(f"class order differs: model outputs {model_classes}, data labels {data_classes}",
                           "pass the model's classes in the order of its outputs and the data's labels in that "
                           "order (relabel y, or reorder classes=)")
        raise BadInput(f"class names differ: model {model_classes}, data {data_classes}",
                       "pass the data the model was trained on, with classes= in label order")


def check_arch(arch: str) -> str:
    """``arch`` if timm knows it, else BadInput with close names (timm itself raises a bare RuntimeError)."""
    if not timm.is_model(arch):
        raise unknown_name("architecture", arch, timm.list_models(), "pass a timm architecture name")
    return arch


def build_module(card: ModelCard, state: dict, device):
    """timm net from the card, loaded with ``state``, wrapped with its normalisation, in eval mode.

    Every checkpoint, card and --arch goes through here, so the checks live here: the class count of
    the head, then every key and shape against the architecture, before ``load_state_dict`` (which
    raises a many-line RuntimeError on a shape mismatch even with ``strict=False``)."""
    net = own_module(card.arch, len(card.classes)) if ":" in card.arch else None
    if net is None:
        check_arch(card.arch)
        net = timm.create_model(card.arch, pretrained=False, num_classes=len(card.classes))
    head = _head_classes(state)
    if head is not None and head != len(card.classes):
        raise BadInput(f"checkpoint has a {head}-class head but {card.name!r} expects {len(card.classes)} classes "
                       f"({', '.join(card.classes[:4])}{', ...' if len(card.classes) > 4 else ''})",
                       "pass the --data task the model was trained on, or the matching checkpoint")
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        parts = [f"{len(x)} {what}" for x, what in ((missing, "missing"), (unexpected, "unexpected"),
                                                     (shapes, "wrongly shaped")) if x]
        if shapes:
            k = shapes[0]
            eg = f"{k}: checkpoint {tuple(state[k].shape)}, {card.arch} {tuple(own[k].shape)}"
        else:
            eg = (missing or unexpected)[0]
        raise BadInput(f"checkpoint does not fit arch {card.arch!r}: {', '.join(parts)} tensors (e.g. {eg})",
                       "pass the --arch the checkpoint was trained with (or fix the card's arch)")
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # dtype or other incompatibilities the key/shape check does not see
        raise BadInput(f"checkpoint does not fit arch {card.arch!r}: {str(exc).splitlines()[0]}",
                       "pass the --arch the checkpoint was trained with") from None
    return Normalized(net, card.mean, card.std).to(device).eval()


def own_module(arch: str, num_classes: int):
    """``'package.module:Class'``: the user's own network class, built with ``num_classes`` when its
    constructor takes it (else with no arguments) and loaded with the checkpoint like a timm net."""
    import importlib
    import inspect

    mod_name, _, cls_name = arch.partition(":")
    try:
        cls = getattr(importlib.import_module(mod_name), cls_name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise BadInput(f"arch {arch!r}: cannot import {cls_name!r} from {mod_name!r} ({exc})",
                       "put the module on PYTHONPATH, or pass a timm architecture name") from None
    try:
        takes = "num_classes" in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        takes = False
    return cls(num_classes=num_classes) if takes else cls()


def _head_classes(state: dict) -> int | None:
    """Output size of the last 2-D weight whose name looks like a classifier head."""
    heads = [k for k, v in state.items() if v.ndim == 2 and any(h in k for h in ("classifier", "fc", "head"))]
    return int(state[heads[-1]].shape[0]) if heads else None


def load_model(name: str | None = None, checkpoint: str | Path | None = None, arch: str | None = None,
               device: str = "auto", trust_checkpoint: bool = False, task: str | None = None,
               input_size: int | None = None) -> LoadedModel:
    """Load a trained zoo model by name, or ``checkpoint`` (+ ``arch`` unless a card sits beside it)."""
    dev = resolve_device(device)
    if checkpoint is not None:
        return _load_checkpoint(Path(checkpoint), arch, dev, trust_checkpoint, task, input_size, name)
    if not name:
        raise BadInput("no model given", "pass --model NAME (a zoo name) or --checkpoint PATH --arch ARCH")
    if Path(name).suffix in (".safetensors", ".pt", ".pth", ".bin") or Path(name).is_file():
        return _load_checkpoint(Path(name), arch, dev, trust_checkpoint, task, input_size, None)
    if not is_trained(name):
        recipe = parse_zoo_name(name)
        load_task(recipe.task_ref)  # an unknown task is the better error
        make = (f"robaudit harden {recipe.name.replace('_hardened', '')}" if recipe.hardened
                else f"robaudit train {recipe.name}")
        raise BadInput(f"model {name!r} is not trained yet (store: {model_dir(name).parent})",
                       f"run '{make}' first, or pass --checkpoint PATH --arch {recipe.arch}")
    d = model_dir(name)
    card = read_card(d / "card.json")
    state = load_state(d / "model.safetensors")
    return Model.from_card(build_module(card, state, dev), card, dev)


def _load_checkpoint(path: Path, arch: str | None, dev, trust: bool, task: str | None, input_size: int | None,
                     name: str | None) -> LoadedModel:
    side_card = path.with_suffix(".json")
    if side_card.is_file():
        card = read_card(side_card)
    else:
        if not arch:
            raise BadInput(f"checkpoint {str(path)!r} has no card beside it ({side_card.name})",
                           "pass --arch ARCH (a timm architecture) and --data TASK")
        if not task:
            raise BadInput("a checkpoint without a card needs its task for the class names", "pass --data TASK")
        if ":" in arch:
            raise BadInput(f"checkpoint {str(path)!r} of your own class {arch!r} has no card ({side_card.name})",
                           "write the card: classes, mean, std, input_size and channels the model was trained with")
        t = load_task(task)
        cfg = timm.create_model(check_arch(arch), pretrained=False, num_classes=t.num_classes).pretrained_cfg
        card = validate(ModelCard, dict(name=name or path.stem, arch=arch, task=t.full_name, classes=t.label_names,
                                        input_size=input_size or int(cfg.get("input_size", (3, 224, 224))[-1]),
                                        mean=tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
                                        std=tuple(cfg.get("std", (0.229, 0.224, 0.225)))),
                        where=f"checkpoint {str(path)!r}")
    if arch and arch != card.arch:
        raise BadInput(f"--arch {arch!r} differs from the card's arch {card.arch!r}", "drop --arch or fix the card")
    state = load_state(path, trust=trust)
    card.weights_sha256 = card.weights_sha256 or sha256_file(path)
    return Model.from_card(build_module(card, state, dev), card, dev)


def load_model_and_task(model: str | None = None, *, checkpoint: str | Path | None = None, arch: str | None = None,
                        device: str = "auto", trust_checkpoint: bool = False,
                        data: str | None = None) -> tuple[LoadedModel, TaskData]:
    """A model and the task it is evaluated on (``data``, default the model's own), their class counts checked."""
    lm = load_model(model, checkpoint=checkpoint, arch=arch, device=device, trust_checkpoint=trust_checkpoint,
                    task=data)
    task = load_task(data or lm.card.task, size=lm.card.input_size)
    if task.num_classes != len(lm.classes):
        raise BadInput(f"model {lm.card.name!r} has {len(lm.classes)} classes but task {task.full_name!r} has "
                       f"{task.num_classes}", "pass the --data task the model was trained on")
    return lm, task
