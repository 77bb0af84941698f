"""Training replicates: names, storage, determinism, pooled statistics (checked by hand), audits per replicate.

Runs on the embedded pneumonia-mini X-rays (no data root needed). The hand computations use only the
definitions: mean, sample SD, a t quantile from a printed table, and the closed-form t CDF for df = 1
(Cauchy) and df = 2, so a wrong library call or a wrong unit (images instead of replicates) fails.
"""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from robaudit.auditing import AuditRecipe, run_audit
from robaudit.auditing.pooled import pool_results, pooled_comparisons
from robaudit.core.errors import BadInput
from robaudit.core.results import (
    AttackInfo,
    Comparison,
    Control,
    ControlRate,
    DataInfo,
    Metrics,
    ModelInfo,
    Rate,
    Result,
)
from robaudit.core.stats import mcnemar_exact, paired_replicate_test
from robaudit.models.zoo import canonical_name, parse_zoo_name, replicate_name, split_replicate, with_replicate

MINI = "pneumonia-mini_tf_efficientnet_lite0"
T975 = {1: 12.706204736174707, 2: 4.302652729911275}  # printed t tables, 97.5% quantile


def t_two_sided_p(t: float, df: int) -> float:
    """Closed forms of the t distribution's two-sided tail: df 1 (Cauchy) and df 2."""
    t = abs(t)
    if df == 1:
        return 1 - 2 / math.pi * math.atan(t)
    if df == 2:
        return 1 - t / math.sqrt(2 + t * t)
    raise ValueError(df)


def mean_sd(xs):
    m = sum(xs) / len(xs)
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


# ------------------------------------------------------------------------------------------ names
def test_replicate_names():
    assert split_replicate("skin_resnet50") == ("skin_resnet50", 0)
    assert split_replicate("skin_resnet50@2") == ("skin_resnet50", 2)
    assert replicate_name("skin_resnet50", 0) == "skin_resnet50" == canonical_name("skin_resnet50@0")
    assert with_replicate("skin_resnet50", 3) == "skin_resnet50@3"
    r = parse_zoo_name("retina-referable_resnet50_random@4")
    assert (r.task, r.view, r.transfer, r.replicate, r.base) == ("retina", "referable", "scratch", 4,
                                                                   "retina-referable_resnet50_random")
    assert r.twin == "retina-referable_resnet50@4"  # the paired twin is the same replicate
    for bad in ("skin_resnet50@x", "skin_resnet50@-1", "@2"):
        with pytest.raises(BadInput):
            split_replicate(bad)
    with pytest.raises(BadInput, match="--replicate"):
        with_replicate("skin_resnet50@1", 2)


# ---------------------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def replicas():
    from robaudit.models.train import TrainConfig, train_model

    cfg = TrainConfig(epochs=1, train_limit=96, batch_size=32)
    cards = {n: train_model(n, cfg, device="cpu", quiet=True, resume=False)
             for n in (MINI, f"{MINI}@1", f"{MINI}_random@1")}
    again = train_model(f"{MINI}@1", cfg, device="cpu", quiet=True, resume=False)
    return cards, again


def test_replicates_are_stored_side_by_side_and_reproducible(replicas):
    from robaudit.models.store import model_dir, trained_names

    cards, again = replicas
    r0, r1, rand1 = cards[MINI], cards[f"{MINI}@1"], cards[f"{MINI}_random@1"]
    assert model_dir(f"{MINI}@0") == model_dir(MINI) and model_dir(f"{MINI}@1").name == f"{MINI}@1"
    assert {MINI, f"{MINI}@1"} <= set(trained_names())
    assert (r0.replicate, r1.replicate) == (0, 1)
    assert again.weights_sha256 == r1.weights_sha256  # same replicate, same weights (CPU)
    assert r0.weights_sha256 != r1.weights_sha256  # another training run
    # replicate 0 keeps the plain seed (the single model of earlier releases); replicate 1 of two
    # configurations shares its run seed: same data order and augmentation, so the pair is matched
    assert r0.train["run_seed"] == 0 and r1.train["run_seed"] == rand1.train["run_seed"] != 0
    assert r1.train["n_train"] == r0.train["n_train"] == 96


def test_train_and_models_list_cli(replicas, capsys):
    from robaudit.cli import main

    assert main(["models", "list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["models"]}
    assert rows[f"{MINI}@1"]["replicate"] == 1 and rows[f"{MINI}@1"]["trained"]
    assert main(["train", f"{MINI}@1", "--replicate", "2"]) == 2
    assert "--replicate" in capsys.readouterr().err


# ------------------------------------------------------------------------------- pooled statistics
def fake(name: str, replicate: int | None, rate: float, control: float, transfer: str = "full",
         n: int = 300) -> Result:
    """A UAP cell result with the given rates (the pooled statistics read only these fields)."""
    init = "random" if transfer == "scratch" else "imagenet"
    k = round(rate * n)
    return Result(
        robaudit_version="test", created="2026-11-28T00:00:00Z",
        model=ModelInfo(name=replicate_name(name, replicate or 0), arch="tf_efficientnet_lite0", init=init,
                        transfer=transfer, task="pneumonia", classes=["normal", "pneumonia"], replicate=replicate),
        data=DataInfo(name="pneumonia", split="test", n=n),
        attack=AttackInfo(kind="uap", method="fgsm", norm="linf", zeta=0.04, source="imagenet", seed=0,
                          threat_model="white-box natural"),
        metrics=Metrics(clean_accuracy=0.9, adv_accuracy=0.9 - rate / 2,
                        fooling_rate=Rate(value=k / n, ci=(0.0, 1.0), n=n, k=k)),
        control=Control(kind="uniform", draws=10, fooling_rate=ControlRate(value=control, ci=(control, control))),
        comparison=Comparison(test="mcnemar-exact", p_value=0.01))


def test_pooled_interval_and_paired_test_equal_hand_computed_values():
    rates, controls = [0.52, 0.61, 0.46], [0.15, 0.18, 0.12]
    rows = pool_results([fake("m", r, x, c) for r, (x, c) in enumerate(zip(rates, controls, strict=True))])
    assert len(rows) == 1
    row = rows[0]
    m, sd = mean_sd(rates)
    half = T975[2] * sd / math.sqrt(3)
    assert row.model.name == "m" and row.pooled.replicates == [0, 1, 2]
    assert row.metrics.fooling_rate.value == pytest.approx(m)
    assert row.metrics.fooling_rate.ci == pytest.approx((m - half, m + half), abs=1e-9)
    assert row.pooled.between_replicate_sd == pytest.approx(sd)
    cm, csd = mean_sd(controls)
    assert row.control.fooling_rate.ci == pytest.approx((cm - T975[2] * csd / math.sqrt(3),
                                                         cm + T975[2] * csd / math.sqrt(3)), abs=1e-9)
    d = [x - c for x, c in zip(rates, controls, strict=True)]
    dm, dsd = mean_sd(d)
    t = dm / (dsd / math.sqrt(3))
    assert row.comparison.statistic == pytest.approx(t)
    assert row.comparison.p_value == pytest.approx(t_two_sided_p(t, 2), rel=1e-9)
    assert row.comparison.detail["df"] == 2
    # the replicate, not the image, is the unit: 900 images would give a far narrower Wilson interval
    assert row.metrics.fooling_rate.ci[1] - row.metrics.fooling_rate.ci[0] > 0.2


def test_pooling_changes_the_conclusion_of_a_single_pair():
    # replicate 0 alone: ImageNet-init 60% vs random-init 30% fooled on the same 300 images
    n = 300
    full0 = np.zeros(n, bool)
    full0[:180] = True
    rand0 = np.zeros(n, bool)
    rand0[150:240] = True
    stat, p_single, detail = mcnemar_exact(full0, rand0)
    b, c = detail["a_only"], detail["b_only"]
    assert (b, c) == (150, 60)
    hand = min(1.0, 2 * sum(math.comb(b + c, k) for k in range(min(b, c) + 1)) / 2 ** (b + c))
    assert p_single == pytest.approx(hand, rel=1e-9) and p_single < 1e-8  # "ImageNet init is more vulnerable"
    # ... but over three training runs the difference does not hold up
    full, rand = [0.60, 0.35, 0.45], [0.30, 0.50, 0.40]
    cells = [fake("p_lite0", r, x, 0.1) for r, x in enumerate(full)]
    cells += [fake("p_lite0_random", r, x, 0.1, transfer="scratch") for r, x in enumerate(rand)]
    (cmp,) = pooled_comparisons(pool_results(cells))
    d = [a - b for a, b in zip(full, rand, strict=True)]
    dm, dsd = mean_sd(d)
    t = dm / (dsd / math.sqrt(3))
    assert cmp["mean_difference"] == pytest.approx(dm) and cmp["t"] == pytest.approx(t)
    assert cmp["p_value"] == pytest.approx(t_two_sided_p(t, 2), rel=1e-9) and cmp["p_value"] > 0.5
    assert cmp["replicates"] == [0, 1, 2] and cmp["df"] == 2


def test_paired_replicate_test_degenerate_and_two_replicates():
    res = paired_replicate_test([0.5, 0.6], [0.1, 0.3])
    t = 0.35 / (0.05 * math.sqrt(2) / math.sqrt(2))  # d = (0.4, 0.3): mean 0.35, sd 0.0707
    assert res["t"] == pytest.approx(t) and res["p_value"] == pytest.approx(t_two_sided_p(t, 1), rel=1e-9)
    flat = paired_replicate_test([0.5, 0.6, 0.7], [0.4, 0.5, 0.6])
    assert flat["degenerate"] and flat["p_value"] == 1.0  # no spread to test against: never p = 0


# -------------------------------------------------------------------------------- audit per replicate
@pytest.fixture(scope="module")
def replicated_audit(tmp_path_factory):
    from robaudit.auditing.recipes import TrainSettings

    recipe = AuditRecipe(name="rep", models=[MINI, f"{MINI}_random"], replicates=2, sources=["train"],
                         norms=["linf"], zetas=[0.04], methods=["fgsm"], targets="none", controls=3,
                         eval_limit=96, source_limit=96, max_iter=1, augment=False, select="none",
                         batch_size=32, device="cpu", transfer_eval=False,
                         train=TrainSettings(epochs=1, train_limit=96, batch_size=32))
    out = tmp_path_factory.mktemp("rep-audit")
    doc = run_audit(recipe, out, train_missing=True, quiet=True)
    return recipe, out, doc


def test_recipe_with_two_replicates_gives_per_replicate_and_pooled_rows(replicated_audit):
    _, out, doc = replicated_audit
    assert doc["counts"] == {"cells": 4, "done": 4, "failed": 0, "cached": 0}
    singles = [c for c in doc["cells"] if c["pooled"] is None]
    pooled = [c for c in doc["cells"] if c["pooled"] is not None]
    assert sorted(c["model"]["name"] for c in singles) == sorted([MINI, f"{MINI}@1", f"{MINI}_random",
                                                                  f"{MINI}_random@1"])
    assert sorted(c["model"]["name"] for c in pooled) == sorted([MINI, f"{MINI}_random"])
    table1 = doc["tables"]["1. UAP vs random control (every cell)"]["rows"]
    assert {r[0] for r in table1} == {c["model"]["name"] for c in singles}
    (t6,) = [v for k, v in doc["tables"].items() if k.startswith("6.")]
    (t7,) = [v for k, v in doc["tables"].items() if k.startswith("7.")]
    assert len(t6["rows"]) == 2 and len(t7["rows"]) == 1
    for p in pooled:
        reps = {c["model"]["replicate"]: c["metrics"]["fooling_rate"]["value"] for c in singles
                if c["model"]["name"].split("@")[0] == p["model"]["name"]}
        a, b = reps[0], reps[1]
        m, half = (a + b) / 2, T975[1] * abs(a - b) / math.sqrt(2) / math.sqrt(2)
        assert p["pooled"]["rates"] == pytest.approx([a, b])
        assert p["metrics"]["fooling_rate"]["value"] == pytest.approx(m)
        if a != b:
            assert p["metrics"]["fooling_rate"]["ci"] == pytest.approx([max(0, m - half), min(1, m + half)], abs=1e-9)
    # the verdict's family: 2 pooled rows + 1 pooled init test; the single replicates': 4 cells + 2 init tests
    mc = doc["multiple_comparison"]
    assert mc["families"] == {"primary": 3, "replicates": 6} and mc["family_size"] == 3
    assert mc["comparison_families"] == ["replicates", "replicates", "primary"]
    from robaudit.core.stats import adjust_pvalues
    from robaudit.grading import load_input

    ai = load_input(out / "audit.json")
    primary = [c.comparison.p_value for c in ai.cells if c.pooled is not None] + [mc["comparison_p_values"][2]]
    (t6,) = [v for k, v in doc["tables"].items() if k.startswith("6.")]
    assert [r[-1] for r in t6["rows"]] == pytest.approx(adjust_pvalues(primary, "holm")[:2])
    assert doc["replicates"]["per_configuration"] == 2 and len(doc["replicates"]["comparisons"]) == 1


def test_resume_per_replicate(replicated_audit):
    recipe, out, doc = replicated_audit
    gone = next(c for c in doc["cells"] if c["model"]["name"] == f"{MINI}_random@1")
    shutil.rmtree(out / gone["artifacts"]["cell_dir"])
    again = run_audit(recipe, out, resume=True, quiet=True)
    assert again["counts"] == {"cells": 4, "done": 4, "failed": 0, "cached": 3}
    rates = {c["model"]["name"]: c["metrics"]["fooling_rate"]["value"] for c in again["cells"] if c["pooled"] is None}
    assert rates[f"{MINI}_random@1"] == pytest.approx(gone["metrics"]["fooling_rate"]["value"])


def test_report_verdict_and_gate_read_the_pooled_rows(replicated_audit, tmp_path):
    from robaudit.gating import evaluate, parse_policy
    from robaudit.grading import load_input
    from robaudit.reporting import build_report, render

    _, out, _ = replicated_audit
    ai = load_input(out / "audit.json")
    report = build_report(ai)
    assert ai.cells[report.headline].pooled is not None
    md = render(report, "md")
    assert "pooled over 2 replicates" in md and "(replicates: " in md
    html = render(report, "html")
    assert "Spread over training replicates" in html
    policy = parse_policy({"version": 1, "name": "p", "rule": [{"kind": "max_fooling_rate",
                                                               "select": {"pooled": True}, "max": 1.0}]})
    verdict = evaluate(policy, ai)
    assert len(verdict.checks) == 2 and all("pooled over 2 replicates" in c.subject for c in verdict.checks)


def test_replicates_for_power_is_the_smallest_n_reaching_the_power():
    from scipy import stats as st

    from robaudit.core.stats import replicates_for_power

    def power(n: int, d: float, alpha: float) -> float:  # two-sided paired t: |T| > t_crit, T ~ nct(n-1, d sqrt n)
        tc = st.t.ppf(1 - alpha / 2, n - 1)
        return st.nct.sf(tc, n - 1, d * math.sqrt(n)) + st.nct.cdf(-tc, n - 1, d * math.sqrt(n))

    for diff, sd, alpha in ((0.10, 0.072, 0.05), (0.05, 0.072, 0.05), (0.20, 0.27, 0.05 / 1674)):
        n = replicates_for_power(diff, sd, alpha, 0.8)
        assert power(n, diff / sd, alpha) >= 0.8 > power(n - 1, diff / sd, alpha)
    assert replicates_for_power(0.10, 0.072) == 7  # d = 1.39: the textbook paired-t size
    assert replicates_for_power(0.0, 0.1) is None
