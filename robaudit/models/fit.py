"""The one fit loop behind ``robaudit train`` and ``robaudit harden``.

Both fine-tune a network the same way: AdamW (or SGD) under a one-cycle schedule, epoch ``e`` drawing its
data order and augmentation from ``Generator(seed * 1000 + e)`` (class-balanced sampling optional), and a
checkpoint after every finished epoch so an interrupted run resumes to the same weights. What differs is
the loss of a batch (``loss_fn``: cross-entropy, or the UAP ascent step then the adversarial loss) and what
an epoch records (``on_epoch``); they are hooks, so the loop, the sampling and the resume exist once.

The loop lives in ``models`` (not above it) because ``train_model`` does and is imported across the
package; the hardening objective, which needs the UAP engine, lives in :mod:`robaudit.training.harden`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from robaudit.core.console import info, progress
from robaudit.core.errors import RuntimeFailure
from robaudit.core.files import atomic_write_text, read_json
from robaudit.models.normalize import channels_last_model

#: ``loss_fn(module, xb, yb, gen, step) -> (loss, counts)``: the loss of one (augmented, on-device) batch
#: and integer counts to sum over the epoch; ``module`` is the (channels-last) model to run, ``step`` the
#: run's global step index. The hook sets the model's mode (see :func:`train_mode`).
LossFn = Callable[..., tuple[torch.Tensor, dict]]


@dataclass
class FitPlan:
    """What the loop needs beyond the hooks; everything here changes the weights."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    seed: int
    optimizer: str = "adamw"
    balanced: bool = False
    num_classes: int = 0


@dataclass
class Checkpoint:
    """The epoch checkpoint: its files, the fingerprint that makes it this run's, and the hook's own state
    (``extra() -> (tensors, meta)`` saved beside the weights; ``restore(tensors, meta)`` on resume)."""

    state_file: Path
    meta_file: Path
    fingerprint: str
    extra: Callable[[], tuple[dict, dict]] = field(default=lambda: ({}, {}))
    restore: Callable[[dict, dict], None] = field(default=lambda saved, meta: None)


@dataclass
class Fitted:
    """What the loop leaves the caller: the per-epoch rows and how convolutions ran."""

    history: list
    memory_format: str
    start_epoch: int


def train_mode(module, net) -> None:
    """Training mode, except the BatchNorm of fully frozen modules (their features stay the pretrained ones)."""
    module.train()
    frozen_modules_eval(net)


def frozen_modules_eval(net) -> None:
    """Keep BatchNorm of fully frozen modules in eval mode so frozen features stay the ImageNet ones."""
    for m in net.modules():
        params = list(m.parameters(recurse=False))
        if params and not any(p.requires_grad for p in params) and "Norm" in type(m).__name__:
            m.eval()


def descend(loss, opt, sched, where: str) -> None:
    """One optimiser and scheduler step on ``loss``; a non-finite loss stops the run (RuntimeFailure) before it
    poisons the weights and the epoch checkpoint."""
    if not torch.isfinite(loss):
        raise RuntimeFailure(f"{where} (loss {loss.item()})", "lower --lr")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()


def fit(model, net, x, y, plan: FitPlan, ckpt: Checkpoint, *, loss_fn: LossFn, on_epoch: Callable[[int, dict], dict],
        augment: Callable, label: str, activity: str, resuming: str, resume: bool = True, quiet: bool = False,
        should_stop: Callable[[], bool] | None = None, stop_after: int | None = None,
        stop_early: Callable[[list[dict]], bool] | None = None) -> Fitted:
    """Fit ``net`` (inside ``model``) on ``x``, ``y`` (CPU tensors); returns the history.

    Per step: ``augment(x[batch], gen)`` to the device, ``loss_fn``, one descent step. Per epoch:
    ``on_epoch(epoch, totals)`` gives the history row (``totals``: ``n``, summed ``loss * n`` and the
    hook's counts), then the checkpoint. ``stop_after`` / ``should_stop``: raise KeyboardInterrupt after
    that many checkpointed epochs / after a step where it says so, as Ctrl-C would. ``stop_early(history)``:
    end the fit after a checkpointed epoch where it says so (early stopping; the hooks keep the best epoch).
    """
    dev = next(net.parameters()).device
    params = [p for p in net.parameters() if p.requires_grad]
    if plan.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=plan.lr, momentum=0.9, nesterov=True, weight_decay=plan.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=plan.lr, weight_decay=plan.weight_decay)
    steps = math.ceil(len(x) / plan.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=plan.lr, total_steps=plan.epochs * steps, pct_start=0.15)
    weights = None
    if plan.balanced:
        counts = np.bincount(y.numpy(), minlength=plan.num_classes).astype(float)
        weights = torch.as_tensor(1.0 / np.maximum(counts, 1)[y.numpy()], dtype=torch.double)

    start, history = 0, []
    if resume and ckpt.meta_file.is_file() and ckpt.state_file.is_file():
        meta = read_json(ckpt.meta_file, "training checkpoint metadata", "delete it to restart the run")
        if meta.get("fingerprint") == ckpt.fingerprint:
            saved = load_file(str(ckpt.state_file))
            net.load_state_dict({k[4:]: t for k, t in saved.items() if k.startswith("net.")})
            ckpt.restore(saved, meta)
            opt.load_state_dict(unflatten_optimizer(saved, meta["optimizer"]))
            sched.load_state_dict(meta["scheduler"])
            start, history = meta["epoch"] + 1, meta.get("history", [])
            if not quiet:
                info(f"resuming {resuming} after epoch {start} of {plan.epochs}")

    # NHWC convolutions train 1.5-2x faster in oneDNN/cuDNN; the weights are back in NCHW after the loop
    with progress(disable=quiet) as prog, channels_last_model(model) as fast:
        memory_format = "contiguous" if fast is model else "channels_last"
        bar = prog.add_task(label, total=plan.epochs * steps, status="", completed=start * steps)
        for epoch in range(start, plan.epochs):
            gen = torch.Generator().manual_seed(plan.seed * 1000 + epoch)
            order = (torch.multinomial(weights, len(x), replacement=True, generator=gen) if weights is not None
                     else torch.randperm(len(x), generator=gen))
            totals: dict = {"n": 0, "loss": 0.0}
            for s in range(steps):
                b = order[s * plan.batch_size:(s + 1) * plan.batch_size]
                xb, yb = augment(x[b], gen).to(dev), y[b].to(dev)
                loss, counts = loss_fn(fast, xb, yb, gen, epoch * steps + s)
                descend(loss, opt, sched, f"{activity} diverged at epoch {epoch + 1}")
                totals["n"] += len(b)
                totals["loss"] += loss.item() * len(b)
                for k, c in counts.items():
                    totals[k] = totals.get(k, 0) + c
                prog.update(bar, advance=1, status=f"epoch {epoch + 1}/{plan.epochs} loss "
                            f"{totals['loss'] / totals['n']:.3f}")
                if should_stop is not None and should_stop():
                    raise KeyboardInterrupt
            history.append({"epoch": epoch + 1, **on_epoch(epoch, totals)})
            # checkpoint the finished epoch (atomic), so Ctrl-C loses at most the running epoch
            tensors, extra_meta = ckpt.extra()
            flat = {f"net.{k}": t.detach().cpu().contiguous() for k, t in net.state_dict().items()}
            save_epoch(ckpt.state_file, ckpt.meta_file, {**flat, **tensors}, opt, sched,
                       {"fingerprint": ckpt.fingerprint, "epoch": epoch, **extra_meta, "history": history})
            if stop_after is not None and epoch + 1 >= stop_after and epoch + 1 < plan.epochs:
                raise KeyboardInterrupt
            if stop_early is not None and stop_early(history):
                break
    return Fitted(history=history, memory_format=memory_format, start_epoch=start)


def clear_checkpoint(ckpt: Checkpoint) -> None:
    """Remove a finished run's epoch checkpoint (the stored model supersedes it)."""
    for f in (ckpt.state_file, ckpt.meta_file):
        f.unlink(missing_ok=True)


def save_epoch(state_file, meta_file, tensors: dict, opt, sched, meta: dict) -> None:
    """Checkpoint a finished epoch: ``tensors`` plus the optimizer state (safetensors, replaced atomically),
    then ``meta`` with the optimizer and scheduler metadata (JSON, atomic; written last, so a resume that
    finds it finds matching tensors)."""
    opt_tensors, opt_meta = flatten_optimizer(opt.state_dict())
    state_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = state_file.with_suffix(".tmp")
    save_file({**tensors, **opt_tensors}, str(tmp))
    tmp.replace(state_file)
    atomic_write_text(meta_file, json.dumps({**meta, "optimizer": opt_meta, "scheduler": sched.state_dict()},
                                            default=float))


def flatten_optimizer(state: dict) -> tuple[dict, dict]:
    """Split an optimizer state dict into tensors (for safetensors) and JSON metadata."""

    tensors, meta_state = {}, {}
    for pid, st in state["state"].items():
        meta_state[str(pid)] = {}
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"opt.{pid}.{k}"] = v.detach().cpu().contiguous()
                meta_state[str(pid)][k] = "__tensor__"
            else:
                meta_state[str(pid)][k] = v
    return tensors, {"state": meta_state, "param_groups": state["param_groups"]}


def unflatten_optimizer(tensors: dict, meta: dict) -> dict:
    """Inverse of :func:`flatten_optimizer`."""
    state = {}
    for pid, st in meta["state"].items():
        state[int(pid)] = {k: (tensors[f"opt.{pid}.{k}"] if v == "__tensor__" else v) for k, v in st.items()}
    return {"state": state, "param_groups": meta["param_groups"]}
