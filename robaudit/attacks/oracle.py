"""A forward-only oracle: the audited model as a query-only attacker reaches it (an API returning scores or labels).

The attacker's code gets an :class:`Oracle`, never the module: it answers images with class scores
(softmax) or the top label, counts every image forwarded (the query count a deployed API would bill),
refuses a query past its budget, and runs each forward in inference mode, so its answers carry no
autograd graph (a ``backward`` through them fails) and the model's parameters and gradients are not
reachable through it.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from robaudit.core.errors import BadInput

Output = Literal["scores", "labels"]
OUTPUTS = ("scores", "labels")


class BudgetExhausted(Exception):
    """A query would pass the budget (the attacker's search stops and keeps its best v)."""


class Oracle:
    """``oracle(x)`` -> scores (N, K) float32 or labels (N,) int64 on CPU for images ``x`` in [0, 1].

    ``budget``: most images it answers (None: no limit); ``queries``: images answered so far. The
    caller composes x + v and clips; the oracle only classifies, as a deployed model would."""

    __slots__ = ("_forward", "output", "budget", "queries", "calls", "batch_size", "device", "num_classes")

    def __init__(self, model: nn.Module, output: Output = "scores", budget: int | None = None, *,
                 device=None, batch_size: int = 256):
        if output not in OUTPUTS:
            raise BadInput(f"unknown query output {output!r}", "choose scores or labels")
        if budget is not None and budget < 1:
            raise BadInput(f"query budget must be >= 1, got {budget}")
        dev = torch.device(device) if device is not None else _device_of(model)

        def forward(x: Tensor) -> Tensor:  # the only reference to the model: a closure, not an attribute
            with torch.inference_mode():
                return model(x.to(dev, torch.float32))

        self._forward = forward
        self.output, self.budget, self.queries, self.calls = output, budget, 0, 0
        self.batch_size, self.device, self.num_classes = int(batch_size), dev, None

    @property
    def remaining(self) -> int | None:
        return None if self.budget is None else self.budget - self.queries

    def __call__(self, x: Tensor) -> Tensor:
        n = len(x)
        if self.budget is not None and self.queries + n > self.budget:
            raise BudgetExhausted(f"{n} more queries would pass the budget of {self.budget} ({self.queries} used)")
        self.queries += n
        self.calls += 1
        outs = []
        for i in range(0, n, self.batch_size):
            logits = self._forward(x[i:i + self.batch_size]).float()
            outs.append(logits.softmax(1) if self.output == "scores" else logits.argmax(1))
        out = torch.cat(outs).cpu() if outs else torch.empty(0)
        if self.output == "scores":
            self.num_classes = out.shape[1] if out.ndim == 2 else self.num_classes
        return out.clone()  # a normal (non-inference) tensor without history: nothing to backpropagate into

    def labels(self, x: Tensor) -> Tensor:
        """Top labels (N,) whatever the output kind (from the scores when it returns scores)."""
        out = self(x)
        return out.argmax(1) if self.output == "scores" else out

    def __getattr__(self, name: str):
        if name in ("parameters", "named_parameters", "state_dict", "modules", "grad", "backward", "module"):
            raise AttributeError(f"a query-only oracle exposes no {name}: the attacker sees outputs only")
        raise AttributeError(name)


def _device_of(model: nn.Module) -> torch.device:
    """The model's device, read once by the auditor when the oracle is made (the attacker never reads it)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")
