"""U-SimBA: a universal perturbation from queries alone (Koga & Takemoto, Algorithms 2022), batched.

The published idea: SimBA's coordinate search made universal. v moves along one low-frequency DCT
direction at a time (the search starts in the top-left ``freq`` x ``freq`` block of DCT frequencies
and widens ring by ring); a step (+ or -) is kept when it lowers the attack objective summed over a
batch of the attacker's images. Only the model's outputs are used, through an
:class:`~robaudit.attacks.oracle.Oracle`: no gradient is ever taken.

This version is ours, written for throughput: each query round draws a mini-batch of B attacker
images and ``directions`` = K candidate directions, and forwards the B images under v and under all
2K candidates at once (B (2K + 1) queries). The best candidate is kept if it beats v on that batch;
when several directions improve, their sum (DCT directions are orthogonal) is tried on the same batch
(B more queries) and kept if it beats the best single step. The objective with scores is the
log-probability margin of the clean label over the runner-up (targeted: the runner-up over the
target), capped at ``-kappa`` so fooled images stop counting; with labels only it is the share of
the batch not yet fooled (flat between label flips: the weaker attacker, measured as such).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from robaudit.attacks.lp import perturb, project
from robaudit.attacks.oracle import BudgetExhausted, Oracle
from robaudit.attacks.uap.select import Plateau, Selection
from robaudit.attacks.uap.state import UAPOutcome

#: margin (log-probability) below which a fooled image no longer pulls on v
KAPPA = 1.0


def dct_matrix(n: int) -> Tensor:
    """The orthonormal DCT-II matrix (n, n): row k is the k-th cosine basis vector (unit L2 norm)."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    m = torch.cos(math.pi * (i + 0.5) * k / n) * math.sqrt(2.0 / n)
    m[0] /= math.sqrt(2.0)
    return m.float()


def block_order(channels: int, size: int, freq: int, generator: torch.Generator) -> Tensor:
    """Indices (c, u, w) flattened, low frequencies first: the ``freq`` x ``freq`` block in random order,
    then each further ring (max(u, w) = r) in random order (the published block order, stride 1)."""
    u = torch.arange(size)[:, None].expand(size, size)
    w = torch.arange(size)[None, :].expand(size, size)
    ring = torch.maximum(u, w).clamp(min=freq - 1).expand(channels, size, size).flatten()
    noise = torch.rand(ring.numel(), generator=generator)
    return torch.from_numpy(np.lexsort((noise.numpy(), ring.numpy())))


def default_step(norm: str, eps: float, size: int) -> float:
    """L2 length of one step: eps/8 under L2; under L-inf a step whose largest pixel change is eps/4
    (a 2-D DCT basis image peaks at 2/size)."""
    return eps / 8 if norm == "l2" else eps / 4 * size / 2


def objective(out: Tensor, y: Tensor, target: int | None, labels_only: bool) -> Tensor:
    """Per-image loss to lower (N,): capped log-prob margin (scores) or 1 - success (labels)."""
    if labels_only:
        hit = out == target if target is not None else out != y
        return (~hit).float()
    logp = out.clamp_min(1e-12).log()
    ref = torch.full_like(y, target) if target is not None else y
    own = logp.gather(1, ref[:, None])[:, 0]
    other = logp.scatter(1, ref[:, None], float("-inf")).amax(1)
    margin = other - own if target is not None else own - other
    return margin.clamp(min=-KAPPA)


def usimba(oracle: Oracle, x: Tensor, *, norm: str, eps: float, target: int | None = None, clip: bool = True,
           step: float | None = None, directions: int = 8, batch_size: int = 32, freq: int | None = None,
           seed: int = 0, selection: Selection | None = None, reserve: int = 0, init: Tensor | None = None,
           progress: Callable | None = None) -> UAPOutcome:
    """Build v (1, C, S, S) in the L-``norm`` ball of radius ``eps`` from the attacker's images ``x`` (N, C, S, S)
    in [0, 1] until the oracle's budget (less ``reserve`` queries kept for the last selection check) runs out.

    ``selection`` scores v through the same oracle every ``selection.every`` queries (its queries count);
    its best v is returned. ``outcome.images_seen`` is the number of queries used by the search."""
    start = time.perf_counter()
    n, c, s = len(x), x.shape[1], x.shape[-1]
    gen = torch.Generator().manual_seed(seed)
    labels_only = oracle.output == "labels"
    k_dirs, b = max(1, int(directions)), max(1, min(int(batch_size), n))
    freq = freq or max(4, s // 8)
    alpha = step if step is not None else default_step(norm, eps, s)
    dct = dct_matrix(s)
    order, pos = block_order(c, s, freq, gen), 0
    v = torch.zeros(1, c, s, s) if init is None else project(init.reshape(1, c, s, s).float(), norm, eps)
    history: list[tuple[int, float]] = []
    rounds = accepted = 0
    recent: list[float] = []
    plateau = False
    try:
        y = oracle.labels(x) if target is None else torch.zeros(n, dtype=torch.long)
        perm, cursor = torch.randperm(n, generator=gen), 0
        while True:
            cost = b * (2 * k_dirs + 2)
            left = oracle.remaining
            if left is not None and left - reserve < cost:
                break
            if cursor + b > n:
                perm, cursor = torch.randperm(n, generator=gen), 0
            idx = perm[cursor:cursor + b]
            cursor += b
            if pos + k_dirs > len(order):
                order, pos = block_order(c, s, freq, gen), 0
            chosen = order[pos:pos + k_dirs]
            pos += k_dirs
            q = _basis(chosen, c, s, dct)  # (K, C, S, S), unit L2
            cands = torch.cat([v, project(v + alpha * q, norm, eps), project(v - alpha * q, norm, eps)])
            xb, yb = x[idx], y[idx]
            out = oracle(perturb(xb[None] + cands[:, None], torch.zeros(()), clip).flatten(0, 1))
            loss = objective(out, yb.repeat(len(cands)), target, labels_only).view(len(cands), b).mean(1)
            base = float(loss[0])
            hit = (out[:b].argmax(1) if not labels_only else out[:b])
            recent = (recent + [float(((hit == target) if target is not None else (hit != yb)).float().mean())])[-20:]
            best = int(loss.argmin())
            new_v, new_loss = (cands[best:best + 1], float(loss[best])) if float(loss[best]) < base else (v, base)
            plus, minus = loss[1:1 + k_dirs], loss[1 + k_dirs:]
            signs = torch.where(plus <= minus, 1.0, -1.0)
            good = torch.minimum(plus, minus) < base
            if int(good.sum()) >= 2:
                comb = project(v + alpha * (signs[good, None, None, None] * q[good]).sum(0, keepdim=True), norm, eps)
                out_c = oracle(perturb(xb + comb, torch.zeros(()), clip))
                loss_c = float(objective(out_c, yb, target, labels_only).mean())
                if loss_c < new_loss:
                    new_v, new_loss = comb, loss_c
            if new_v is not v:
                accepted += 1
            v = new_v
            rounds += 1
            history.append((oracle.queries, float(np.mean(recent))))
            if progress is not None:
                progress(oracle.queries)
            if selection is not None and selection.due(oracle.queries):
                selection.check(v, oracle.queries)
    except Plateau:
        plateau = True
    except BudgetExhausted:
        pass
    if selection is not None and not plateau:
        try:
            selection.check(v, oracle.queries)
        except (Plateau, BudgetExhausted):
            pass
    best_v = selection.best_v.cpu() if selection is not None and selection.best_v is not None else v
    return UAPOutcome(v=best_v.detach().clone(), source_fooling_rate=float(np.mean(recent)) if recent else 0.0,
                      iterations=rounds, images_seen=oracle.queries, seconds=time.perf_counter() - start,
                      history=history, final_v=v if selection is not None else None, selection=selection,
                      plateau=plateau)


def _basis(indices: Tensor, c: int, s: int, dct: Tensor) -> Tensor:
    """The 2-D DCT basis images of flattened (c, u, w) indices: (K, C, S, S), each of unit L2 norm."""
    ch, rest = indices // (s * s), indices % (s * s)
    u, w = rest // s, rest % s
    img = dct[u][:, :, None] * dct[w][:, None, :]  # (K, S, S)
    q = torch.zeros(len(indices), c, s, s)
    q[torch.arange(len(indices)), ch] = img
    return q
