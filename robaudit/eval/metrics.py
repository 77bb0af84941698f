"""Metrics of a UAP and of its random controls on one image set.

Fooling is judged against the model's clean prediction (not the label), over all images, as in the
published work; targeted success counts every image predicted as the target, with the clean rate
of the target class beside it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import Tensor, nn

from robaudit.attacks.outcomes import outcome_metrics
from robaudit.attacks.predict import Images, predict_draws
from robaudit.core.results import Comparison, Control, ControlRate, Metrics
from robaudit.core.stats import mcnemar_exact, mean_ci


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
                    batch_size: int = 128, device=None) -> tuple[Control, np.ndarray]:
    """Evaluate K control draws ``controls`` (K, C, H, W) exactly like the UAP.

    Returns the :class:`Control` summary (mean over draws, t-interval over draws, every draw's rate) and
    the per-draw outcomes as a bool array (K, N): fooled (non-targeted) or predicted as ``target``.
    """
    adv = predict_draws(model, images, [d[None] for d in controls], clip=clip, batch_size=batch_size,
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
