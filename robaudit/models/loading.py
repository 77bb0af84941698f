"""Load a model for auditing: a trained zoo name from the store, or a user's checkpoint + arch."""

from __future__ import annotations

from pathlib import Path

import timm

from robaudit.core.console import info, warn
from robaudit.core.device import resolve_device
from robaudit.core.errors import BadInput, unknown_name
from robaudit.core.files import read_json, validate
from robaudit.core.provenance import condition_changes, training_conditions
from robaudit.core.results import ModelInfo
from robaudit.core.specs import ModelRef
from robaudit.data import TaskData, load_task
from robaudit.data.images import to_channels
from robaudit.data.order import class_permutation, in_model_order
from robaudit.models.normalize import Normalized
from robaudit.models.store import ModelCard, is_trained, load_state, model_dir, read_card
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
        card.format, card.provenance = "module", {k: "given" for k in PREPROCESSING}
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
                         channels=self.channels, mean=list(self.mean), std=list(self.std),
                         format=self.card.format or "robaudit store", preprocessing=self.preprocessing(),
                         onnx_parity=self.card.parity, trained_under=self.card.trained_under or None,
                         conditions_changed=self.conditions_changed())

    def conditions_changed(self) -> list[str] | None:
        """Training conditions (threads, CPU ISA, versions, device) of the stored weights that differ from this
        process's: a retrain here would give other weights. None when the card does not record them."""
        if not self.card.trained_under:
            return None
        return condition_changes(self.card.trained_under, training_conditions(self.device))

    def preprocessing(self) -> dict:
        """What robaudit applies between [0, 1] images and the network, and where each value came from."""
        source = dict(self.card.provenance or {})
        return {"mean": list(self.mean), "std": list(self.std), "input_size": self.input_size,
                "interpolation": INTERPOLATION, "channels": self.channels, "classes": self.classes,
                "source": {k: source.get(k, "card") for k in (*PREPROCESSING, *source)}}

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
    """Same count, and where the data names its classes the same names (in any order: the labels are mapped
    to the head by name, :func:`match_task`)."""
    class_permutation(model_classes, data_classes, data_name)


def build_module(card: ModelCard, state: dict, device):
    """A stored model's net from its card, loaded with ``state``, wrapped with its normalisation, in eval mode.

    Built by :func:`robaudit.models.formats.build_for_state`, the user-file loader's builder, so a store
    model and a checkpoint get the same checks before ``load_state_dict``: the head's class count, then every
    key and shape against the architecture (a bare card arch is timm's: robaudit trains timm models)."""
    from robaudit.models.formats import build_for_state

    arch = card.arch if ":" in card.arch else f"timm:{card.arch}"
    net, _, _ = build_for_state(arch, card.arch_kwargs, state, len(card.classes), card.channels)
    return Normalized(net, card.mean, card.std).to(device).eval()


#: what robaudit assumes when nothing says otherwise: ImageNet statistics and timm's 224 px
IMAGENET_MEAN, IMAGENET_STD, DEFAULT_SIZE = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 224
#: how robaudit resizes images to the model input (recorded; antialiased bilinear, torchvision's default)
INTERPOLATION = "bilinear (antialias)"
PREPROCESSING = ("mean", "std", "input_size", "channels", "classes")


def load_model(name: str | None = None, checkpoint: str | Path | None = None, arch: str | None = None,
               device: str = "auto", trust_checkpoint: bool = False, task: str | None = None,
               input_size: int | None = None, *, arch_kwargs: dict | None = None,
               overrides: dict | None = None) -> LoadedModel:
    """Load a trained zoo model by name, or a model file (+ ``arch`` for a state_dict without a card).

    ``overrides`` (mean, std, input_size, channels, classes: the CLI's flags) win over the card; unset
    fields come from the card, the model file or the architecture's defaults, each recorded with its source
    in ``card.provenance``."""
    dev = resolve_device(device)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if input_size is not None:
        overrides.setdefault("input_size", input_size)
    if checkpoint is not None:
        return _load_checkpoint(Path(checkpoint), arch, arch_kwargs, dev, trust_checkpoint, task, overrides, name)
    if not name:
        raise BadInput("no model given", "pass --model NAME (a zoo name) or --checkpoint PATH --arch ARCH")
    if Path(name).suffix in (".safetensors", ".pt", ".pth", ".bin", ".pt2", ".onnx", ".ts") or Path(name).is_file():
        return _load_checkpoint(Path(name), arch, arch_kwargs, dev, trust_checkpoint, task, overrides, None)
    if not is_trained(name):
        recipe = parse_zoo_name(name)
        load_task(recipe.task_ref)  # an unknown task is the better error
        make = (f"robaudit harden {recipe.name.replace('_hardened', '')}" if recipe.hardened
                else f"robaudit train {recipe.name}")
        raise BadInput(f"model {name!r} is not trained yet (store: {model_dir(name).parent})",
                       f"run '{make}' first, or pass --checkpoint PATH --arch {recipe.arch}")
    d = model_dir(name)
    card = read_card(d / "card.json")
    card.format = card.format or "robaudit store"
    card.provenance = {k: "card" for k in PREPROCESSING}
    if overrides:
        card = _apply_overrides(card, overrides, f"model {name!r}")
    state = load_state(d / "model.safetensors")
    return Model.from_card(build_module(card, state, dev), card, dev)


def _apply_overrides(card: ModelCard, overrides: dict, where: str) -> ModelCard:
    """A zoo card with flags applied (auditing a zoo model under another preprocessing is allowed, and said)."""
    data = card.model_dump()

    def same(a, b) -> bool:
        return list(a) == list(b) if isinstance(b, (list, tuple)) else a == b

    changed = {k: v for k, v in overrides.items() if not same(data.get(k), v)}
    if not changed:
        return card
    if "channels" in changed or ("classes" in changed and len(changed["classes"]) != len(card.classes)):
        raise BadInput(f"{where} was trained with {card.channels} channels and classes {card.classes}",
                       "drop --channels/--classes for a zoo model (its head and stem are fixed)")
    warn(f"{where}: auditing with {', '.join(f'{k}={_show(v)}' for k, v in changed.items())} instead of its card's "
         f"{', '.join(f'{k}={_show(data[k])}' for k in changed)}")
    data.update(changed)
    out = validate(ModelCard, data, where=where)
    out.provenance = {**card.provenance, **{k: "flag" for k in changed}}
    return out


def _show(v) -> str:
    if isinstance(v, (list, tuple)):
        return ",".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v)
    return str(v)


def _side_card(path: Path) -> tuple[dict, Path | None]:
    """The card beside a model file (``<file>.json``), as a possibly partial dict (every field optional)."""
    for side in (path.with_suffix(".json"), path.with_name(path.name + ".json")):
        if side.is_file() and side != path:
            raw = read_json(side, "model card", "fix the card's JSON (or drop it and pass --arch/--mean/--std/"
                            "--input-size/--classes)")
            if not isinstance(raw, dict):
                raise BadInput(f"model card {str(side)!r} is not a JSON object", "write the card as {\"arch\": ...}")
            if "in_chans" in raw and "channels" not in raw:
                raw["channels"] = raw.pop("in_chans")
            return raw, side
    return {}, None


def _arch_defaults(arch: str | None) -> tuple[dict, str]:
    """Preprocessing the architecture's own library declares (timm's pretrained cfg), else ImageNet's."""
    name = (arch or "").removeprefix("timm:")
    if arch and not arch.startswith("torchvision:") and ":" not in name and timm.is_model(name):
        cfg = timm.create_model(name, pretrained=False, num_classes=2).pretrained_cfg
        return {"mean": tuple(cfg.get("mean", IMAGENET_MEAN)), "std": tuple(cfg.get("std", IMAGENET_STD)),
                "input_size": int(cfg.get("input_size", (3, DEFAULT_SIZE, DEFAULT_SIZE))[-1])}, f"timm cfg of {name}"
    what = "torchvision's ImageNet" if arch and arch.startswith("torchvision:") else "ImageNet"
    return {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "input_size": DEFAULT_SIZE}, what


def _load_checkpoint(path: Path, arch: str | None, arch_kwargs: dict | None, dev, trust: bool, task: str | None,
                     overrides: dict, name: str | None) -> LoadedModel:
    """A user's model file: format by content, preprocessing from flags > card > model file > arch defaults."""
    from robaudit.models import formats

    fmt = formats.sniff(path)
    raw, side = _side_card(path)
    if arch and raw.get("arch") and arch != raw["arch"]:
        raise BadInput(f"--arch {arch!r} differs from the card's arch {raw['arch']!r}", "drop --arch or fix the card")
    arch = arch or raw.get("arch")
    arch_kwargs = arch_kwargs if arch_kwargs is not None else raw.get("arch_kwargs")
    values, source = {}, {}
    for k in PREPROCESSING:
        if k in overrides:
            values[k], source[k] = overrides[k], "flag"
        elif raw.get(k) is not None:
            values[k], source[k] = raw[k], "card"
    where = f"model card {str(side)!r}" if side else f"model file {str(path)!r}"
    fix = "fix the card, or pass --mean/--std/--input-size/--channels/--classes"
    validate(ModelRef, {k: values[k] for k in values}, where=where, hint=fix)  # before any weights are read
    t = None
    if "classes" not in values:
        if not task:
            raise BadInput(f"model file {str(path)!r} does not name its classes",
                           "pass --classes (the head's order, by the data's class names) or --data TASK")
        t = load_task(task)
        values["classes"], source["classes"] = t.label_names, "data"
    if not arch and (fmt == "safetensors" or (fmt == "torch" and not trust)):
        raise BadInput(f"model file {str(path)!r} holds weights only (a state_dict) and no architecture",
                       "pass --arch NAME (timm or torchvision:NAME) or --arch package.module:factory")
    ch, side_px = formats.declared_input(path, fmt, trust)  # guarded as load_net is: no pickle runs
    if "channels" not in values:
        values["channels"], source["channels"] = (ch, "model file") if ch else (3, "default")
    if side_px and "input_size" not in values:
        values["input_size"], source["input_size"] = side_px, "model file"
    probe = None
    if fmt == "onnx":
        probe = _probe_images(task or raw.get("task"), values, source, arch)
    nf = formats.load_net(path, arch=arch, arch_kwargs=arch_kwargs, num_classes=len(values["classes"]),
                          channels=int(values["channels"]), trust=trust, probe=probe)
    if nf.note:
        info(nf.note)
    defaults, what = _arch_defaults(nf.arch or arch)
    for k, v in defaults.items():
        if k not in values:
            values[k], source[k] = v, f"default ({what})"
    assumed = [k for k in PREPROCESSING if source[k] != "flag" and source[k] != "card" and source[k] != "model file"]
    if assumed:
        warn(f"{path.name}: assumed " + "; ".join(f"{k} {_show(values[k])} ({source[k]})" for k in assumed)
             + " -- pass " + " ".join(f"--{k.replace('_', '-')}" for k in assumed)
             + " if the model was trained otherwise")
    card_data = {**{k: v for k, v in raw.items() if k in ModelCard.model_fields}, **values,
                 "name": name or raw.get("name") or path.stem, "arch": nf.arch or arch or nf.format,
                 "arch_kwargs": arch_kwargs,
                 "task": (t.full_name if t else raw.get("task") or task), "format": nf.format,
                 "parity": nf.parity, "weights_sha256": nf.sha256}
    card = validate(ModelCard, card_data, where=where, hint=fix)
    card.provenance = source
    card.mean, card.std = _per_channel(card.mean, "mean", card.channels), _per_channel(card.std, "std", card.channels)
    model = Model.from_card(Normalized(nf.net, card.mean, card.std).to(dev).eval(), card, dev)
    model._check_outputs()
    return model


def _probe_images(task: str | None, values: dict, source: dict, arch: str | None):
    """A few real images of the model's data, normalised as the model takes them (the ONNX parity inputs);
    None without data (the converter then checks parity on seeded noise)."""
    if not task:
        return None
    import torch

    defaults, _ = _arch_defaults(arch)
    size = int(values.get("input_size") or defaults["input_size"])
    ch = int(values["channels"])
    mean = torch.tensor(_per_channel(values.get("mean", defaults["mean"]), "mean", ch)).view(1, -1, 1, 1)
    std = torch.tensor(_per_channel(values.get("std", defaults["std"]), "std", ch)).view(1, -1, 1, 1)
    x, _ = load_task(task).tensors("test", size=size, limit=8, seed=0)
    return (to_channels(x, ch) - mean) / std


def load_model_and_task(model: str | None = None, *, checkpoint: str | Path | None = None, arch: str | None = None,
                        device: str = "auto", trust_checkpoint: bool = False, data: str | None = None,
                        arch_kwargs: dict | None = None, overrides: dict | None = None) -> tuple[LoadedModel, TaskData]:
    """A model and the task it is evaluated on (``data``, default the model's own), the task's labels in the
    model's class order (matched by name; names that differ are bad input)."""
    lm = load_model(model, checkpoint=checkpoint, arch=arch, device=device, trust_checkpoint=trust_checkpoint,
                    task=data, arch_kwargs=arch_kwargs, overrides=overrides)
    if not (data or lm.card.task):
        raise BadInput(f"model {lm.card.name!r} has no task on its card", "pass --data TASK|FOLDER")
    task = load_task(data or lm.card.task, size=lm.card.input_size)
    return lm, match_task(lm, task)


def match_task(lm: LoadedModel, task):
    """``task`` in the model's class order, said in one line when its labels were renumbered."""
    view = in_model_order(task, lm.classes)
    if view is not task:
        info(f"data {task.full_name!r} labels mapped to the model's class order by name: "
             + ", ".join(f"{a} -> output {lm.classes.index(b)} ({b})" for a, b in view.mapping.items()))
        lm.card.provenance = {**lm.card.provenance, "class_mapping": "by name"}
    return view
