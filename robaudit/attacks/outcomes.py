"""One metrics computation for every attack result (UAP and per-sample).

Both kinds report the same :class:`Metrics` block; they differ only in what counts as success
(a UAP *fools* when the prediction changes, a per-sample attack succeeds when the image is
misclassified) and over which images the rates are taken (a per-sample attack attacks only the
correctly classified images). Keeping one function keeps the two blocks comparable.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from robaudit.core.results import ClassBreakdown, Metrics, TargetedRate
from robaudit.core.stats import rate


def outcome_metrics(clean: np.ndarray, adv: np.ndarray, labels: np.ndarray, class_names: Sequence[str], *,
                    success: np.ndarray, counted: np.ndarray | None = None, target: int | None = None) -> Metrics:
    """Accuracies, success rate (as ``fooling_rate``, Wilson CI), targeted success, per-class rows, confusion.

    ``clean``/``adv``/``labels`` are int predictions and labels over the same N images; ``success`` is
    each image's outcome; ``counted`` (default all) masks the images the success and targeted rates
    are over. ``confusion[i][j]`` counts images predicted ``i`` clean and ``j`` under attack;
    ``per_class`` groups by true label.
    """
    clean, adv, y = np.asarray(clean), np.asarray(adv), np.asarray(labels)
    success = np.asarray(success, dtype=bool)
    counted = np.ones(len(y), dtype=bool) if counted is None else np.asarray(counted, dtype=bool)
    targeted = None
    if target is not None:
        hit = rate((adv == target)[counted])
        targeted = TargetedRate(**hit.model_dump(), clean_rate=float(np.mean(clean == target)) if len(clean) else 0.0)
    per_class = []
    for c, name in enumerate(class_names):
        m = y == c
        n = int(m.sum())
        n_counted = int((m & counted).sum())
        per_class.append(ClassBreakdown(
            index=c, name=name, n=n,
            clean_accuracy=float(np.mean(clean[m] == c)) if n else None,
            adv_accuracy=float(np.mean(adv[m] == c)) if n else None,
            fooling_rate=float(np.mean(success[m & counted])) if n_counted else None))
    k = len(class_names)
    confusion = np.zeros((k, k), dtype=int)
    np.add.at(confusion, (clean, adv), 1)
    return Metrics(
        clean_accuracy=float(np.mean(clean == y)) if len(y) else 0.0,
        adv_accuracy=float(np.mean(adv == y)) if len(y) else 0.0,
        fooling_rate=rate(success[counted]),
        targeted_success_rate=targeted,
        per_class=per_class,
        confusion=confusion.tolist(),
    )
