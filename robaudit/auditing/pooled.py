"""Rows pooled over training replicates: does a finding hold across training runs, not for one model?

One trained model is one draw of the training process; a McNemar test between two single models says
something about those two models only. With ``replicates = R`` in a recipe every zoo configuration is
trained R times (``NAME``, ``NAME@1``, ...) and each cell runs on every replicate. Here the replicate is
the unit of inference:

* per configuration, each replicate's rate (averaged over its attack seeds first, so attack-seed spread
  is reported apart as ``within_replicate_sd``), their mean and a **t-interval over replicates**
  (df = R - 1). We chose it over a GEE / cluster-robust binomial model because with the 3-10 clusters
  an audit can afford the sandwich variance of a GEE is biased low (it needs dozens of clusters), while
  the t-interval on cluster means is exact under normal replicate rates and needs no per-image model;
* UAP vs its random control and ImageNet-full vs another initialisation / transfer configuration:
  **paired t-tests over replicates** (replicate R of both sides shares its training seed: same data
  order and augmentation; the control shares the replicate's model).

Pooled rows are :class:`~robaudit.core.results.Result` documents with ``pooled`` set, so the report, the
severity rule and the gate read them like cells; their tests join the document's one Holm family.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from robaudit.core.provenance import now_iso
from robaudit.core.results import (
    Comparison,
    Control,
    ControlRate,
    Metrics,
    PooledInfo,
    Rate,
    Result,
    TargetedRate,
)
from robaudit.core.stats import REPLICATE_INTERVAL, REPLICATE_TEST, mean_ci, paired_replicate_test
from robaudit.grading import replicate_config
from robaudit.models.zoo import is_hardened_name, split_replicate

MIN_REPLICATES = 2


def pool_results(results: list[Result]) -> list[Result]:
    """One pooled row per configuration that ran on >= 2 training replicates (UAP cells of zoo replicates)."""
    groups: dict[tuple, dict[int, list[Result]]] = defaultdict(lambda: defaultdict(list))
    for r in results:
        if r.attack.kind == "uap" and r.model.replicate is not None and r.metrics is not None:
            groups[replicate_config(r)][r.model.replicate].append(r)
    return [_pooled(by_rep) for by_rep in groups.values() if len(by_rep) >= MIN_REPLICATES]


def _mean(values) -> float:
    return float(np.mean(values))


def _rate(values: list[float], ns: list[int]) -> Rate:
    lo, hi = mean_ci(values)
    return Rate(value=_mean(values), ci=(lo, hi), n=int(sum(ns)), ci_method=REPLICATE_INTERVAL)


def _control(values: list[float]) -> ControlRate:
    return ControlRate(value=_mean(values), ci=mean_ci(values), draws=list(values))


def _pooled(by_rep: dict[int, list[Result]]) -> Result:
    reps = sorted(by_rep)
    per_rep = [by_rep[r] for r in reps]
    tmpl = per_rep[0][0]
    targeted = tmpl.attack.targeted and tmpl.metrics.targeted_success_rate is not None

    def rep_mean(get) -> list[float]:
        return [_mean([get(x) for x in xs]) for xs in per_rep]

    primary = rep_mean(lambda x: x.primary_rate().value)
    fooling = rep_mean(lambda x: x.metrics.fooling_rate.value)
    ns = [xs[0].metrics.fooling_rate.n for xs in per_rep]
    metrics = Metrics(clean_accuracy=_mean(rep_mean(lambda x: x.metrics.clean_accuracy)),
                      adv_accuracy=_mean(rep_mean(lambda x: x.metrics.adv_accuracy)),
                      fooling_rate=_rate(fooling, ns))
    if targeted:
        t = _rate(primary, ns)
        clean = rep_mean(lambda x: x.metrics.targeted_success_rate.clean_rate)
        metrics.targeted_success_rate = TargetedRate(**t.model_dump(), clean_rate=_mean(clean))
    control, comparison, control_rates = None, None, []
    if all(x.control is not None for xs in per_rep for x in xs):
        control_rates = rep_mean(lambda x: x.control_rate().value)
        ctrl_fool = rep_mean(lambda x: x.control.fooling_rate.value)
        control = Control(kind=tmpl.control.kind, draws=len(reps), norm_value=tmpl.control.norm_value,
                          fooling_rate=_control(ctrl_fool),
                          targeted_success_rate=_control(control_rates) if targeted else None)
        test = paired_replicate_test(primary, control_rates)
        comparison = Comparison(test=f"{REPLICATE_TEST} (UAP - random control)", p_value=test["p_value"],
                                statistic=test["t"],
                                detail={k: v for k, v in test.items() if k not in ("t", "p_value")})
    seeds = [len(xs) for xs in per_rep]
    within = [float(np.std([x.primary_rate().value for x in xs], ddof=1)) for xs in per_rep if len(xs) > 1]
    base = split_replicate(tmpl.model.name)[0]
    model = tmpl.model.model_copy(update={"name": base, "replicate": None, "sha256": None})
    attack = tmpl.attack.model_copy(update={
        "seed": tmpl.attack.seed if max(seeds) == 1 else None, "selection": None, "candidates": [],
        "seconds": float(sum(x.attack.seconds or 0 for xs in per_rep for x in xs)),
        "source_fooling_rate": None, "uap_norm": None, "interrupted": False})
    info = PooledInfo(replicates=reps, rates=primary, control_rates=control_rates, attack_seeds=min(seeds),
                      between_replicate_sd=float(np.std(primary, ddof=1)),
                      within_replicate_sd=_mean(within) if within else None,
                      cells=[f"{x.model.name}" for xs in per_rep for x in xs])
    return Result(robaudit_version=tmpl.robaudit_version, created=now_iso(), command=tmpl.command,
                  environment=tmpl.environment, model=model, data=tmpl.data, attack=attack, metrics=metrics,
                  control=control, comparison=comparison, pooled=info,
                  notes=[f"pooled over {len(reps)} training replicates ({', '.join(map(str, reps))}); "
                         f"{REPLICATE_INTERVAL} interval, {REPLICATE_TEST} against the control"])


def pooled_comparisons(pooled: list[Result]) -> list[dict]:
    """ImageNet-init full fine-tuning vs every other configuration of the same arch and attack, paired by
    replicate (replicates present on both sides, >= 2)."""
    groups: dict[tuple, list[Result]] = defaultdict(list)
    for r in pooled:
        if is_hardened_name(r.model.name):  # hardened twins are compared in the mitigation section
            continue
        a = r.attack
        groups[(r.model.task, r.model.arch, r.data.name, a.source, a.norm, round(a.zeta or 0, 6), a.method, a.target,
                a.surrogate, a.seed)].append(r)
    out = []
    for group in groups.values():
        for b in (r for r in group if r.model.init == "imagenet" and r.model.transfer == "full"):
            for o in group:
                if o is b:
                    continue
                rb = dict(zip(b.pooled.replicates, b.pooled.rates, strict=True))
                ro = dict(zip(o.pooled.replicates, o.pooled.rates, strict=True))
                common = sorted(set(rb) & set(ro))
                if len(common) < MIN_REPLICATES:
                    continue
                test = paired_replicate_test([rb[i] for i in common], [ro[i] for i in common])
                out.append({"base": b, "other": o, "replicates": common, "base_rates": [rb[i] for i in common],
                            "other_rates": [ro[i] for i in common], **test})
    return out
