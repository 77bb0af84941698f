"""Moosavi-Dezfooli et al. (2017) UAP with a batched DeepFool inner attack.

For each mini-batch, DeepFool runs at once on the images that x + v does not fool yet, giving each
image the small step r_i over its nearest (linearised) class boundary among the top ``candidates``
classes (targeted: over the boundary to the target class). The steps are then applied one after
another as in the original algorithm, v <- project(v + r_i), all computed at the v of the batch
start. The DeepFool step is the L2 one for an L2 UAP and the L-inf one (dual L1 norm, sign
direction) for an L-inf UAP.
"""

from __future__ import annotations

import torch
from torch import Tensor

from robaudit.attacks.lp import perturb
from robaudit.attacks.uap.registry import register
from robaudit.attacks.uap.state import UAPState
from robaudit.core.errors import BadInput


def deepfool(model, x: Tensor, labels: Tensor, norm: str, *, target: int | None = None, overshoot: float = 0.02,
             max_iter: int = 10, candidates: int = 10, clip: bool = True) -> Tensor:
    """Batched DeepFool steps (N, C, H, W), already scaled by 1 + overshoot.

    Non-targeted: move each x off its ``labels`` class towards the nearest of the top ``candidates``
    other classes. Targeted: move it towards the boundary between its current class and ``target``.
    """
    others = None
    r_tot = torch.zeros_like(x)
    rows = torch.arange(len(x), device=x.device)
    for _ in range(max_iter):
        xa = perturb(x, (1 + overshoot) * r_tot, clip).requires_grad_(True)
        logits = model(xa)
        pred = logits.argmax(1)
        if others is None:  # the top classes at the start, the label excluded
            k = min(candidates, logits.shape[1])
            others = logits.detach().scatter(1, labels[:, None], float("-inf")).topk(k - 1, dim=1).indices
        if target is None:
            active, base, cands = pred == labels, labels, others
        else:
            active, base, cands = pred != target, pred, torch.full_like(others[:, :1], target)
        if not bool(active.any()):
            break
        diffs = logits.gather(1, cands) - logits.gather(1, base[:, None])  # < 0 while base wins
        m = cands.shape[1]
        grads = torch.stack([torch.autograd.grad(diffs[:, j].sum(), xa, retain_graph=j < m - 1)[0]
                             for j in range(m)], dim=1)  # (N, m, C, H, W)
        dist = diffs.detach().abs() / (grads.flatten(2).norm(p=2 if norm == "l2" else 1, dim=2) + 1e-8)
        best = dist.argmin(1)
        w, d = grads[rows, best], (dist[rows, best] + 1e-4).view(-1, 1, 1, 1)
        if norm == "l2":
            step = d * w / (w.flatten(1).norm(dim=1).view(-1, 1, 1, 1) + 1e-8)
        else:
            step = d * w.sign()
        r_tot = r_tot + step * active.view(-1, 1, 1, 1)
    return (1 + overshoot) * r_tot


@register("deepfool", channels_last=False)
class DeepFoolUAP:
    """Chunk loop of the DeepFool UAP. Options: ``overshoot`` (0.02), ``df_iter`` (10), ``candidates`` (10)."""

    def __init__(self, overshoot: float = 0.02, df_iter: int = 10, candidates: int = 10):
        if overshoot < 0 or df_iter < 1 or candidates < 2:
            raise BadInput("deepfool needs overshoot >= 0, df_iter >= 1 and candidates >= 2 (the label + 1)")
        self.overshoot, self.df_iter, self.candidates = overshoot, df_iter, candidates

    def __call__(self, run: UAPState, x: Tensor, y: Tensor) -> None:
        for _ in run.passes():
            for xb, lb in run.batches(x, y):
                xa = perturb(xb, run.v, run.cfg.clip)
                with torch.no_grad():
                    fooled = run.fooled(run.model(xa).argmax(1), lb)
                todo = (~fooled).nonzero().flatten()
                steps = xa[:0]
                if len(todo):
                    steps = deepfool(run.model, xa[todo], lb[todo], run.cfg.norm, target=run.cfg.target,
                                     overshoot=self.overshoot, max_iter=self.df_iter, candidates=self.candidates,
                                     clip=run.cfg.clip)
                steps = run.group.gather_ordered(steps, todo)  # every rank's steps, in the mini-batch's order
                for r in steps:
                    run.set_v(run.v + r[None])
                run.tick(len(xb), fooled.sum())
