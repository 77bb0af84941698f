"""SGD-UAP (Shafahi et al., AAAI 2020; Co et al., sgd-uap-torch): optimise v itself on mini-batch losses.

Each mini-batch takes one step on the mean loss over the batch, through x + v (clipped when
``clip``), then projects v. Non-targeted: ascend the cross-entropy of the clean prediction, or with
``loss="clamped"`` of min(CE, beta), so that already-fooled images stop dominating the gradient
(beta = 12 as in Co et al.'s sgd-uap-torch). Targeted: descend the cross-entropy to the target.
Steps are sign steps of ``step_size`` or, with ``optimizer="adam"``, Adam steps with learning rate
``step_size`` (its state carried across chunks). v starts from ``init`` when given.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from robaudit.attacks.lp import perturb
from robaudit.attacks.uap.registry import register
from robaudit.attacks.uap.state import UAPState
from robaudit.core.errors import BadInput


@register("sgd")
class SGDUAP:
    """Chunk loop of SGD-UAP. Options: ``optimizer`` ('sign' | 'adam'), ``loss`` ('ce' | 'clamped'), ``beta``."""

    def __init__(self, optimizer: str = "sign", loss: str = "ce", beta: float = 12.0):
        if optimizer not in ("sign", "adam") or loss not in ("ce", "clamped"):
            raise BadInput(f"sgd: unknown optimizer {optimizer!r} or loss {loss!r}",
                           "optimizer: sign or adam; loss: ce or clamped")
        self.optimizer, self.loss, self.beta = optimizer, loss, beta
        self._m = self._s = None
        self._t = 0

    def __call__(self, run: UAPState, x: Tensor, y: Tensor) -> None:
        lr = run.base_step(x)
        for _ in run.passes():
            for xb, lb in run.batches(x, y):
                v = run.v.clone().requires_grad_(True)
                logits = run.model(perturb(xb, v, run.cfg.clip))
                ce = F.cross_entropy(logits, lb, reduction="none")
                if run.targeted:
                    objective = run.group.batch_mean(ce)
                else:
                    objective = -run.group.batch_mean(ce.clamp(max=self.beta) if self.loss == "clamped" else ce)
                (grad,) = run.group.all_sum(torch.autograd.grad(objective, v)[0])  # summed over ranks
                update = grad.sign() * lr if self.optimizer == "sign" else self._adam(grad, lr)
                run.set_v(run.v - update)
                run.tick(len(xb), run.fooled(logits.argmax(1), lb).sum())

    def _adam(self, g: Tensor, lr: float, b1: float = 0.9, b2: float = 0.999) -> Tensor:
        if self._m is None:
            self._m, self._s = torch.zeros_like(g), torch.zeros_like(g)
        self._t += 1
        self._m.mul_(b1).add_(g, alpha=1 - b1)
        self._s.mul_(b2).addcmul_(g, g, value=1 - b2)
        m_hat, s_hat = self._m / (1 - b1 ** self._t), self._s / (1 - b2 ** self._t)
        return lr * m_hat / (s_hat.sqrt() + 1e-8)
