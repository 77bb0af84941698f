"""Statistics from statsmodels/scipy: intervals for rates and exact paired tests."""

from __future__ import annotations

import numpy as np
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint

from robaudit.core.results import Rate

CI_METHOD = "wilson"


def proportion_ci(k: int, n: int, confidence: float = 0.95, method: str = CI_METHOD) -> tuple[float, float]:
    """Confidence interval for k successes out of n (statsmodels ``proportion_confint``)."""

    if n <= 0:
        return (0.0, 1.0)
    lo, hi = proportion_confint(int(k), int(n), alpha=1 - confidence, method=method)
    return (float(max(0.0, lo)), float(min(1.0, hi)))


def rate(successes: np.ndarray | list[bool], confidence: float = 0.95, method: str = CI_METHOD) -> Rate:
    """A :class:`Rate` from a boolean vector of per-image outcomes."""
    s = np.asarray(successes, dtype=bool)
    k, n = int(s.sum()), int(s.size)
    return Rate(value=k / n if n else 0.0, ci=proportion_ci(k, n, confidence, method), n=n, k=k,
                ci_method=method, confidence=confidence)


def mcnemar_exact(a: np.ndarray, b: np.ndarray) -> tuple[float, float, dict]:
    """Exact McNemar test of paired boolean outcomes ``a`` vs ``b`` on the same images.

    Returns ``(statistic, p_value, detail)`` where statistic is min(b01, b10) (statsmodels' exact
    binomial form) and detail holds the discordant counts.
    """

    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError("paired outcomes must have the same shape")
    table = np.array([[np.sum(a & b), np.sum(a & ~b)], [np.sum(~a & b), np.sum(~a & ~b)]])
    res = mcnemar(table, exact=True)
    detail = {"a_only": int(table[0, 1]), "b_only": int(table[1, 0]), "both": int(table[0, 0]),
              "neither": int(table[1, 1])}
    return float(res.statistic), float(res.pvalue), detail


def mean_ci(values: list[float] | np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """t-interval for the mean of repeated draws (scipy); degenerate draws give a point interval."""

    v = np.asarray(values, dtype=float)
    if v.size < 2 or np.allclose(v, v[0]):
        m = float(v.mean()) if v.size else 0.0
        return (m, m)
    lo, hi = stats.t.interval(confidence, v.size - 1, loc=v.mean(), scale=stats.sem(v))
    return (float(max(0.0, lo)), float(min(1.0, hi)))


def adjust_pvalues(pvalues: list[float], method: str = "holm") -> list[float]:
    """Multiple-comparison correction (statsmodels ``multipletests``)."""

    if not pvalues:
        return []
    return [float(p) for p in multipletests(pvalues, method=method)[1]]


REPLICATE_INTERVAL = "t over replicates"
REPLICATE_TEST = "paired t-test over replicates"


def paired_replicate_test(a: list[float] | np.ndarray, b: list[float] | np.ndarray,
                          confidence: float = 0.95) -> dict:
    """Paired t-test of per-replicate rates ``a`` vs ``b`` (replicate i of each, same training seed).

    The training run is the unit: the test sees R differences, df = R - 1 (scipy ``ttest_rel``). Returns the
    mean difference, its t-interval, t, df and the two-sided p. Identical differences in every replicate
    (no spread to test against) give p = 1, said in ``degenerate``: a conservative answer, never a 0."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.size < 2:
        raise ValueError("a paired replicate test needs two equal-length lists of at least 2 rates")
    d = a - b
    mean = float(d.mean())
    if np.allclose(d, d[0]):
        return {"mean_difference": mean, "ci": (mean, mean), "t": None, "df": int(d.size - 1), "p_value": 1.0,
                "degenerate": True}
    res = stats.ttest_rel(a, b)
    lo, hi = stats.t.interval(confidence, d.size - 1, loc=mean, scale=stats.sem(d))
    return {"mean_difference": mean, "ci": (float(lo), float(hi)), "t": float(res.statistic), "df": int(d.size - 1),
            "p_value": float(res.pvalue), "degenerate": False}


def replicates_for_power(difference: float, sd: float, alpha: float = 0.05, power: float = 0.8,
                         max_replicates: int = 5000) -> int | None:
    """Training replicates a paired t-test over replicates needs to detect ``difference`` (in rate) when the
    replicate differences have standard deviation ``sd``: the smallest n whose power (statsmodels
    ``TTestPower``, two-sided) reaches ``power``. A search rather than ``solve_power``, whose root finder is
    unreliable at the small alphas of a Holm step. None when no n up to ``max_replicates`` does."""
    from statsmodels.stats.power import TTestPower

    if difference == 0:
        return None
    if sd <= 0:
        return 2
    n = np.arange(2, max_replicates + 1)
    achieved = TTestPower().power(effect_size=abs(difference) / sd, nobs=n, alpha=alpha, alternative="two-sided")
    hits = np.flatnonzero(np.asarray(achieved) >= power)
    return int(n[hits[0]]) if hits.size else None
