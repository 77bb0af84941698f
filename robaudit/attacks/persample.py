"""Per-sample attacks over a list of epsilons -> one :class:`~robaudit.core.results.Result`.

Definitions, the same for every backend (and written into each result's notes):

* An image is *attacked* when the model classifies it correctly clean (for a targeted attack, also
  when its label is not the target). Other images are not attacked and count as not robust.
* *Success*: the prediction on the adversarial image differs from the true label (untargeted) or
  equals the target (targeted). The success rate is over the attacked images.
* *Robust accuracy*: the fraction of all images classified correctly both clean and under attack.
* Fixed-eps attacks run once per epsilon; eps = 0 is the clean image (no backend call). Minimal-norm
  attacks run once without a bound, and an image is broken at eps when the adversarial found has
  ``||delta||_p <= eps`` (foolbox's semantics for minimisation attacks).
* Backends are not trusted: predictions come from the model itself, and a perturbation must lie in
  the eps-ball and the [0, 1] box (float rounding is projected away; more is a RuntimeFailure).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor, nn

from robaudit import __version__
from robaudit.attacks.backends import (
    PGD_REL_STEP,
    AttackConfig,
    AttackDef,
    Backend,
    LogitsModel,
    create_backend,
    resolve,
)
from robaudit.attacks.lp import lp_norm, project
from robaudit.attacks.outcomes import outcome_metrics
from robaudit.attacks.predict import model_device, predict
from robaudit.core.console import task_progress
from robaudit.core.errors import BadInput, RuntimeFailure
from robaudit.core.provenance import environment, now_iso
from robaudit.core.results import (
    AttackInfo,
    DataInfo,
    EpsilonResult,
    Metrics,
    MinNorm,
    ModelInfo,
    Result,
)
from robaudit.core.stats import rate

#: a backend's perturbation may exceed eps by this much (relative) before it is an error
EPS_TOLERANCE = 1e-3
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def parse_eps(text: str | Sequence[float]) -> list[float]:
    """Epsilons from ``"0,0.002,0.008"`` (or a sequence); BadInput on anything that is not a number."""
    items = [s.strip() for s in text.split(",") if s.strip()] if isinstance(text, str) else list(text)
    try:
        values = [float(v) for v in items]
    except ValueError:
        raise BadInput(f"--eps {text!r} is not a comma-separated list of numbers",
                       "e.g. --eps 0,0.002,0.008") from None
    if not values:
        raise BadInput("--eps is empty", "e.g. --eps 0,0.002,0.008")
    return values


def check_eps(eps: Sequence[float] | None, norm: str, spec: AttackDef, dim: int | None = None) -> list[float]:
    """Sorted, de-duplicated epsilons in [0, 1] pixel units; L2 may go up to sqrt(dim), the box's diameter."""
    if eps is None or len(eps) == 0:
        if spec.minimal:
            return []
        raise BadInput(f"attack {spec.name!r} needs --eps", "e.g. --eps 0,0.002,0.008,0.03")
    out = sorted({float(e) for e in eps})
    top = 1.0 if norm == "linf" or dim is None else math.sqrt(dim)
    for e in out:
        if not math.isfinite(e) or e < 0 or (norm == "linf" and e > 1):
            raise BadInput(f"eps {e:g} is outside [0, 1] ({norm}, pixel values in [0, 1])",
                           "pass epsilons in [0, 1] pixel units, e.g. 0.008 for 2/255")
        if e > top:
            raise BadInput(f"L2 eps {e:g} exceeds the diameter {top:.4g} of the [0, 1] image box",
                           "pass a smaller --eps")
    return out


def check_steps(steps: int | None, spec: AttackDef) -> int | None:
    if spec.default_steps is None:
        if steps is not None:
            raise BadInput(f"attack {spec.name!r} takes no --steps", "drop --steps")
        return None
    if steps is None:
        return spec.default_steps
    if steps <= 0:
        raise BadInput(f"--steps must be >= 1, got {steps}")
    return int(steps)


@dataclass
class _Run:
    """Per-image outcomes of one backend run over the attacked images (CPU tensors)."""

    pred: Tensor
    norm: Tensor


def run_attack(model: nn.Module, x: Tensor, y: Tensor, *, attack: str, eps: Sequence[float] | None = None,
               norm: str | None = None, backend: str | None = None, steps: int | None = None,
               target: int | None = None, random_start: bool = False, class_names: Sequence[str] | None = None,
               batch_size: int = 64, seed: int = 0, model_info: ModelInfo | None = None,
               data_info: DataInfo | None = None, quiet: bool = True) -> Result:
    """Attack every image of ``x`` (float (N,3,H,W) in [0, 1], labels ``y``) at each epsilon; one Result.

    ``model`` takes [0, 1] images (it owns its normalisation) and may return logits, a tuple or a
    dict. It runs in eval mode without parameter gradients for the duration and is restored after.
    ``backend=None`` picks the first of torchattacks, foolbox, art that implements the attack.
    """
    spec, norm, backend = resolve(attack, norm, backend, targeted=target is not None)
    steps = check_steps(steps, spec)
    if batch_size <= 0:
        raise BadInput(f"--batch-size must be >= 1, got {batch_size}")
    if x.ndim != 4 or len(x) != len(y) or len(x) == 0:
        raise BadInput(f"need images (N,C,H,W) with N labels, got {tuple(x.shape)} and {tuple(y.shape)}")
    eps_list = check_eps(eps, norm, spec, dim=x[0].numel())
    if random_start and spec.name != "pgd":
        raise BadInput(f"random start is a PGD option, not {spec.name}'s")
    y = y.reshape(-1).long().cpu()

    with attack_mode(model):
        bk = create_backend(backend, model)
        dev = model_device(model)
        t0 = time.time()
        clean = predict(bk.model, x, batch_size=batch_size, device=dev)
        num_classes = _num_classes(bk.model, x, dev)
        if class_names and len(class_names) != num_classes:
            raise BadInput(f"the model has {num_classes} outputs but {len(class_names)} class names were given")
        names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        if target is not None and not 0 <= target < num_classes:
            raise BadInput(f"target class {target} is outside 0..{num_classes - 1}")
        attacked = clean == y
        if target is not None:
            attacked &= y != target
        idx = attacked.nonzero().flatten()
        base = AttackConfig(spec.name, norm, None, num_classes, steps=steps, random_start=random_start,
                            target=target, seed=seed)
        runs_needed = 1 if spec.minimal else sum(e > 0 for e in eps_list)
        run = None
        with _progress(quiet, f"{spec.name} {norm} via {backend}", runs_needed * len(idx)) as advance:
            if spec.minimal:
                run = _run(bk, x[idx], y[idx], base, dev, batch_size, advance)
                preds = {e: torch.where(run.norm <= e, run.pred, clean[idx]) for e in eps_list}
                head = run.pred
            else:
                preds = {}
                for e in eps_list:
                    if e == 0:
                        preds[e] = clean[idx]
                        continue
                    cfg = _at_eps(base, e)
                    preds[e] = _run(bk, x[idx], y[idx], cfg, dev, batch_size, advance).pred
                head = preds[eps_list[-1]]
        seconds = time.time() - t0

    def full(pred_attacked: Tensor) -> Tensor:
        """Predictions for all N images: the attack's on attacked images, the clean one elsewhere."""
        out = clean.clone()
        out[idx] = pred_attacked
        return out

    def hit(pred_attacked: Tensor) -> Tensor:
        return pred_attacked == target if target is not None else pred_attacked != y[idx]

    per_eps = [EpsilonResult(eps=e, robust_accuracy=rate((full(p) == y).numpy()), success_rate=rate(hit(p).numpy()))
               for e, p in preds.items()] or None
    metrics = _metrics(clean, full(head), y, idx, names, target)
    min_norm = _min_norm(run.norm[hit(run.pred)], len(idx)) if spec.minimal else None
    head_text = f"eps={eps_list[-1]:g} (the largest)" if eps_list else "the unbounded minimal-norm adversarial"
    info = AttackInfo(
        kind="per-sample", method=spec.name, mode=spec.mode, backend=backend, norm=norm, eps=eps_list or None,
        targeted=target is not None, target=target, target_name=names[target] if target is not None else None,
        clip=True, steps=steps, step_size=_at_eps(base, eps_list[0]).step_size if len(eps_list) == 1 else None,
        batch_size=batch_size, seed=seed, seconds=seconds, device=str(dev))
    notes = _notes(spec, bk, base, eps_list, len(idx), len(x), names, head_text)
    return Result(robaudit_version=__version__, created=now_iso(),
                  environment=_environment(dev, bk), model=model_info or _model_info(model, names),
                  data=data_info or DataInfo(name="tensors", split="unknown", n=len(x)), attack=info,
                  metrics=metrics, per_eps=per_eps, min_norm=min_norm, notes=notes)


def _at_eps(base: AttackConfig, eps: float) -> AttackConfig:
    """``base`` at one epsilon; PGD's step size scales with it (2.5 * eps / steps)."""
    step = PGD_REL_STEP * eps / base.steps if base.attack == "pgd" else None
    return replace(base, eps=eps, step_size=step)


def _run(bk: Backend, x: Tensor, y: Tensor, cfg: AttackConfig, dev, batch_size: int, advance) -> _Run:
    """Run one attack configuration over ``x`` in batches; predictions and perturbation norms per image."""
    _seed(cfg.seed)
    preds, norms = [], []
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size].to(dev, torch.float32), y[i:i + batch_size].to(dev)
        adv = _checked(bk.perturb(xb, yb, cfg), xb, cfg, bk.name)
        with torch.inference_mode():
            preds.append(bk.model(adv).argmax(1).cpu())
        norms.append(lp_norm(adv - xb, cfg.norm).float().cpu())
        advance(len(xb))
    if not preds:
        return _Run(torch.zeros(0, dtype=torch.long), torch.zeros(0))
    return _Run(torch.cat(preds), torch.cat(norms))


def _checked(adv, x: Tensor, cfg: AttackConfig, backend: str) -> Tensor:
    """The backend's output as a float tensor on x's device, inside the box and (fixed-eps) the eps-ball."""
    adv = torch.as_tensor(adv).detach().to(x.device, torch.float32)
    if adv.shape != x.shape:
        raise RuntimeFailure(f"backend {backend} returned shape {tuple(adv.shape)} for inputs {tuple(x.shape)}")
    if not torch.isfinite(adv).all():
        raise RuntimeFailure(f"backend {backend} returned NaN/inf images for {cfg.attack}")
    delta = adv - x
    if cfg.eps is not None:
        worst = float(lp_norm(delta, cfg.norm).max())
        if worst > cfg.eps * (1 + EPS_TOLERANCE) + 1e-6:
            raise RuntimeFailure(f"backend {backend} returned a {cfg.norm} perturbation of {worst:.6g} > eps "
                                 f"{cfg.eps:g} for {cfg.attack}")
        delta = project(delta, cfg.norm, cfg.eps)
    return (x + delta).clamp(0.0, 1.0)


def _metrics(clean: Tensor, adv: Tensor, y: Tensor, idx: Tensor, names: list[str], target: int | None) -> Metrics:
    """The shared metrics block at one eps: success is misclassification, rated over the attacked images."""
    c, a, t = clean.numpy(), adv.numpy(), y.numpy()
    attacked = np.zeros(len(t), dtype=bool)
    attacked[idx.numpy()] = True
    return outcome_metrics(c, a, t, names, success=a != t, counted=attacked, target=target)


def _min_norm(found: Tensor, n_attacked: int) -> MinNorm | None:
    """Distribution of the smallest perturbation found, over the successfully attacked images."""
    if len(found) == 0:
        return None
    v = found.double().numpy()
    q = {f"{p:g}": float(np.quantile(v, p)) for p in QUANTILES}
    return MinNorm(median=float(np.median(v)), quantiles=q, success_rate=len(v) / n_attacked,
                   values=[float(x) for x in v])


def _notes(spec: AttackDef, bk: Backend, cfg: AttackConfig, eps_list: list[float], n_attacked: int, n: int,
           names: list[str], head: str) -> list[str]:
    t = cfg.target
    notes = [
        f"attacked: the {n_attacked} of {n} images the model classifies correctly clean"
        + (f" and whose label is not the target {names[t]!r}" if t is not None else "")
        + "; the others are not attacked and count as not robust",
        "success: the adversarial prediction differs from the true label, over the attacked images" if t is None else
        f"success: the adversarial prediction is the target {names[t]!r}, over the attacked images "
        "(metrics.fooling_rate is the untargeted misclassification rate over the same images)",
        "robust accuracy: fraction of all images classified correctly both clean and under the attack",
        f"metrics (accuracies, success as fooling_rate, per-class, confusion: rows clean prediction, columns "
        f"adversarial prediction) are at {head}",
    ]
    if spec.minimal:
        notes.append(f"minimal-norm attack: run once without a bound; an image is broken at eps when the {cfg.norm} "
                     "norm of the adversarial found is <= eps; min_norm is over the successfully attacked images "
                     "(values in image order)")
    else:
        notes.append("fixed-eps attack: run once per eps; the eps = 0 row is the clean images (no backend call)")
    if spec.name == "pgd":
        notes.append(f"PGD step size = {PGD_REL_STEP} * eps / steps; random start: {cfg.random_start}")
    if spec.name == "autoattack" and cfg.num_classes < 4:
        notes.append(f"AutoAttack without APGD-T: its targeted DLR loss needs >= 4 classes ({cfg.num_classes} here)")
    notes += [f"backend call: {bk.describe(cfg)}",
              "images in [0, 1]; the model applies its own normalisation; eps in [0, 1] pixel units; adversarial "
              "images are checked against the eps-ball and clipped to [0, 1]",
              f"seeded with {cfg.seed} before each epsilon (torch, NumPy, random)"]
    return notes


@contextmanager
def attack_mode(model: nn.Module):
    """Eval mode and no parameter gradients while attacking (attacks need input gradients only); restored after."""
    modes = [(m, m.training) for m in model.modules()]
    params = [p for p in model.parameters() if p.requires_grad]
    model.eval()
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)
        for m, training in modes:
            m.training = training


@contextmanager
def _progress(quiet: bool, description: str, total: int):
    with task_progress(description, total=total, disable=quiet) as advance:
        yield advance


def _seed(seed: int) -> None:
    """Seed every RNG a backend may draw from (torch: torchattacks/foolbox, NumPy: ART)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _num_classes(net: LogitsModel, x: Tensor, dev) -> int:
    with torch.inference_mode():
        return int(net(x[:1].to(dev, torch.float32)).shape[1])


def _model_info(model: nn.Module, names: list[str]) -> ModelInfo:
    inner = getattr(model, "net", model)
    arch = getattr(inner, "default_cfg", {}).get("architecture") or type(inner).__name__
    return ModelInfo(name=arch, arch=arch, classes=names)


def _environment(dev, bk: Backend) -> dict:
    return environment(dev) | {"backend": bk.name, "backend_version": bk.version()}
