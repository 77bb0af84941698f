"""Metrics, controls and statistics on hand-made cases, checked against direct statsmodels/ART calls."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.proportion import proportion_confint

from robaudit.attacks.lp import lp_norm
from robaudit.attacks.noise import random_controls
from robaudit.attacks.predict import predict, predict_draws, score_draws
from robaudit.core.stats import mean_ci
from robaudit.eval.metrics import compare_to_control, control_metrics, uap_metrics


class Brightness(torch.nn.Module):
    """Class 1 when the mean pixel exceeds ``threshold``, else class 0 (a model whose answers are known)."""

    def __init__(self, threshold: float = 0.5):
        super().__init__()
        self.threshold = threshold

    def forward(self, x):
        m = x.flatten(1).mean(1, keepdim=True) - self.threshold
        return torch.cat([-m, m], dim=1)


def _images(means) -> torch.Tensor:
    return torch.tensor(means, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 3, 4, 4).contiguous()


CLEAN = [0, 0, 1, 1, 2, 2]
ADV = [0, 1, 1, 0, 2, 1]
LABELS = [0, 1, 1, 1, 2, 0]
NAMES = ["a", "b", "c"]


def test_uap_metrics_on_hand_made_predictions():
    m = uap_metrics(torch.tensor(CLEAN), torch.tensor(ADV), np.array(LABELS)[:, None], NAMES, target=1)
    assert (m.fooling_rate.k, m.fooling_rate.n, m.fooling_rate.value) == (3, 6, 0.5)
    assert m.fooling_rate.ci == pytest.approx(proportion_confint(3, 6, alpha=0.05, method="wilson"))
    assert m.clean_accuracy == pytest.approx(4 / 6) and m.adv_accuracy == pytest.approx(4 / 6)
    assert m.confusion == [[1, 1, 0], [1, 1, 0], [0, 1, 1]]  # rows clean, columns adversarial
    t = m.targeted_success_rate
    assert (t.k, t.value, t.clean_rate) == (3, 0.5, pytest.approx(2 / 6))
    assert t.ci == pytest.approx(proportion_confint(3, 6, method="wilson"))
    by = {c.name: c for c in m.per_class}
    assert (by["a"].n, by["a"].clean_accuracy, by["a"].adv_accuracy, by["a"].fooling_rate) == (2, 0.5, 0.5, 0.5)
    assert (by["b"].n, by["b"].fooling_rate) == (3, pytest.approx(2 / 3))
    assert (by["c"].n, by["c"].clean_accuracy, by["c"].adv_accuracy, by["c"].fooling_rate) == (1, 1.0, 1.0, 0.0)


def test_empty_class_and_non_targeted():
    m = uap_metrics([0, 0], [0, 1], [0, 0], ["a", "b"])
    assert m.targeted_success_rate is None and m.per_class[1].n == 0 and m.per_class[1].clean_accuracy is None
    with pytest.raises(ValueError):
        uap_metrics([0, 0], [0], [0, 0], ["a", "b"])


def test_predict_clip_and_chunks():
    model = Brightness(1.05)
    x = _images([0.9, 0.2, 0.95])
    v = torch.full((1, 3, 4, 4), 0.3)
    assert predict(model, x, v, clip=True).tolist() == [0, 0, 0]  # clipped at 1.0 < 1.05
    assert predict(model, x, v, clip=False).tolist() == [1, 0, 1]
    assert torch.equal(predict(model, iter([x[:1], x[1:]]), v, clip=False, batch_size=1),
                       predict(model, x, v, clip=False))


def test_control_metrics_evaluates_draws_like_the_uap():
    model = Brightness(0.5)
    x = _images([0.45, 0.55, 0.2, 0.8])
    clean = predict(model, x)
    assert clean.tolist() == [0, 1, 0, 1]
    draws = torch.stack([torch.full((3, 4, 4), 0.1), torch.full((3, 4, 4), -0.1), torch.zeros(3, 4, 4)])
    control, fooled = control_metrics(model, x, draws, clean, norm_value=0.1, kind="uniform")
    assert fooled.tolist() == [[True, False, False, False], [False, True, False, False], [False] * 4]
    assert control.fooling_rate.draws == [0.25, 0.25, 0.0]
    assert control.fooling_rate.value == pytest.approx(1 / 6)
    assert control.fooling_rate.ci == pytest.approx(mean_ci([0.25, 0.25, 0.0]))
    assert control.draws == 3 and control.targeted_success_rate is None
    control, hits = control_metrics(model, iter([x[:2], x[2:]]), draws, clean, target=1)
    assert control.targeted_success_rate.draws == [0.75, 0.25, 0.5] and hits.sum(1).tolist() == [3, 1, 2]


def test_score_draws_is_one_pass_of_every_draw():
    """measure() reads clean, v, the noise draws and the trajectory from one pass: each row must be what a
    separate pass gives, scores the softmax of the predicted class, and precomputed control rows the same."""
    model = Brightness(0.5)
    x = _images([0.45, 0.55, 0.2, 0.8])
    draws = [None, torch.full((1, 3, 4, 4), 0.1), torch.full((1, 3, 4, 4), -0.1)]
    preds, scores = score_draws(model, iter([x[:3], x[3:]]), draws, batch_size=2)
    assert preds.tolist() == [[0, 1, 0, 1], [1, 1, 0, 1], [0, 0, 0, 1]]
    assert torch.equal(preds, predict_draws(model, x, draws))
    margin = torch.tensor([[-0.05, 0.05, -0.3, 0.3], [0.05, 0.15, -0.2, 0.4], [-0.15, -0.05, -0.4, 0.2]])
    assert scores.numpy() == pytest.approx(torch.sigmoid(2 * margin.abs()).numpy(), abs=1e-6)
    noise = torch.cat(draws[1:])
    separate, _ = control_metrics(model, x, noise, preds[0])
    shared, _ = control_metrics(model, x, noise, preds[0], predicted=preds[1:])
    assert shared == separate and shared.fooling_rate.draws == [0.25, 0.25]


def test_compare_to_control_matches_statsmodels():
    uap = np.array([1, 1, 1, 1, 1, 1, 0, 1, 1, 0], dtype=bool)
    controls = np.array([[1, 0, 0, 0, 0, 0, 0, 0, 0, 0],   # rate 0.1
                         [0, 0, 0, 1, 1, 0, 1, 0, 0, 0],   # rate 0.3 <- the median draw
                         [1, 1, 0, 0, 1, 1, 1, 0, 0, 0]],  # rate 0.5
                        dtype=bool)
    res = compare_to_control(uap, controls)
    b = controls[1]
    table = [[np.sum(uap & b), np.sum(uap & ~b)], [np.sum(~uap & b), np.sum(~uap & ~b)]]
    direct = mcnemar(np.array(table), exact=True)
    assert table == [[2, 6], [1, 1]]
    assert res.test == "mcnemar-exact" and res.p_value == pytest.approx(direct.pvalue)
    assert res.statistic == direct.statistic == 1
    assert res.detail["control_draw"] == 1 and res.detail["control_rate"] == pytest.approx(0.3)
    assert "median" in res.detail["note"]


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_controls_have_the_specified_norm_and_are_deterministic(norm):
    shape, value = (3, 16, 16), 0.7
    a = random_controls(shape, norm, value, 50, generator=torch.Generator().manual_seed(1))
    b = random_controls((1, *shape), norm, value, 50, generator=torch.Generator().manual_seed(1))
    c = random_controls(shape, norm, value, 50, generator=torch.Generator().manual_seed(2))
    assert a.shape == (50, *shape) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    norms = lp_norm(a, norm)
    if norm == "linf":  # uniform per pixel in [-eps, eps]: the max of 768 uniforms is just below eps
        assert float(a.abs().max()) <= value and float(norms.min()) > 0.98 * value
        assert float(a.mean()) == pytest.approx(0.0, abs=0.01)
    else:  # uniform direction, exactly the given norm
        torch.testing.assert_close(norms, torch.full((50,), value), rtol=1e-6, atol=0)


def test_art_controls_follow_art_random_sphere():
    """kind='art' in L2 draws uniformly in the ball, like ART's random_sphere: compare the radius law."""
    from art.utils import random_sphere

    d, r = 48, 2.0
    ours = lp_norm(random_controls((3, 4, 4), "l2", r, 4000, kind="art", generator=torch.Generator().manual_seed(0)),
                   "l2").double()
    np.random.seed(0)
    theirs = np.linalg.norm(random_sphere(4000, d, r, 2), axis=1)
    assert float(ours.max()) <= r and float(ours.mean()) == pytest.approx(theirs.mean(), rel=0.01)
    assert float(ours.mean()) == pytest.approx(r * d / (d + 1), rel=0.01)  # E||u|| for u uniform in the d-ball
    linf = random_controls((3, 4, 4), "linf", 0.1, 5, kind="art", generator=torch.Generator().manual_seed(0))
    assert torch.equal(linf, random_controls((3, 4, 4), "linf", 0.1, 5, generator=torch.Generator().manual_seed(0)))
