"""Universal adversarial training (Shafahi et al., AAAI 2020): fine-tune a model while a UAP chases it.

Per training minibatch: one ascent step on the shared perturbation ``v`` by the UAP engine's own
batched method (``fgsm`` or ``sgd`` from :mod:`robaudit.attacks.uap`, one pass over the attack batch,
projected onto the norm ball whose radius comes from ``zeta`` as in ``robaudit uap``), then one descent
step on the model for ``(1 - adv_weight) * CE(x) + adv_weight * CE(clip(x + v))``. The attack batch
is the training minibatch, hardening photos, or half of each (``source``).

Honest evaluation needs the re-audit's attacker to share nothing with this one: the photos the re-audit
builds from (``audit_photos`` drawn with each of ``audit_seeds``, exactly as ``robaudit uap`` draws
them) are removed from the hardening photos; the re-audit's selection images (``select_limit`` val
images drawn with ``audit_seed + 1``) are removed from the validation images monitored here; and the
hardening seed must differ from every audit seed. The card records all of it.

The loop, sampling and epoch checkpoints are training's (:func:`robaudit.models.fit.fit`); this module is
the loss hook (ascent on ``v``, then the mixed loss) and what an epoch records. Each finished epoch is
checkpointed (``harden_state.safetensors`` + ``harden_state.json``, keyed by a fingerprint of the config
and the source weights), so an interrupted run resumes to the same weights.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sklearn.metrics import balanced_accuracy_score

from robaudit.attacks.lp import perturb
from robaudit.attacks.predict import predict
from robaudit.attacks.uap.registry import create, lookup
from robaudit.attacks.uap.state import UAPSettings, UAPState
from robaudit.core.bounds import Float32, PositiveFloat32
from robaudit.core.device import resolve_device
from robaudit.core.errors import BadInput, Interrupted
from robaudit.core.provenance import now_iso, training_conditions, versions
from robaudit.core.specs import Norm
from robaudit.data import load_source
from robaudit.models import load_model_and_task
from robaudit.models.fit import Checkpoint, FitPlan, clear_checkpoint, fit, train_mode
from robaudit.models.store import ModelCard, is_trained, model_dir, save_model, trained_names
from robaudit.models.train import TrainConfig, augment, evaluate_accuracy, set_trainable
from robaudit.models.zoo import hardened_name, split_replicate

STATE, STATE_META = "harden_state.safetensors", "harden_state.json"
#: attack methods usable as the inner attacker (one batched update per minibatch)
INNER = ("fgsm", "sgd")


class HardenConfig(BaseModel):
    """How a model is hardened; everything that changes the weights is here (and in the card)."""

    model_config = ConfigDict(extra="forbid")
    epochs: int = Field(4, ge=1)
    batch_size: int = Field(64, ge=2)
    lr: PositiveFloat32 = Field(3e-4, description="peak learning rate (one-cycle), lower than training: a fine-tune")
    weight_decay: Float32 = Field(1e-4, ge=0)
    norm: Norm = "l2"
    zeta: float = Field(0.04, gt=0, le=1, description="eps as a fraction of the task's mean image norm (as uap)")
    source: Literal["train", "imagenet", "both"] = Field("train", description="what the inner UAP is built from "
                                                         "(train: the strongest in benchmarks/README.md)")
    attacker: Literal["fgsm", "sgd"] = "fgsm"
    step_size: PositiveFloat32 | None = Field(None, description="inner attacker's step (default: the engine's)")
    adv_weight: float = Field(1.0, ge=0, le=1, description="share of the loss on x + v (1: Shafahi et al.'s "
                              "min-max, the strongest measured)")
    train_limit: int | None = Field(None, ge=1)
    photo_limit: int | None = Field(None, ge=1, description="hardening photos (after the audit's are removed)")
    balanced: bool | None = Field(None, description="class-balanced sampling (default: as the model was trained)")
    augment: bool = True
    seed: int = Field(1, description="hardening seed; must differ from every audit seed")
    audit_seeds: list[int] = Field(default_factory=lambda: [0], description="seeds the re-audit will use")
    audit_photos: int | None = Field(200, ge=1, description="photos kept for the re-audit (None: all of them, "
                                     "so hardening uses no photos)")
    select_limit: int = Field(128, ge=8, description="the re-audit's selection images, kept out of validation")

    @model_validator(mode="after")
    def _apart(self) -> HardenConfig:
        if self.seed in self.audit_seeds:
            raise ValueError(f"the hardening seed {self.seed} is also an audit seed; the re-audit must use a seed "
                             "kept apart from hardening")
        if self.audit_photos is None and self.source != "train":
            raise ValueError("with every photo kept for the audit (audit_photos = all), hardening can only use "
                             "source = 'train'")
        return self

    def fingerprint(self, name: str, weights: str | None) -> str:
        return hashlib.sha256(f"{name}:{weights}:{self.model_dump_json()}".encode()).hexdigest()[:16]


def audit_photo_items(task_is_grey: bool, seeds: list[int], limit: int | None) -> list:
    """The photos the re-audit builds from, drawn exactly as ``robaudit uap --source imagenet`` draws them."""
    items: list = []
    for s in seeds:
        items += load_source("imagenet", limit=limit, seed=s, grayscale=task_is_grey).items
    return sorted(set(items))


def hardening_photos(cfg: HardenConfig, grey: bool):
    """(ImageSource of hardening photos, record): every imagenet photo the re-audit does not use."""
    src = load_source("imagenet", grayscale=grey)
    held = set(audit_photo_items(grey, cfg.audit_seeds, cfg.audit_photos)) if cfg.audit_photos else set(src.items)
    src.items = [p for p in src.items if p not in held]
    if cfg.photo_limit is not None and cfg.photo_limit < len(src.items):
        idx = np.sort(np.random.default_rng(cfg.seed).permutation(len(src.items))[:cfg.photo_limit])
        src.items = [src.items[i] for i in idx]
    record = {"source": "imagenet", "n": len(src.items), "sha256": src.sha256(), "held_for_audit": len(held),
              "audit_seeds": cfg.audit_seeds, "audit_photos": cfg.audit_photos}
    return src, record


def validation_indices(task, cfg: HardenConfig) -> np.ndarray:
    """Val images hardening may monitor: all but the re-audit's selection images (``robaudit uap``'s draw)."""
    if "val" not in task.splits:
        return np.zeros(0, dtype=int)
    taken: set[int] = set()
    for s in cfg.audit_seeds:
        taken |= set(task.select("val", cfg.select_limit, s + 1).tolist())
    return np.array([i for i in range(task.count("val")) if i not in taken], dtype=int)


def replicates_of(name: str) -> list[str]:
    """A name with ``@R`` is itself; a bare name is every trained replicate of it (itself first)."""
    if "@" in name:
        return [name]
    reps = sorted((split_replicate(n)[1], n) for n in trained_names() if split_replicate(n)[0] == name
                  and split_replicate(n)[1] > 0)
    return [name] + [n for _, n in reps]


def harden_model(name: str | None = None, config: HardenConfig | None = None, *, checkpoint: str | None = None,
                 arch: str | None = None, data: str | None = None, device: str = "auto", resume: bool = True,
                 quiet: bool = False, stop_after: int | None = None,
                 should_stop: Callable[[], bool] | None = None, model_args: dict | None = None) -> ModelCard:
    """Harden a trained model (zoo ``name``, or ``checkpoint`` + ``arch``) and store it as ``hardened_name``.

    ``stop_after``: stop (Interrupted) once that many epochs are checkpointed, as Ctrl-C would; the same
    call resumes. ``model_args``: the rest of the model arguments (trust, arch_kwargs, preprocessing
    overrides) for a checkpoint. Returns the hardened model's card."""
    cfg = config or HardenConfig()
    lm, task = load_model_and_task(name, checkpoint=checkpoint, arch=arch, device=device, data=data,
                                   **(model_args or {}))
    if not hasattr(lm.module, "net") or lm.card.format in ("torchscript", "torch.export", "onnx"):
        raise BadInput(f"{lm.card.name!r} is a {lm.card.format} graph: robaudit audits it but cannot fine-tune and "
                       "store it", "harden a state_dict of it with --arch (timm, torchvision:NAME or your factory)")
    card0 = lm.card
    out_name = hardened_name(card0.name)
    if out_name == card0.name:
        raise BadInput(f"{card0.name!r} is already a hardened model", "harden the original model")
    dev = resolve_device(device)
    size = card0.input_size
    torch.manual_seed(cfg.seed)
    module = lm.module
    net = module.net
    set_trainable(net, card0.transfer if card0.transfer in ("full", "top-k", "linear", "scratch") else "full",
                   card0.top_k)
    balanced = cfg.balanced if cfg.balanced is not None else bool(card0.train.get("balanced", False))
    aug = TrainConfig(augment=cfg.augment, seed=cfg.seed)

    idx = task.select("train", cfg.train_limit, cfg.seed)
    x_tr, y_tr = task.tensors("train", size=size, indices=idx)
    val_idx = validation_indices(task, cfg)
    x_va, y_va = task.tensors("val", size=size, indices=val_idx) if len(val_idx) else (x_tr[:0], y_tr[:0])
    photos, photo_record = (None, None)
    if cfg.source != "train":
        src, photo_record = hardening_photos(cfg, task.is_grey)
        if not src.items:
            raise BadInput("no photos are left for hardening once the audit's are set apart",
                           "lower audit_photos, or harden from training images (source = 'train')")
        photos = src.tensor(size)
    ref_norm = task.mean_norm(cfg.norm, size, split="train", seed=cfg.audit_seeds[0])
    eps = cfg.zeta * ref_norm
    entry = lookup(cfg.attacker, "batched")
    inner = create(entry, {"schedule": "constant"} if cfg.attacker == "fgsm" else {})

    v = torch.zeros(1, 3, size, size, device=dev)

    def loss_fn(fast, xb, yb, gen, step):
        nonlocal v
        v = _attack_step(fast, inner, cfg, eps, v, xb, yb, photos, gen, dev, seed=cfg.seed * 1_000_003 + step)
        train_mode(module, net)
        out = fast(torch.cat([xb, perturb(xb, v, True)]))
        n = len(xb)
        loss = (1 - cfg.adv_weight) * F.cross_entropy(out[:n], yb) + cfg.adv_weight * F.cross_entropy(out[n:], yb)
        return loss, {"clean_correct": int((out[:n].argmax(1) == yb).sum()),
                      "adv_correct": int((out[n:].argmax(1) == yb).sum())}

    def on_epoch(epoch, t):
        module.eval()
        row = {"loss": t["loss"] / t["n"], "train_clean_accuracy": t["clean_correct"] / t["n"],
               "train_adv_accuracy": t["adv_correct"] / t["n"], "uap_norm": _norm(v, cfg.norm)}
        return row | _val_metrics(module, x_va, y_va, v, dev)

    def restore(saved, meta):
        nonlocal v
        v = saved["uap"].to(dev)

    d = model_dir(out_name)
    ckpt = Checkpoint(d / STATE, d / STATE_META, cfg.fingerprint(out_name, card0.weights_sha256),
                      extra=lambda: ({"uap": v.detach().cpu().contiguous()}, {}), restore=restore)
    plan = FitPlan(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
                   seed=cfg.seed, balanced=balanced, num_classes=task.num_classes)
    t0 = time.time()
    try:
        history = fit(module, net, x_tr, y_tr, plan, ckpt, loss_fn=loss_fn, on_epoch=on_epoch,
                      augment=lambda x, gen: augment(x, aug, gen), label=f"harden {card0.name}",
                      activity="hardening", resuming=f"hardening of {card0.name}", resume=resume, quiet=quiet,
                      should_stop=should_stop, stop_after=stop_after).history
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted: hardening of {card0.name} resumes after the last finished epoch; re-run "
                          "the same command") from None

    module.eval()
    x_te, y_te = task.tensors("test", size=size)
    test_acc, pred = evaluate_accuracy(module, x_te, y_te)
    metrics = {"test_accuracy": test_acc,
               "test_balanced_accuracy": float(balanced_accuracy_score(y_te.numpy(), pred.numpy())),
               "test_majority_rate": float(np.bincount(y_te.numpy()).max() / len(y_te)),
               "seconds": time.time() - t0}
    metrics.update({f"final_{k}": float(val) for k, val in history[-1].items() if k != "epoch"})
    record = {
        "method": "universal adversarial training (Shafahi et al. 2020): per minibatch one ascent step of the "
                  f"UAP engine's batched {cfg.attacker} on v, then one descent step on the model",
        "from_model": card0.name, "from_weights_sha256": card0.weights_sha256, "config": cfg.model_dump(),
        "eps": eps, "eps_reference": f"zeta x mean {cfg.norm} norm of {task.full_name} train images at {size} px "
                                     f"= {ref_norm:.4f}",
        "balanced": balanced, "n_train": len(x_tr), "n_val_monitored": len(x_va),
        "val_held_for_audit_selection": (task.count("val") - len(x_va)) if "val" in task.splits else 0,
        "photos": photo_record, "history": history, "device": str(dev), "created": now_iso()}
    card = card0.model_copy(deep=True, update={"name": out_name, "metrics": metrics, "created": now_iso(),
                                               "versions": versions(),
                                               "trained_under": training_conditions(dev)})
    card.harden = record  # ModelCard allows extra fields: how this model was made
    save_model(net, card)
    clear_checkpoint(ckpt)
    return card


def _attack_step(module, inner, cfg: HardenConfig, eps: float, v, xb, yb, photos, gen, dev, seed: int):
    """One update of v by the engine's batched method on this step's attack batch (model in eval mode)."""
    n = len(xb)
    if cfg.source == "train":
        xa, la = xb, yb
    else:
        k = n if cfg.source == "imagenet" else n // 2
        pick = torch.randint(len(photos), (k,), generator=gen)
        xp = augment(photos[pick], TrainConfig(augment=True, rotation=0.0), gen).to(dev)
        lp = predict(module, xp, batch_size=len(xp), device=dev)  # photos have no labels: clean predictions
        xa, la = (xp, lp.to(dev)) if cfg.source == "imagenet" else (torch.cat([xb[:n - k], xp]),
                                                                     torch.cat([yb[:n - k], lp.to(dev)]))
    module.eval()
    settings = UAPSettings(norm=cfg.norm, eps=eps, max_iter=1, step_size=cfg.step_size, batch_size=len(xa),
                           seed=seed)
    state = UAPState(model=module, cfg=settings, device=dev)
    state.set_v(v)
    inner(state, xa, la)
    return state.v.detach()


def _norm(v, norm: str) -> float:
    flat = v.flatten()
    return float(flat.abs().max() if norm == "linf" else flat.norm())


def _val_metrics(module, x, y, v, dev) -> dict:
    """Clean / balanced accuracy and the current v's fooling rate on the monitored val images."""
    if not len(x):
        return {}
    clean = predict(module, x, batch_size=256, device=dev)
    adv = predict(module, x, v.cpu(), batch_size=256, device=dev)
    return {"val_accuracy": float((clean == y).float().mean()),
            "val_balanced_accuracy": float(balanced_accuracy_score(y.numpy(), clean.numpy())),
            "val_fooling_rate": float((adv != clean).float().mean())}


def is_hardened(name: str) -> bool:
    """Whether ``name``'s hardened twin is in the store."""
    return is_trained(hardened_name(name))
