"""The UAP method protocol and its registry (timm-style: a method file registers itself by name and mode).

A method is a callable object made from its options (``schedule='linear'``, ``optimizer='adam'``...)
and called once per source chunk as ``method(state, x, y)``: it updates ``state.v`` in place, driving
its passes through ``state.passes()`` and its mini-batches through ``state.batches()``, and may return
the per-image success on the chunk at the end (else the caller measures it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from torch import Tensor

from robaudit.core.errors import BadInput

if TYPE_CHECKING:
    from robaudit.attacks.uap.state import UAPState


class UAPMethod(Protocol):
    def __call__(self, state: UAPState, x: Tensor, y: Tensor) -> Tensor | None: ...


@dataclass(frozen=True)
class MethodEntry:
    """A registered method: its factory, and whether its model runs channels-last by default.

    ``channels_last`` is off for DeepFool, whose per-image stop decisions would turn NHWC's
    batch-size-dependent rounding into different perturbations for different process counts, and
    for the sequential reference loop (one image at a time gains nothing from NHWC).
    """

    name: str
    mode: str
    factory: Callable[..., UAPMethod]
    channels_last: bool = True
    distributed: bool = True


_REGISTRY: dict[tuple[str, str], MethodEntry] = {}


def register(name: str, mode: str = "batched", *, channels_last: bool = True, distributed: bool = True):
    """Class decorator: make ``name`` (in ``mode``) a UAP method."""

    def deco(factory):
        _REGISTRY[(name, mode)] = MethodEntry(name, mode, factory, channels_last, distributed)
        return factory

    return deco


def method_names() -> list[str]:
    return sorted({name for name, _ in _REGISTRY})


def lookup(name: str, mode: str) -> MethodEntry:
    """The registered method, or a BadInput naming the choices."""
    if name not in method_names():
        raise BadInput(f"unknown UAP method {name!r}", f"choose one of {', '.join(method_names())}")
    entry = _REGISTRY.get((name, mode))
    if entry is None:
        modes = sorted(m for n, m in _REGISTRY if n == name)
        raise BadInput(f"mode {mode!r} is not available for method {name!r}",
                       f"{name} runs in mode {', '.join(repr(m) for m in modes)} (reference mode: fgsm only)")
    return entry


def create(entry: MethodEntry, options: dict) -> UAPMethod:
    """The method object for ``options`` (an unknown or invalid option is BadInput)."""
    try:
        return entry.factory(**options)
    except TypeError as exc:
        raise BadInput(f"bad {entry.name} ({entry.mode}) option: {exc}") from None
