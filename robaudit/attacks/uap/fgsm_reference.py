"""The published UAP method as ART runs it, one image at a time (``mode="reference"``).

This is ART's ``UniversalPerturbation`` (attacker 'fgsm') and, with a target,
``TargetedUniversalPerturbation`` (Hirano & Takemoto, targeted FGSM), step for step, in torch:
  * order: ``random.Random(seed).sample`` per pass (the same draws as ``random.seed(seed)`` + ART);
  * labels: the clean predictions (non-targeted) or the target;
  * per image, if x + v is not yet fooled (checked on x + v unclipped, as ART does), one L-inf FGSM
    step of ``step_size`` on x + v, clipped to [0, 1] when ``clip`` (ART's clip_values=(0, 1));
    if that step fools the model, v = project(x_adv - x);
  * after each pass the success rate on the chunk (x + v clipped when ``clip``); stop at
    ``max_iter`` passes or once it reaches 1 - delta.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from robaudit.attacks.uap.registry import register
from robaudit.attacks.uap.state import UAPState


def _fgsm(run: UAPState, x: Tensor, label: Tensor, step: float) -> Tensor:
    """ART's FastGradientMethod, L-inf, one sample: x + step * sign(grad CE), clipped, targeted descends."""
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(run.model(x), label), x)
    sign = torch.nan_to_num(grad).sign()
    x = x.detach()
    adv = x + step * (-sign if run.targeted else sign)
    if run.cfg.clip:
        adv = adv.clamp(0.0, 1.0)
    return x + (adv - x).clamp(-step, step)  # ART re-projects onto the step ball around x


@register("fgsm", "reference", channels_last=False, distributed=False)
class ReferenceFGSM:
    """ART's sequential loop on one chunk; returns the pass-end success per image. No options."""

    def __call__(self, run: UAPState, x: Tensor, y: Tensor) -> Tensor:
        step, n, success = run.base_step(x), len(x), None
        labels = run.labels(y).to(run.device)
        for _ in run.passes():
            for j in run.py_random.sample(range(n), n):
                xi, li = x[j:j + 1].to(run.device, torch.float32), labels[j:j + 1]
                with torch.no_grad():
                    current = run.model(xi + run.v).argmax(1)
                if not bool(run.fooled(current, li)):
                    adv = _fgsm(run, xi + run.v, li, step)
                    with torch.no_grad():
                        new = run.model(adv).argmax(1)
                    if bool(run.fooled(new, li) if run.targeted else new != current):
                        run.set_v(adv - xi)
                run.tick(1)
            success = run.evaluate(x, y)
            rate = float(success.float().mean())
            run.checkpoint(rate)
            run.end_pass(rate)
        return success
