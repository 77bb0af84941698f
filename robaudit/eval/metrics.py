"""Metrics of a UAP and of its random controls on one image set.

Fooling is judged against the model's clean prediction (not the label), over all images, as in the
published work; targeted success counts every image predicted as the target, with the clean rate
of the target class beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from torch import Tensor, nn

from robaudit.attacks.outcomes import outcome_metrics
from robaudit.attacks.predict import Images, predict_draws
from robaudit.core.results import ClassHarm, Comparison, Control, ControlRate, CriticalHarm, Harm, Metrics
from robaudit.core.stats import mcnemar_exact, mean_ci, rate


def _np(t) -> np.ndarray:
    return t.numpy() if isinstance(t, Tensor) else np.asarray(t)


def uap_metrics(clean_pred, adv_pred, labels, class_names: Sequence[str], target: int | None = None) -> Metrics:
    """Fooling rate (Wilson CI), accuracies, targeted success, per-class breakdown and confusion matrix,
    over all images; fooled means the prediction changed (see :func:`outcome_metrics`)."""
    clean, adv, y = _np(clean_pred).astype(int), _np(adv_pred).astype(int), _np(labels).reshape(-1).astype(int)
    if not clean.shape == adv.shape == y.shape:
        raise ValueError(f"predictions and labels differ in length: {clean.shape}, {adv.shape}, {y.shape}")
    return outcome_metrics(clean, adv, y, class_names, success=adv != clean, target=target)


def _control_rate(outcomes: np.ndarray) -> ControlRate:
    draws = outcomes.mean(axis=1) if outcomes.shape[1] else np.zeros(len(outcomes))
    return ControlRate(value=float(draws.mean()), ci=mean_ci(draws), draws=[float(d) for d in draws])


def control_metrics(model: nn.Module, images: Images, controls: Tensor, clean_pred, *, target: int | None = None,
                    clip: bool = True, kind: str = "uniform", norm_value: float | None = None,
                    batch_size: int = 128, device=None, predicted=None) -> tuple[Control, np.ndarray]:
    """Evaluate K control draws ``controls`` (K, C, H, W) exactly like the UAP.

    Returns the :class:`Control` summary (mean over draws, t-interval over draws, every draw's rate) and
    the per-draw outcomes as a bool array (K, N): fooled (non-targeted) or predicted as ``target``.
    ``predicted``: the draws' predictions (K, N) when the caller already has them (one pass with the UAP).
    """
    adv = _np(predicted) if predicted is not None else \
        predict_draws(model, images, [d[None] for d in controls], clip=clip, batch_size=batch_size,
                      device=device).numpy()
    fooled = adv != _np(clean_pred).astype(int)[None, :]
    hits = adv == target if target is not None else None
    control = Control(kind=kind, draws=len(controls), norm_value=norm_value, fooling_rate=_control_rate(fooled),
                      targeted_success_rate=_control_rate(hits) if hits is not None else None)
    return control, (hits if hits is not None else fooled)


def compare_to_control(uap_outcomes, control_outcomes) -> Comparison:
    """Exact McNemar test, on the same images, of the UAP against the control draw with the median rate."""
    uap = _np(uap_outcomes).astype(bool)
    ctrl = np.atleast_2d(_np(control_outcomes).astype(bool))
    rates = ctrl.mean(axis=1)
    draw = int(np.argsort(rates, kind="stable")[(len(rates) - 1) // 2])
    stat, p, detail = mcnemar_exact(uap, ctrl[draw])
    detail.update(control_draw=draw, draws=len(ctrl), uap_rate=float(uap.mean()), control_rate=float(rates[draw]),
                  note=f"exact McNemar on the same {uap.size} images: UAP vs control draw {draw} of {len(ctrl)} "
                       "(the draw with the median rate); a_only = UAP only, b_only = control only")
    return Comparison(test="mcnemar-exact", p_value=p, statistic=stat, detail=detail)


# ------------------------------------------------------------------------------- harm by diagnosis
def _paired_p(a: np.ndarray, b: np.ndarray) -> float | None:
    """Exact McNemar p of paired outcomes (None on no images)."""
    return mcnemar_exact(a, b)[1] if a.size else None


def harm_metrics(clean_pred, adv_pred, labels, class_names: Sequence[str], *, critical: int | None = None,
                 critical_source: str | None = None, target: int | None = None, control_adv=None) -> Harm:
    """Which way the diagnoses move: per class, sensitivity and specificity on clean images and on x + v
    (Wilson intervals, exact McNemar on the same images), and for a critical class the missed-disease rate
    (correctly detected critical images turned into another class) and the false-alarm rate (images the model
    correctly did not call critical turned into it), beside the median control draw's (``control_adv``)."""
    clean, adv, y = _np(clean_pred).astype(int), _np(adv_pred).astype(int), _np(labels).reshape(-1).astype(int)
    rows = []
    for c, name in enumerate(class_names):
        pos, neg = y == c, y != c
        rows.append(ClassHarm(
            index=c, name=name, sensitivity_clean=rate(clean[pos] == c), sensitivity_adv=rate(adv[pos] == c),
            sensitivity_p=_paired_p(clean[pos] == c, adv[pos] == c),
            specificity_clean=rate(clean[neg] != c), specificity_adv=rate(adv[neg] != c),
            specificity_p=_paired_p(clean[neg] != c, adv[neg] != c)))
    crit = None
    if critical is not None:
        detected = (y == critical) & (clean == critical)
        cleared = (y != critical) & (clean != critical)
        missed, alarm = adv[detected] != critical, adv[cleared] == critical
        ctrl = _np(control_adv).astype(int) if control_adv is not None else None
        direction = None if target is None else "raises false alarms" if target == critical else "hides disease"
        crit = CriticalHarm(
            index=critical, name=class_names[critical], source=critical_source or "flag", missed_disease=rate(missed),
            false_alarm=rate(alarm), direction=direction,
            control_missed_disease=float(np.mean(ctrl[detected] != critical)) if ctrl is not None and
            detected.any() else None,
            control_false_alarm=float(np.mean(ctrl[cleared] == critical)) if ctrl is not None and
            cleared.any() else None,
            missed_disease_p=_paired_p(missed, ctrl[detected] != critical) if ctrl is not None else None)
    return Harm(classes=rows, critical=crit)


@dataclass
class PerImage:
    """What predictions.csv holds beyond the predicted classes: the softmax of each predicted class, and the
    median control draw's prediction (the draw the paired test uses)."""

    clean_score: np.ndarray
    adv_score: np.ndarray
    control_adv: np.ndarray | None = None


def critical_of(flag: str | None, task, classes: Sequence[str]) -> tuple[int | None, str | None]:
    """The critical class's index and where it came from: ``flag`` ('flag': --critical-class, a name or index),
    else the task's dataset card or robaudit's built-in table (see :func:`robaudit.data.cards.critical_class`)."""
    from robaudit.core.errors import BadInput
    from robaudit.data.cards import critical_class

    classes = list(classes)
    if flag is not None:
        if flag in classes:
            return classes.index(flag), "flag"
        if flag.isdigit() and int(flag) < len(classes):
            return int(flag), "flag"
        raise BadInput(f"--critical-class {flag!r} is not one of the model's classes ({', '.join(classes)})",
                       "pass a class name or index")
    card = getattr(task, "card", None)
    if card is None:
        return None, None
    name, source = critical_class(card, getattr(task, "view", None), classes)
    return (classes.index(name), source) if name is not None else (None, None)
