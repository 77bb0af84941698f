"""ART adapter: ``PyTorchClassifier`` with ``clip_values=(0, 1)``; ART's API forces a NumPy round trip."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch
from torch import Tensor

from robaudit.attacks.backends import (
    CW_CONFIDENCE,
    CW_CONST,
    CW_LR,
    CW_SEARCH_STEPS,
    DEEPFOOL_OVERSHOOT,
    AttackConfig,
    Backend,
)
from robaudit.core.errors import BadInput


class ArtBackend(Backend):
    name = "art"
    dist = "adversarial-robustness-toolbox"
    supports = {("fgsm", "linf"): True, ("fgsm", "l2"): True, ("pgd", "linf"): True, ("pgd", "l2"): True,
                ("cw", "l2"): True, ("deepfool", "l2"): False}

    def __init__(self, model):
        super().__init__(model)
        self._classifier = None

    def classifier(self, x: Tensor, num_classes: int):
        from art.estimators.classification import PyTorchClassifier

        if self._classifier is None or self._classifier.input_shape != tuple(x.shape[1:]):
            if x.device.type not in ("cpu", "cuda"):
                raise BadInput(f"the ART backend runs on cpu or cuda, not {x.device.type}",
                               "use --device cpu, or --backend torchattacks/foolbox")
            # ART moves the model to its device, and for "gpu" that is the current CUDA device: make it x's
            cuda = x.device.type == "cuda"
            with torch.cuda.device(x.device) if cuda else nullcontext():
                self._classifier = PyTorchClassifier(
                    self.model, loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                    nb_classes=num_classes, clip_values=(0.0, 1.0), device_type="gpu" if cuda else "cpu")
        return self._classifier

    def build(self, clf, cfg: AttackConfig, batch_size: int):
        import art.attacks.evasion as ae

        norm = np.inf if cfg.norm == "linf" else 2
        common = {"targeted": cfg.targeted, "batch_size": batch_size}
        if cfg.attack == "fgsm":
            return ae.FastGradientMethod(clf, norm=norm, eps=cfg.eps, num_random_init=0, **common)
        if cfg.attack == "pgd":
            return ae.ProjectedGradientDescent(clf, norm=norm, eps=cfg.eps, eps_step=cfg.step_size,
                                               max_iter=cfg.steps, num_random_init=int(cfg.random_start),
                                               random_eps=False, verbose=False, **common)
        if cfg.attack == "cw":
            return ae.CarliniL2Method(clf, confidence=CW_CONFIDENCE, learning_rate=CW_LR,
                                      binary_search_steps=CW_SEARCH_STEPS, max_iter=cfg.steps,
                                      initial_const=CW_CONST, verbose=False, **common)
        if cfg.attack == "deepfool":
            return ae.DeepFool(clf, max_iter=cfg.steps, epsilon=DEEPFOOL_OVERSHOOT, nb_grads=cfg.num_classes,
                               batch_size=batch_size, verbose=False)
        raise KeyError(cfg.attack)

    def perturb(self, x: Tensor, y: Tensor, cfg: AttackConfig) -> Tensor:
        clf = self.classifier(x, cfg.num_classes)
        labels = torch.full_like(y, cfg.target) if cfg.targeted else y
        adv = self.build(clf, cfg, len(x)).generate(x.detach().cpu().numpy(), labels.cpu().numpy())
        return torch.from_numpy(adv).to(x.device)

    def describe(self, cfg: AttackConfig) -> str:
        return "art.attacks.evasion." + {
            "fgsm": "FastGradientMethod(eps, num_random_init=0)",
            "pgd": f"ProjectedGradientDescent(eps, eps_step=step size, max_iter={cfg.steps}, "
                   f"num_random_init={int(cfg.random_start)}, random_eps=False)",
            "cw": f"CarliniL2Method(confidence={CW_CONFIDENCE}, learning_rate={CW_LR}, binary_search_steps="
                  f"{CW_SEARCH_STEPS}, max_iter={cfg.steps}, initial_const={CW_CONST})",
            "deepfool": f"DeepFool(max_iter={cfg.steps}, epsilon={DEEPFOOL_OVERSHOOT}, nb_grads={cfg.num_classes})",
        }[cfg.attack] + " on PyTorchClassifier(clip_values=(0, 1))"
