"""Per-sample attack backends: torchattacks, foolbox and ART behind one small interface.

Every adapter takes images in [0, 1] and a model that owns its normalisation (``Normalized``); its
output is reduced to a logits tensor once, here (:class:`LogitsModel`). An adapter only maps a
robaudit :class:`AttackConfig` onto its library's attack and returns the adversarial images; judging
success, epsilons and statistics is done once, in :mod:`robaudit.attacks.persample`, for all of them.

Attacks (``ATTACKS``) are either *fixed-eps* (run once per epsilon) or *minimal-norm* (run once
without a bound; an epsilon then only thresholds the size of the perturbation found).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib import metadata
from typing import ClassVar

from torch import Tensor, nn

from robaudit.core.errors import BadInput, unknown_name
from robaudit.core.specs import canonical_norm
from robaudit.models.normalize import logits_of

#: backends in order of preference when ``backend`` is not given
BACKENDS = ("torchattacks", "foolbox", "art")
_MODULES = {"torchattacks": ("torchattacks_backend", "TorchattacksBackend"),
            "foolbox": ("foolbox_backend", "FoolboxBackend"),
            "art": ("art_backend", "ArtBackend")}

# Parameters that are not exposed as options but alter numbers: shared by every adapter, and recorded.
#: DeepFool's overshoot (torchattacks ``overshoot``, foolbox ``overshoot``, ART ``epsilon``)
DEEPFOOL_OVERSHOOT = 0.02
#: Carlini-Wagner L2: Adam learning rate, confidence (kappa), initial constant c and its binary search
#: (torchattacks' CW has no search: it runs with c fixed at ``CW_CONST``)
CW_LR = 0.01
CW_CONFIDENCE = 0.0
CW_CONST = 1.0
CW_SEARCH_STEPS = 5
#: PGD step size relative to eps, times 1/steps (Madry et al.: 2.5 * eps / steps)
PGD_REL_STEP = 2.5


@dataclass(frozen=True)
class AttackDef:
    """One attack as robaudit names it, independent of the library that runs it."""

    name: str
    title: str
    norms: tuple[str, ...]
    default_norm: str
    minimal: bool
    default_steps: int | None

    @property
    def mode(self) -> str:
        return "minimal-norm" if self.minimal else "fixed-eps"


ATTACKS: dict[str, AttackDef] = {a.name: a for a in (
    AttackDef("fgsm", "FGSM (L-inf) / FGM (L2): one gradient step of size eps", ("linf", "l2"), "linf", False, None),
    AttackDef("pgd", "PGD: projected gradient descent, no random start", ("linf", "l2"), "linf", False, 20),
    AttackDef("autoattack", "AutoAttack, standard (APGD-CE, APGD-T, FAB-T, Square); steps: APGD/FAB iterations",
              ("linf", "l2"), "linf", False, 100),
    AttackDef("cw", "Carlini-Wagner L2 (minimal norm)", ("l2",), "l2", True, 100),
    AttackDef("deepfool", "DeepFool (minimal norm)", ("l2", "linf"), "l2", True, 50),
    AttackDef("fmn", "Fast Minimum-Norm attack (minimal norm)", ("linf",), "linf", True, 100),
)}
#: (attack, norm) pairs a library ships but robaudit withholds, with the reason shown to the user
WITHHELD = {("fmn", "l2"): "foolbox 3.3.4's L2FMNAttack never projects onto its norm ball (its factor is "
                           "norms / norms), so the norms it finds are its first step size, not minimal"}
ALIASES = {"cw-l2": "cw", "cwl2": "cw", "carlini-wagner": "cw", "aa": "autoattack", "fgm": "fgsm",
           "df": "deepfool"}


@dataclass(frozen=True)
class AttackConfig:
    """What an adapter receives: one attack at one epsilon (``eps=None``: unbounded, minimal-norm)."""

    attack: str
    norm: str
    eps: float | None
    num_classes: int
    steps: int | None = None
    step_size: float | None = None
    random_start: bool = False
    target: int | None = None
    seed: int = 0

    @property
    def targeted(self) -> bool:
        return self.target is not None


class LogitsModel(nn.Module):
    """``model`` with its output reduced to the logits tensor (``logits_of``): what every adapter attacks."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.train(model.training)  # mirror the wrapped model (torchattacks restores the wrapper's mode)

    def forward(self, x: Tensor) -> Tensor:
        return logits_of(self.model(x))


class Backend:
    """Base adapter. Subclasses set ``name``, ``dist`` and ``supports`` and implement ``perturb``."""

    name: ClassVar[str]
    #: distribution name, for the version recorded in results
    dist: ClassVar[str]
    #: (attack, norm) -> whether a targeted version is available
    supports: ClassVar[dict[tuple[str, str], bool]]

    def __init__(self, model: nn.Module):
        self.model = model if isinstance(model, LogitsModel) else LogitsModel(model)

    def perturb(self, x: Tensor, y: Tensor, cfg: AttackConfig) -> Tensor:
        """Adversarial images for ``x`` (N,C,H,W) in [0, 1] with true labels ``y`` (N,), on x's device."""
        raise NotImplementedError

    def describe(self, cfg: AttackConfig) -> str:
        """The library call this backend makes for ``cfg`` (recorded in the result notes)."""
        raise NotImplementedError

    @classmethod
    def version(cls) -> str:
        try:
            return metadata.version(cls.dist)
        except metadata.PackageNotFoundError:
            return "unknown"


def backend_class(name: str) -> type[Backend]:
    """The adapter class for a backend name (imports its module, not its library)."""
    if name not in _MODULES:
        raise unknown_name("backend", name, BACKENDS)
    module, cls = _MODULES[name]
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


def create_backend(name: str, model: nn.Module) -> Backend:
    return backend_class(name)(model)


def support_matrix() -> dict[str, dict[str, tuple[str, ...]]]:
    """attack -> backend -> norms it implements (empty tuple: not available)."""
    classes = {b: backend_class(b) for b in BACKENDS}
    return {a: {b: tuple(n for n in ATTACKS[a].norms if (a, n) in classes[b].supports) for b in BACKENDS}
            for a in ATTACKS}


def backends_for(attack: str, norm: str, targeted: bool = False) -> list[str]:
    """Backends that implement ``attack`` under ``norm`` (and targeted, if asked), in preference order."""
    out = []
    for b in BACKENDS:
        sup = backend_class(b).supports
        if (attack, norm) in sup and (sup[(attack, norm)] or not targeted):
            out.append(b)
    return out


def attack_def(name: str) -> AttackDef:
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in ATTACKS:
        raise unknown_name("attack", name, list(ATTACKS) + list(ALIASES))
    return ATTACKS[key]


def resolve(attack: str, norm: str | None = None, backend: str | None = None,
            targeted: bool = False) -> tuple[AttackDef, str, str]:
    """Check (attack, norm, backend, targeted) and fill defaults -> (attack, norm, backend). BadInput if not run."""
    spec = attack_def(attack)
    norm = spec.default_norm if norm is None else canonical_norm(norm)
    if (spec.name, norm) in WITHHELD:
        raise BadInput(f"{spec.name} ({norm}) is not offered: {WITHHELD[spec.name, norm]}",
                       f"use --norm {' or '.join(spec.norms)}, or a minimal-norm attack with an {norm} version")
    if norm not in spec.norms:
        raise BadInput(f"attack {spec.name!r} has no {norm} version", f"use --norm {' or '.join(spec.norms)}")
    if backend is not None and backend not in _MODULES:
        raise unknown_name("backend", backend, BACKENDS)
    able = backends_for(spec.name, norm, targeted)
    what = f"{'targeted ' if targeted else ''}{spec.name} ({norm})"
    if not able:
        untargeted = backends_for(spec.name, norm)
        raise BadInput(f"no backend implements {what}",
                       "drop --target" if targeted and untargeted else f"use --norm {' or '.join(spec.norms)}")
    if backend is None:
        return spec, norm, able[0]
    if backend not in able:
        raise BadInput(f"backend {backend!r} does not implement {what}; available in: {', '.join(able)}",
                       f"use --backend {able[0]}")
    return spec, norm, backend


__all__ = ["ATTACKS", "BACKENDS", "AttackConfig", "AttackDef", "Backend", "LogitsModel", "attack_def",
           "backend_class", "backends_for", "create_backend", "resolve", "support_matrix"]
