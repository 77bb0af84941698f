"""Racing builds over one source stream: successive halving instead of running every candidate to the end.

Every live build (:class:`~robaudit.attacks.uap.build.Builder`) is fed each chunk of the stream in
turn, so the stream is decoded once and all builds see the same views. At each rung (a number of
images seen) every live build is scored on the selection images and only the best ``keep`` share
(rounded up) goes on; the last one runs to the end of the stream or its stop rule. Rung ``r`` sits at
``first * 2**r`` images, so a candidate dropped at rung r cost ``first * 2**r`` views. A candidate
is dropped only if the selection images separate it from the leader (paired exact McNemar p < 0.05):
on the fundus photos sgd starts below fgsm and overtakes it after ~1,000 views, and plain halving
dropped it. Each candidate's rung results are kept (:class:`Rung`), with that p-value.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import binomtest
from torch import Tensor

from robaudit.attacks.uap.build import Builder
from robaudit.attacks.uap.group import check_chunk


@dataclass
class Rung:
    images: int
    selection_rate: float | None
    kept: bool
    p_vs_leader: float | None = None  # exact McNemar p of this candidate's best v against the leader's


@dataclass
class Entrant:
    """One candidate of a race: a name (e.g. 'fgsm/0') and its build."""

    name: str
    builder: Builder
    rungs: list[Rung] = field(default_factory=list)
    dropped_at: int | None = None


def rung_points(first: int, total: int, entrants: int, keep: float = 0.5) -> list[int]:
    """Images seen at each rung until one entrant is left: first, 2 first, 4 first, ... (below ``total``)."""
    points, alive, at = [], entrants, first
    while alive > 1 and at < total:
        points.append(at)
        alive, at = max(1, math.ceil(alive * keep)), at * 2
    return points


def rechunk(chunks: Iterable[Tensor], cuts: list[int]) -> Iterator[Tensor]:
    """The same images, with a chunk boundary added at every position in ``cuts`` (images from the start)."""
    pos, todo = 0, sorted(cuts)
    for x in chunks:
        while todo and pos < todo[0] < pos + len(x):
            k = todo.pop(0) - pos
            yield x[:k]
            x, pos = x[k:], pos + k
        while todo and todo[0] <= pos:
            todo.pop(0)
        if len(x):
            yield x
        pos += len(x)


def _mcnemar(a: np.ndarray | None, b: np.ndarray | None) -> float | None:
    if a is None or b is None or len(a) != len(b) or not len(a):
        return None
    x, y = int((a & ~b).sum()), int((b & ~a).sum())
    return 1.0 if x + y == 0 else float(binomtest(x, x + y).pvalue)


def _score(e: Entrant) -> float:
    sel = e.builder.run.selection
    return sel.best_rate if sel is not None else e.builder.hits / max(e.builder.total, 1)


def race(entrants: list[Entrant], chunks: Iterable[Tensor], rungs: list[int], keep: float = 0.5,
         separate: float = 0.05) -> Entrant:
    """Feed every chunk to every live entrant; at each rung keep the best ``ceil(live * keep)`` by the
    selection rate (ties: the earlier entrant), and any other whose best v the selection images do not
    separate from the leader's (exact McNemar p >= ``separate``; 0 = plain successive halving).
    Returns the winner; an interruption ends the race."""
    live, todo = [e for e in entrants if not e.builder.finished], sorted(rungs)
    try:
        for x in chunks:
            y = _shared_labels(live, x)
            for e in live:
                e.builder.feed(x, y)
            if any(e.builder.interrupted for e in live):
                break
            seen = max(e.builder.run.images_seen for e in live)
            if todo and seen >= todo[0] and len(live) > 1:
                todo.pop(0)
                live = _rung(live, seen, keep, separate)
            live = [e for e in live if not e.builder.finished]
            if not live:
                break
    except KeyboardInterrupt:  # while the next chunk was decoded
        for e in live:
            e.builder.finished = e.builder.interrupted = True
    stopped = [e for e in entrants if e.builder.interrupted]
    if stopped:
        return stopped[0]
    finalists = [e for e in entrants if e.dropped_at is None]  # plateaued or ran to the end
    return max(finalists, key=lambda e: (_score(e), -entrants.index(e)))


def _shared_labels(live: list[Entrant], x: Tensor) -> Tensor | None:
    """The chunk's clean labels, computed once for every live entrant on the same model (a third of a
    three-way race's label passes); their cost is shared out between them. A build toward a class ignores
    them (it is judged against its class). None: each computes its own."""
    builders = [e.builder for e in live if not e.builder.finished]
    runs = [b.run for b in builders]
    if len(runs) < 2 or any(r.model is not runs[0].model for r in runs):
        return None
    start = time.perf_counter()
    judge = next((r for r in runs if not r.targeted), runs[0])
    y = judge.clean_labels(check_chunk(x))
    share = (time.perf_counter() - start) / len(builders)
    for b in builders:
        b.seconds += share
    return y


def _rung(live: list[Entrant], seen: int, keep: float, separate: float) -> list[Entrant]:
    for e in live:
        e.builder.check()
    order = sorted(range(len(live)), key=lambda i: (-_score(live[i]), i))
    n_keep = max(1, math.ceil(len(live) * keep))
    leader = live[order[0]].builder.run.selection
    kept = []
    for rank, i in enumerate(order):
        e, sel = live[i], live[i].builder.run.selection
        p = _mcnemar(sel.best_success, leader.best_success) if sel is not None and rank else None
        keep_it = rank < n_keep or (p is not None and p >= separate)  # not separated from the leader: stays
        e.rungs.append(Rung(images=seen, selection_rate=_score(e) if sel is None or sel.best_rate >= 0 else None,
                            kept=keep_it, p_vs_leader=p))
        if keep_it:
            kept.append(e)
        else:
            e.dropped_at = seen
            e.builder.finished = True
    return [e for e in live if e in kept]


def race_seconds(entrants: list[Entrant]) -> float:
    return sum(e.builder.seconds for e in entrants)

