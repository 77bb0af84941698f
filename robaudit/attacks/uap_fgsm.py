"""The published UAP method: iterative FGSM steps accumulated into one projected perturbation.

``reference_chunk`` is ART's ``UniversalPerturbation`` (attacker 'fgsm') and, with a target,
``TargetedUniversalPerturbation`` (Hirano & Takemoto, targeted FGSM), step for step, in torch:
  * order: ``random.Random(seed).sample`` per pass (the same draws as ``random.seed(seed)`` + ART);
  * labels: the clean predictions (non-targeted) or the target;
  * per image, if x + v is not yet fooled (checked on x + v unclipped, as ART does), one L-inf FGSM
    step of ``step_size`` on x + v, clipped to [0, 1] when ``clip`` (ART's clip_values=(0, 1));
    if that step fools the model, v = project(x_adv - x);
  * after each pass the success rate on the chunk (x + v clipped when ``clip``); stop at
    ``max_iter`` passes or once it reaches 1 - delta.

``batched_chunk`` takes every not-yet-fooled image's FGSM step of a mini-batch at once, at the same
v: v <- project(v + step_k * sum_i sign(g_i) / sqrt(n)), g_i the gradient of image i's loss (ascending
the cross-entropy of its clean prediction, or descending that of the target), n the number of those
images. Pixels where the n steps agree move sqrt(n) steps, others about one, as n sequential steps
in random-walk fashion would. ``schedule="linear"`` (default) decays step_k linearly from
``step_size`` to 0 over the chunk's max_iter x ceil(N / batch) updates, starting from twice the
constant default (so the total movement is the same): coarse steps find the universal direction,
fine ones settle the last images instead of knocking fooled ones back (on 512 ImageNet photos,
lite0, L-inf 4 %: 0.975 after 4 passes against a 0.91-0.93 plateau for ``"constant"``; one pass
0.857 vs 0.791; benchmarks/README.md). While few images are fooled, one forward and one backward
per mini-batch (the fooled images' loss masked); once more than a third of the previous mini-batch
was fooled, a gradient-free forward first picks the unfooled images and only they are
back-propagated (the same update, cheaper: like ART, a fooled image then costs one forward).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from robaudit.attacks.lp import perturb
from robaudit.attacks.uap import UAPRun, default_step
from robaudit.errors import BadInput


def _fgsm(run: UAPRun, x: Tensor, label: Tensor, step: float) -> Tensor:
    """ART's FastGradientMethod, L-inf, one sample: x + step * sign(grad CE), clipped, targeted descends."""
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(run.model(x), label), x)
    sign = torch.nan_to_num(grad).sign()
    x = x.detach()
    adv = x + step * (-sign if run.targeted else sign)
    if run.clip:
        adv = adv.clamp(0.0, 1.0)
    return x + (adv - x).clamp(-step, step)  # ART re-projects onto the step ball around x


def reference_chunk(run: UAPRun, x: Tensor, y: Tensor) -> Tensor:
    """ART's sequential loop on one chunk; returns the pass-end success per image."""
    step, n, success = default_step(run, x), len(x), None
    labels = run.labels(y).to(run.device)
    for _ in range(run.max_iter):
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
        run.iterations += 1
        success = run.evaluate(x, y)
        rate = float(success.float().mean())
        run.checkpoint(rate)
        if rate >= 1 - run.delta:
            break
    return success


def _signs(run: UAPRun, xa: Tensor, lb: Tensor) -> tuple[Tensor, Tensor]:
    """Sum over the unfooled images of sign(gradient of their loss), and the fooled mask."""
    xa = xa.detach().requires_grad_(True)
    logits = run.model(xa)
    fooled = run.fooled(logits.argmax(1), lb)
    loss = (F.cross_entropy(logits, lb, reduction="none") * ~fooled).sum()
    (grad,) = torch.autograd.grad(loss, xa)
    return grad.sign().sum(0, keepdim=True), fooled


SCHEDULES = ("linear", "constant")


def batched_chunk(run: UAPRun, x: Tensor, y: Tensor, schedule: str = "linear") -> None:
    """Mini-batch FGSM: v <- project(v +/- step_k * (sum of the unfooled images' gradient signs) / sqrt(n))."""
    if schedule not in SCHEDULES:
        raise BadInput(f"fgsm: unknown schedule {schedule!r}", f"choose one of {', '.join(SCHEDULES)}")
    linear = schedule == "linear"
    step0 = run.step_size if run.step_size is not None else default_step(run, x) * (2 if linear else 1)
    n = len(x) if run.dist is None else run.dist.layout(len(x))[0]  # the global chunk
    updates, k, fooled_share = run.max_iter * -(-n // run.batch_size), 0, 0.0
    for _ in run.passes():
        for xb, lb in run.batches(x, y):
            step = step0 * (1 - k / updates) if linear else step0
            k += 1
            xa = perturb(xb, run.v, run.clip)
            if fooled_share > 1 / 3:  # cheaper to find the unfooled without a graph first
                with torch.no_grad():
                    fooled = run.fooled(run.model(xa).argmax(1), lb)
                todo = ~fooled
                signs = _signs(run, xa[todo], lb[todo])[0] if bool(todo.any()) else torch.zeros_like(run.v)
            else:
                signs, fooled = _signs(run, xa, lb)
            signs, todo = run.reduce(signs, (~fooled).sum())  # over all ranks
            direction = signs / todo.clamp(min=1).sqrt()
            run.set_v(run.v + step * (-direction if run.targeted else direction))
            run.tick(len(xb), fooled.sum())
            fooled_share = float(fooled.float().mean()) if len(xb) else fooled_share
