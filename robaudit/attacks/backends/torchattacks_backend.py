"""torchattacks adapter: native PyTorch, inputs in [0, 1], no NumPy round trips."""

from __future__ import annotations

import torch
from torch import Tensor

from robaudit.attacks.backends import (
    CW_CONFIDENCE,
    CW_CONST,
    CW_LR,
    DEEPFOOL_OVERSHOOT,
    AttackConfig,
    Backend,
)


class TorchattacksBackend(Backend):
    name = "torchattacks"
    dist = "torchattacks"
    supports = {("fgsm", "linf"): True, ("pgd", "linf"): True, ("pgd", "l2"): True, ("cw", "l2"): True,
                ("deepfool", "l2"): False, ("autoattack", "linf"): False, ("autoattack", "l2"): False}

    def build(self, cfg: AttackConfig):
        import torchattacks as ta

        m = self.model
        if cfg.attack == "fgsm":
            return ta.FGSM(m, eps=cfg.eps)
        if cfg.attack == "pgd":
            pgd = ta.PGD if cfg.norm == "linf" else ta.PGDL2
            return pgd(m, eps=cfg.eps, alpha=cfg.step_size, steps=cfg.steps, random_start=cfg.random_start)
        if cfg.attack == "cw":
            return ta.CW(m, c=CW_CONST, kappa=CW_CONFIDENCE, steps=cfg.steps, lr=CW_LR)
        if cfg.attack == "deepfool":
            return ta.DeepFool(m, steps=cfg.steps, overshoot=DEEPFOOL_OVERSHOOT)
        if cfg.attack == "autoattack":
            return _autoattack(m, cfg)
        raise KeyError(cfg.attack)

    def perturb(self, x: Tensor, y: Tensor, cfg: AttackConfig) -> Tensor:
        atk = self.build(cfg)
        if cfg.targeted:
            atk.set_mode_targeted_by_function(lambda images, labels: torch.full_like(labels, cfg.target), quiet=True)
        return atk(x, y)

    def describe(self, cfg: AttackConfig) -> str:
        calls = {
            "fgsm": "FGSM(eps)",
            "pgd": f"{'PGD' if cfg.norm == 'linf' else 'PGDL2'}(eps, alpha=step size, steps={cfg.steps}, "
                   f"random_start={cfg.random_start})",
            "cw": f"CW(c={CW_CONST}, kappa={CW_CONFIDENCE}, steps={cfg.steps}, lr={CW_LR})",
            "deepfool": f"DeepFool(steps={cfg.steps}, overshoot={DEEPFOOL_OVERSHOOT})",
            "autoattack": "MultiAttack([" + ", ".join(_autoattack_parts(cfg)) + f"], norm={_ta_norm(cfg.norm)!r}, "
                          f"seed={cfg.seed})",
        }
        return "torchattacks." + calls[cfg.attack]


def _ta_norm(norm: str) -> str:
    return "Linf" if norm == "linf" else "L2"


def _autoattack_parts(cfg: AttackConfig) -> list[str]:
    parts = [f"APGD(loss='ce', steps={cfg.steps})", f"APGDT(steps={cfg.steps}, n_classes={cfg.num_classes})",
             f"FAB(multi_targeted=True, steps={cfg.steps}, n_classes={cfg.num_classes})", "Square(n_queries=5000)"]
    return parts if cfg.num_classes >= 4 else [parts[0]] + parts[2:]


def _autoattack(m, cfg: AttackConfig):
    """AutoAttack, standard version, with the reference implementation's iteration counts.

    ``torchattacks.AutoAttack`` builds its APGD, APGD-T and FAB with their 10-step defaults; the
    reference (Croce & Hein, fra31/auto-attack) runs 100, so the ensemble is assembled here with
    ``cfg.steps`` (default 100). APGD-T's targeted DLR loss needs at least 4 classes; below that it is
    left out (the reference warns the same) and the result notes say so.
    """
    import torchattacks as ta

    norm, k, s = _ta_norm(cfg.norm), cfg.num_classes, cfg.steps
    attacks = [ta.APGD(m, norm=norm, eps=cfg.eps, steps=s, loss="ce", n_restarts=1, seed=cfg.seed)]
    if k >= 4:
        attacks.append(ta.APGDT(m, norm=norm, eps=cfg.eps, steps=s, n_restarts=1, n_classes=k, seed=cfg.seed))
    attacks += [ta.FAB(m, norm=norm, eps=cfg.eps, steps=s, multi_targeted=True, n_classes=k, n_restarts=1,
                       seed=cfg.seed),
                ta.Square(m, norm=norm, eps=cfg.eps, n_queries=5000, n_restarts=1, seed=cfg.seed)]
    return ta.MultiAttack(attacks)
