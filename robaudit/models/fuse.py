"""Batch norm folded into the convolution before it, for the attack's and the measure's forward passes.

In eval mode a BatchNorm2d is an affine map per channel, so ``conv -> bn`` equals one convolution with
rescaled weights and a shifted bias. On CPU the separate batch-norm op (and its backward) is memory-bound:
folding it takes ~15-20 % off tf_efficientnet_lite0's forward + input-gradient time at 64 px
(benchmarks/README.md "Time to verdict"). The user's model is never changed: the fold is made on a copy,
and the copy is used only where it computes the same logits as the model (checked on a probe batch)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from robaudit.models.normalize import logits_of

#: the folded copy's logits may differ from the model's by float rounding only: max |diff| <= ATOL + RTOL * max |logit|
ATOL, RTOL = 1e-4, 1e-4


def _replacement(bn: nn.Module) -> nn.Module | None:
    """What stands in for a folded batch norm: nothing for a plain one; its activation (and drop) for timm's
    BatchNormAct2d; None (not folded) for any other subclass, whose forward may do more than the affine map."""
    if type(bn) is nn.BatchNorm2d:
        return nn.Identity()
    if type(bn).__name__ == "BatchNormAct2d" and hasattr(bn, "act") and hasattr(bn, "drop"):
        return nn.Sequential(bn.drop, bn.act)
    return None


def _pairs(model: nn.Module, probe: torch.Tensor) -> tuple[list[tuple[str, str]], torch.Tensor]:
    """(conv, bn) names where the batch norm's input is that convolution's output, each called once; and the
    model's logits on the probe (the reference the folded copy must match)."""
    outputs: dict[str, object] = {}
    calls: dict[str, int] = {}
    inputs: dict[str, object] = {}
    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d):
            def on_conv(m, args, out, name=name):
                calls[name] = calls.get(name, 0) + 1
                outputs[name] = out  # kept alive for the probe, so an object's identity is not reused
            hooks.append(mod.register_forward_hook(on_conv))
        elif isinstance(mod, nn.BatchNorm2d) and _replacement(mod) is not None and mod.track_running_stats \
                and mod.running_mean is not None:
            def on_bn(m, args, name=name):
                calls[name] = calls.get(name, 0) + 1
                inputs[name] = args[0] if args else None
            hooks.append(mod.register_forward_pre_hook(on_bn))
    try:
        with torch.no_grad():
            want = logits_of(model(probe)).float()
    finally:
        for h in hooks:
            h.remove()
    by_output = {id(out): name for name, out in outputs.items() if calls[name] == 1}
    return [(by_output[id(x)], bn) for bn, x in inputs.items() if calls[bn] == 1 and id(x) in by_output], want


def fold_batchnorm(model: nn.Module, probe: torch.Tensor) -> tuple[nn.Module, int]:
    """(a copy of ``model`` with its conv -> batch norm pairs folded, how many); ``(model, 0)`` when the model
    is training, has no such pair, or the copy's logits on ``probe`` differ from the model's by more than
    rounding (a convolution's output also used elsewhere, say): the fold is an optimisation, never a change."""
    if model.training:
        return model, 0
    pairs, want = _pairs(model, probe)
    if not pairs:
        return model, 0
    folded = copy.deepcopy(model)
    n = 0
    for conv_name, bn_name in pairs:
        conv, bn = folded.get_submodule(conv_name), folded.get_submodule(bn_name)
        if conv.out_channels != bn.num_features:
            continue
        with torch.no_grad():
            scale = (bn.weight if bn.affine else torch.ones_like(bn.running_var)) / torch.sqrt(bn.running_var + bn.eps)
            shift = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
            bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            conv.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
            new_bias = (bias - bn.running_mean) * scale + shift
        conv.bias = nn.Parameter(new_bias, requires_grad=conv.weight.requires_grad)
        parent, _, attr = bn_name.rpartition(".")
        setattr(folded.get_submodule(parent) if parent else folded, attr, _replacement(bn))
        n += 1
    if n == 0:
        return model, 0
    with torch.no_grad():
        got = logits_of(folded(probe)).float()
    if want.shape != got.shape or not torch.isfinite(got).all() or \
            (want - got).abs().max() > ATOL + RTOL * want.abs().max():
        return model, 0
    return folded, n


def folded(model: nn.Module, channels: int, size: int, device) -> nn.Module:
    """``model``'s folded copy where there is one that computes the same logits, else ``model`` itself; the
    probe is two random [0, 1] images of the model's input shape (no data, so no query of the data)."""
    probe = torch.rand(2, channels, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    return fold_batchnorm(model, probe)[0]
