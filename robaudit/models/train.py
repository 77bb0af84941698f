"""Transfer-learning trainer: full fine-tuning, top-k stages, linear probe, or from scratch.

Training replicates (``NAME@R``) differ only in the run's randomness: replicate R seeds the head (or
whole-net) initialisation, the data order and the augmentation from ``(seed, R)``; the training subset
stays the one ``seed`` picks. Replicate R of two configurations (fine-tune and random init) therefore
sees the same batches in the same order, so their difference is paired; replicate 0 is the single
model of earlier releases (its seed is ``seed`` itself).

Each finished epoch is checkpointed (``train_state.safetensors`` + ``train_state.json``) so an
interrupted run resumes from the last finished epoch with the same result as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import math
import time

import numpy as np
import timm
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from robaudit.core.bounds import Float32, PositiveFloat32
from robaudit.core.device import resolve_device
from robaudit.core.errors import BadInput
from robaudit.core.provenance import now_iso, training_conditions, versions
from robaudit.data import load_task
from robaudit.models.factory import create_backbone
from robaudit.models.fit import Checkpoint, FitPlan, clear_checkpoint, fit, train_mode
from robaudit.models.normalize import Normalized
from robaudit.models.store import ModelCard, model_dir, save_model
from robaudit.models.zoo import DEFAULT_IMAGE_SIZE, parse_zoo_name


class TrainConfig(BaseModel):
    """Training options (validated); everything that changes the weights is here and in the card."""

    model_config = ConfigDict(extra="forbid")
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: PositiveFloat32 | None = Field(None, description="default: 1e-3 fine-tuning, 3e-3 scratch, 1e-2 linear")
    weight_decay: Float32 = Field(1e-4, ge=0)
    optimizer: str = Field("adamw", pattern="^(adamw|sgd)$")
    image_size: int = Field(DEFAULT_IMAGE_SIZE, ge=16, le=1024)
    seed: int = 0
    augment: bool = True
    rotation: float = Field(5.0, ge=0, description="degrees (the published setting)")
    shift: float = Field(0.05, ge=0, lt=0.5, description="fraction (the published setting)")
    hflip: bool = True
    balanced: bool = False
    train_limit: int | None = Field(None, ge=1)
    weights_file: str | None = None
    patience: int | None = Field(None, ge=1, description="early stopping: end training after this many epochs "
                                 "without a val-accuracy gain (the best val epoch is kept either way); `epochs` is "
                                 "then the most it may take")

    def fingerprint(self, name: str) -> str:
        # patience unset hashes as before it existed: a 0.5 run's epoch checkpoint still resumes
        dump = self.model_dump_json(exclude={"patience"} if self.patience is None else None)
        return hashlib.sha256((name + dump).encode()).hexdigest()[:16]


def replicate_seed(seed: int, replicate: int) -> int:
    """The seed of training replicate ``replicate`` (``seed`` itself for replicate 0, as before replicates)."""
    if replicate == 0:
        return seed
    return int(np.random.SeedSequence([seed, replicate]).generate_state(1)[0])


def _default_lr(transfer: str) -> float:
    return {"scratch": 3e-3, "linear": 1e-2}.get(transfer, 1e-3)


def set_trainable(net, transfer: str, top_k: int | None) -> None:
    """Freeze parameters according to the transfer configuration (head always trains)."""

    if transfer in ("full", "scratch"):  # every parameter: any nn.Module (a torchvision or own twin too)
        for p in net.parameters():
            p.requires_grad_(True)
        return
    head = {id(p) for p in net.get_classifier().parameters()}
    for p in net.parameters():
        p.requires_grad_(id(p) in head)
    if transfer == "top-k":
        groups = timm.models.group_parameters(net, net.group_matcher(coarse=True))
        names = dict(net.named_parameters())
        # the last group holds the head; train the k groups (stages) before it too
        for g in list(groups.values())[-(top_k + 1):]:
            for n in g:
                names[n].requires_grad_(True)


def augment(x, cfg: TrainConfig, gen):
    """Per-image random rotation (+-rotation deg), shift (+-shift) and horizontal flip, in one batched warp."""

    if not cfg.augment:
        return x
    n = x.shape[0]
    r = torch.rand(n, 4, generator=gen)
    angle = (r[:, 0] * 2 - 1) * math.radians(cfg.rotation)
    flip = torch.where((r[:, 1] < 0.5) & cfg.hflip, -1.0, 1.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos * flip, -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin * flip, cos
    theta[:, :, 2] = (r[:, 2:] * 2 - 1) * cfg.shift * 2  # grid units span [-1, 1]
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def evaluate_accuracy(module, x, y, batch_size: int = 256) -> tuple[float, object]:
    """Accuracy of ``module`` on tensors (x in [0,1]); returns (accuracy, predictions)."""

    preds = []
    module.eval()
    dev = next(module.parameters()).device
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            preds.append(module(x[i:i + batch_size].to(dev)).argmax(1).cpu())
    p = torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)
    return (float((p == y).float().mean()) if len(y) else 0.0), p


def train_model(name: str, config: TrainConfig | None = None, device: str = "auto", resume: bool = True,
                quiet: bool = False) -> ModelCard:
    """Train zoo model ``name`` on its task and store it with its card; resumes unfinished runs."""

    cfg = config or TrainConfig()
    recipe = parse_zoo_name(name)
    if recipe.hardened:
        raise BadInput(f"{name!r} is made by 'robaudit harden', not trained",
                       f"run 'robaudit harden {recipe.base.removesuffix('_hardened')}'")
    name = recipe.name  # NAME@0 is NAME
    task = load_task(recipe.task_ref, size=cfg.image_size)
    dev = resolve_device(device)
    run_seed = replicate_seed(cfg.seed, recipe.replicate)
    torch.manual_seed(run_seed)
    np.random.seed(run_seed % 2**32)

    bb = create_backbone(recipe.arch, task.num_classes, pretrained=recipe.init == "imagenet",
                         weights_file=cfg.weights_file)
    card = ModelCard(name=name, arch=recipe.arch, init=recipe.init, weights_source=bb.weights,
                     transfer=recipe.transfer, top_k=recipe.top_k, replicate=recipe.replicate, task=task.full_name,
                     classes=task.label_names, input_size=cfg.image_size, mean=bb.mean, std=bb.std)
    return _fit_and_store(bb.net, card, task, cfg, dev, run_seed, resume, quiet)


def train_twin(like, task, name: str, config: TrainConfig | None = None, device: str = "auto",
               resume: bool = True, quiet: bool = False) -> ModelCard:
    """A random-init twin of a user's model: the same architecture (``like``'s net, every module's
    ``reset_parameters``), trained from scratch on ``task`` (already in ``like``'s class order) at
    ``like``'s input size, channels and mean/std, and stored as ``name``. The comparison the audit makes
    for zoo models (ImageNet init vs random init), for a network robaudit did not train."""
    import copy

    cfg = config or TrainConfig()
    if like.card.format in ("torchscript", "torch.export", "onnx") or not hasattr(like.module, "net"):
        raise BadInput(f"{like.name!r} is a {like.card.format} graph: its architecture cannot be rebuilt",
                       "pass a state_dict of it with --arch (timm, torchvision:NAME or package.module:factory)")
    cfg = cfg.model_copy(update={"image_size": like.input_size})
    dev = resolve_device(device)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    net = copy.deepcopy(like.module.net).cpu()
    reset = 0
    for m in net.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
            reset += 1
    if reset == 0:
        raise BadInput(f"{like.name!r} has no module with reset_parameters()",
                       "its architecture cannot be re-initialised")
    c = like.card
    card = ModelCard(name=name, arch=c.arch, arch_kwargs=c.arch_kwargs, init="random",
                     weights_source=f"random (reset_parameters of {reset} modules of {c.name})", transfer="scratch",
                     task=task.full_name, classes=like.classes, input_size=like.input_size, mean=like.mean,
                     std=like.std, channels=like.channels, twin_of={"name": c.name, "sha256": c.weights_sha256})
    return _fit_and_store(net, card, task, cfg, dev, cfg.seed, resume, quiet)


def _fit_and_store(net, card: ModelCard, task, cfg: TrainConfig, dev, run_seed: int, resume: bool,
                   quiet: bool) -> ModelCard:
    """Train ``net`` on ``task`` (best val epoch kept, resumable per epoch) and store it with ``card``
    completed by the metrics, the training record and the data's sha256."""
    from robaudit.data.images import to_channels

    name, transfer = card.name, card.transfer or "full"
    set_trainable(net, transfer, card.top_k)
    model = Normalized(net, card.mean, card.std).to(dev)
    ch = card.channels

    idx = task.select("train", cfg.train_limit, cfg.seed)
    x_tr, y_tr = task.tensors("train", size=cfg.image_size, indices=idx)
    x_va, y_va = task.tensors("val", size=cfg.image_size) if "val" in task.splits else (x_tr[:0], y_tr[:0])
    x_tr, x_va = to_channels(x_tr, ch), to_channels(x_va, ch)
    lr = cfg.lr or _default_lr(transfer)
    params = [p for p in net.parameters() if p.requires_grad]
    best, best_state = {"val_accuracy": -1.0, "epoch": -1}, None

    def loss_fn(fast, xb, yb, gen, step):
        train_mode(model, net)
        out = fast(xb)
        loss = F.cross_entropy(out, yb)
        return loss, {"correct": int((out.argmax(1) == yb).sum())}

    def on_epoch(epoch, t):
        nonlocal best, best_state
        val_acc, _ = evaluate_accuracy(model, x_va, y_va) if len(x_va) else (t["correct"] / t["n"], None)
        if val_acc > best["val_accuracy"]:
            best = {"val_accuracy": val_acc, "epoch": epoch}
            best_state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        return {"loss": t["loss"] / t["n"], "train_accuracy": t["correct"] / t["n"], "val_accuracy": val_acc}

    def extra():
        return {f"best.{k}": v.contiguous() for k, v in (best_state or {}).items()}, {"best": best}

    def restore(saved, meta):
        nonlocal best, best_state
        best_state = {k[5:]: v for k, v in saved.items() if k.startswith("best.")} or None
        best = meta["best"]

    d = model_dir(name)
    ckpt = Checkpoint(d / "train_state.safetensors", d / "train_state.json", cfg.fingerprint(name), extra, restore)
    plan = FitPlan(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=lr, weight_decay=cfg.weight_decay,
                   seed=run_seed, optimizer=cfg.optimizer, balanced=cfg.balanced, num_classes=task.num_classes)
    t0 = time.time()
    def plateaued(history: list[dict]) -> bool:
        return cfg.patience is not None and history[-1]["epoch"] - (best["epoch"] + 1) >= cfg.patience

    fitted = fit(model, net, x_tr, y_tr, plan, ckpt, loss_fn=loss_fn, on_epoch=on_epoch,
                 augment=lambda x, gen: augment(x, cfg, gen), label=f"train {name}", activity="training",
                 resuming=name, resume=resume, quiet=quiet, stop_early=plateaued)
    history = fitted.history

    net.load_state_dict(best_state)
    model.eval()
    x_te, y_te = task.tensors("test", size=cfg.image_size)
    x_te = to_channels(x_te, ch)
    test_acc, _ = evaluate_accuracy(model, x_te, y_te)
    val_acc, _ = evaluate_accuracy(model, x_va, y_va) if len(x_va) else (float("nan"), None)
    sub = torch.randperm(len(x_tr), generator=torch.Generator().manual_seed(cfg.seed))[:1000]
    train_acc, _ = evaluate_accuracy(model, x_tr[sub], y_tr[sub])
    majority = float(np.bincount(y_te.numpy()).max() / len(y_te))
    card = card.model_copy(update=dict(
        metrics={"train_accuracy": train_acc, "val_accuracy": val_acc, "test_accuracy": test_acc,
                 "test_majority_rate": majority, "best_epoch": best["epoch"] + 1, "epochs_run": len(history),
                 "seconds": time.time() - t0},
        train=cfg.model_dump() | {"lr": lr, "device": str(dev), "n_train": len(x_tr), "replicate": card.replicate,
                                  "run_seed": run_seed,
                                  "memory_format": fitted.memory_format,
                                  "trainable_params": sum(p.numel() for p in params), "history": history},
        data_sha256={s: task.sha256(s) for s in task.splits}, versions=versions(),
        trained_under=training_conditions(dev), created=now_iso()))
    save_model(net, card)
    clear_checkpoint(ckpt)
    return card




def check_trainable(name: str) -> None:
    """Fail early (BadInput) on a bad zoo name or a missing task, before any training work."""

    recipe = parse_zoo_name(name)
    task = load_task(recipe.task_ref)
    if task.num_classes < 2:
        raise BadInput(f"task {task.full_name!r} has fewer than two classes")
