"""The mitigation section of an audit document: original vs hardened cells, paired, with the accuracy cost.

Before/after fooling rates (each UAP built against the model it is measured on, fooling against that
model's own clean prediction) are compared with exact McNemar tests on the same images, Holm-corrected
over the pairs. Clean and balanced accuracy changes carry 95 % paired percentile bootstrap intervals
over the test images (scipy); a hardened model at chance balanced accuracy is flagged as collapsed, so
a model predicting one class never reads as robust. Used by ``robaudit harden`` and by audit recipes
with ``harden = true`` (see :mod:`robaudit.auditing.mitigation`).
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy import stats as sps
from sklearn.metrics import balanced_accuracy_score

from robaudit.attacks.predict import predict
from robaudit.auditing.cells import Cell
from robaudit.auditing.recipes import AuditRecipe
from robaudit.core.errors import BadInput
from robaudit.core.specs import UAPSpec
from robaudit.core.stats import mcnemar_exact, rate
from robaudit.models import load_model_and_task
from robaudit.models.zoo import hardened_name, is_hardened_name

THREATS = ("photos", "train", "surrogate", "targeted")
TABLE = "8. Mitigation: original vs hardened (same images, UAPs rebuilt against each model)"
#: balanced accuracy within this of chance (1/K) means the model has collapsed to (nearly) one class
COLLAPSE_MARGIN = 0.05
ALPHA = 0.05


class ReauditConfig(BaseModel):
    """The re-audit's attacker; seed, photos and selection size must match what hardening set apart."""

    model_config = ConfigDict(extra="forbid")
    threats: list[Literal["photos", "train", "surrogate", "targeted"]] = Field(default_factory=lambda: list(THREATS))
    norm: Literal["linf", "l2"] | None = Field(None, description="default: the hardening norm")
    zeta: float | None = Field(None, gt=0, le=1, description="default: the hardening zeta")
    method: Literal["fgsm", "sgd", "deepfool", "best"] = "best"  # what the hardening figures were measured with
    target: str | None = Field(None, description="targeted cell's class (default: the last class)")
    split: str = "test"
    eval_limit: int | None = Field(None, ge=1)
    train_source_limit: int | None = Field(None, ge=1, description="training images the train/targeted UAPs use")
    budget: int | None = Field(None, ge=1, description="augmented photos per photo UAP (default: by device)")
    controls: int = Field(10, ge=0)
    patience: int | None = 6
    max_iter: int | None = Field(None, ge=1)
    batch_size: int = Field(32, ge=1)
    pgd_n: int = Field(128, ge=0, description="test images for per-sample PGD (0: skip)")
    pgd_steps: int = Field(10, ge=1)
    max_accuracy_drop: float = Field(0.03, ge=0, le=1, description="tolerated balanced accuracy drop")
    bootstrap: int = Field(2000, ge=100)
    device: str = "auto"
    weights_file: str | None = Field(None, description="ImageNet weights of the arch for the surrogate cell when "
                                     "it has none offline")


def _bootstrap_ci(fn, data: tuple, n: int, seed: int) -> list[float]:
    """Paired percentile bootstrap over the test images (scipy), 95 %."""
    with warnings.catch_warnings():  # a resample can miss a rare class: sklearn warns, the statistic is still defined
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        res = sps.bootstrap(data, fn, paired=True, vectorized=False, n_resamples=n, method="percentile",
                            random_state=np.random.default_rng(seed))
    lo, hi = res.confidence_interval
    return [float(lo), float(hi)]


def accuracy_change(y: np.ndarray, before: np.ndarray, after: np.ndarray, num_classes: int,
                    max_drop: float = 0.03, n_boot: int = 2000, seed: int = 0) -> dict:
    """Clean and balanced accuracy before/after on the same images, the change with paired bootstrap CIs,
    the exact McNemar test of per-image correctness, and whether the hardened model collapsed."""
    y, before, after = (np.asarray(a).astype(int) for a in (y, before, after))

    def acc(t, p):
        return float(np.mean(t == p))

    def bal(t, p):
        return float(balanced_accuracy_score(t, p))

    out = {}
    for key, f in (("clean", acc), ("balanced", bal)):
        b, a = f(y, before), f(y, after)
        ci = _bootstrap_ci(lambda t, p0, p1, f=f: f(t, p1) - f(t, p0), (y, before, after), n_boot, seed)
        out[key] = {"before": b, "after": a, "change": a - b, "ci": ci}
    _, p, detail = mcnemar_exact(before == y, after == y)
    out["clean"]["p_value"], out["clean"]["discordant"] = p, detail
    drop = -out["balanced"]["change"]
    share = float(np.bincount(after, minlength=num_classes).max() / max(len(after), 1))
    collapsed = out["balanced"]["after"] <= 1.0 / num_classes + COLLAPSE_MARGIN
    out.update(max_accuracy_drop=max_drop, balanced_drop=drop, balanced_drop_upper=-out["balanced"]["ci"][0],
               within_tolerance=drop <= max_drop + 1e-12 and not collapsed, collapsed=collapsed,
               majority_prediction_share=share, n=int(len(y)))
    return out


def _rate_dict(r) -> dict:
    return {"value": r.value, "ci": list(r.ci), "k": r.k, "n": r.n}


def pair_rows(pairs: list[tuple]) -> list[dict]:
    """One row per (threat, original cell, hardened cell): rates, reduction, exact McNemar (raw p; the
    document's one Holm family adjusts it, see :func:`apply_family`)."""
    rows = []
    for threat, co, ch in pairs:
        if co.result is None or ch.result is None:
            rows.append({"threat": threat, "error": co.error or ch.error or "cell missing"})
            continue
        so, sh = co.success(), ch.success()
        if so is None or sh is None or so.shape != sh.shape:
            rows.append({"threat": threat, "error": "per-image outcomes missing or on different images"})
            continue
        _, p, detail = mcnemar_exact(so, sh)
        a = co.result.attack
        comp = co.result.comparison
        rows.append({
            "threat": threat, "original": co.result.model.name, "hardened": ch.result.model.name,
            "source": a.source, "threat_model": a.threat_model, "norm": a.norm, "zeta": a.zeta,
            "target": a.target_name, "measure": "targeted success" if a.targeted else "fooling rate",
            "before": _rate_dict(rate(so)), "after": _rate_dict(rate(sh)),
            "reduction": float(so.mean() - sh.mean()), "p_value": p, "discordant": detail,
            "baseline_beats_noise": bool(comp is not None and comp.p_value < ALPHA and
                                         co.result.primary_rate().value > co.result.control_rate().value)
            if comp is not None and co.result.control_rate() is not None else None,
            "cells": [f"cells/{co.key}", f"cells/{ch.key}"]})
    return rows


def section_pvalues(section: dict) -> list[float]:
    """The raw p-values of a mitigation section's pair rows, in order (for the document's Holm family)."""
    return [r["p_value"] for pair in section["pairs"] for r in pair["cells"] if "p_value" in r]


def apply_family(section: dict, adjusted: list[float], tables: dict | None = None) -> dict:
    """Set each pair row's adjusted p (from the document's one family, same order as :func:`section_pvalues`),
    its significance and every pair's verdict; re-make the before/after table in ``tables``."""
    it = iter(adjusted)
    for pair in section["pairs"]:
        for r in pair["cells"]:
            if "p_value" in r:
                r["p_adjusted"] = next(it)
                r["significant"] = r["p_adjusted"] < ALPHA and r["reduction"] > 0
                r["rose"] = r["p_adjusted"] < ALPHA and r["reduction"] < 0  # hardening made this threat worse
        if pair.get("accuracy"):
            pair.update(_pair_summary(pair["cells"], pair["accuracy"]))
    if tables is not None:
        tables[TABLE] = section_table({"pairs": [p for p in section["pairs"] if p.get("accuracy")],
                                       "per_sample": section.get("per_sample")})
    return section


def mitigation_section(pairs: list[tuple], task, before_model, after_model, spec: UAPSpec,
                       cfg: ReauditConfig, size: int) -> dict:
    """The ``mitigation`` section of one original/hardened pair: cell rows, accuracy change (verdicts are
    set by :func:`apply_family`). Accuracy is measured on the cells' evaluation images (same split, limit
    and seed)."""
    rows = pair_rows(pairs)
    x, y = task.tensors(spec.split, size=size, limit=spec.eval_limit, seed=spec.seed)
    pb = predict(before_model, x, batch_size=256, device="cpu").numpy()
    pa = predict(after_model, x, batch_size=256, device="cpu").numpy()
    acc = accuracy_change(y.numpy(), pb, pa, task.num_classes, cfg.max_accuracy_drop, cfg.bootstrap, spec.seed)
    return {"pairs": [_pair_summary(rows, acc)], "alpha": ALPHA, "max_accuracy_drop": cfg.max_accuracy_drop,
            "notes": NOTES}


NOTES = [
    "fooling is measured against each model's own clean prediction; a model predicting one class is caught by "
    "its clean and balanced accuracy, reported beside every fooling rate",
    "every UAP of the re-audit was rebuilt from scratch against the model it is measured on (method best), from "
    "photos, selection images and a seed set apart from those used in hardening",
    "before/after: exact McNemar test on the same test images, Holm-corrected over the pairs; accuracy changes: "
    "95% paired percentile bootstrap over the test images",
    "UAP robustness is not per-image robustness: see the per-sample PGD rows",
]


def _pair_summary(rows: list[dict], acc: dict) -> dict:
    ok = [r for r in rows if "reduction" in r]
    significant = [r for r in ok if r.get("significant")]  # unset before apply_family: not significant
    if acc["collapsed"]:
        verdict = "not robust: the hardened model collapsed to (nearly) one class"
    elif not acc["within_tolerance"]:
        verdict = (f"too costly: balanced accuracy fell {acc['balanced_drop']:.1%} (tolerance "
                   f"{acc['max_accuracy_drop']:.1%})")
    elif ok and len(significant) == len(ok):
        verdict = "mitigated: every UAP cell fell significantly within the accuracy tolerance"
    elif significant:
        verdict = f"partly mitigated: {len(significant)} of {len(ok)} UAP cells fell significantly"
    else:
        verdict = "not mitigated: no UAP cell fell significantly"
    rose = [r for r in ok if r.get("rose")]
    if rose and not acc["collapsed"]:
        verdict += "; it made " + ", ".join(
            f"the {r['threat']} UAP worse ({r['before']['value']:.1%} -> {r['after']['value']:.1%})" for r in rose)
    first = ok[0] if ok else {}
    return {"original": first.get("original"), "hardened": first.get("hardened"), "cells": rows,
            "accuracy": acc, "verdict": verdict, "significant_reductions": len(significant), "cells_compared": len(ok)}


def section_table(section: dict) -> dict:
    """The before/after table of the audit document (rendered by every report)."""
    rows = []
    for pair in section["pairs"]:
        acc = pair["accuracy"]
        for r in pair["cells"]:
            if "reduction" not in r:
                rows.append([pair["original"], pair["hardened"], r["threat"], None, None, None, None, None,
                             r.get("error")])
                continue
            rows.append([r["original"], r["hardened"], r["threat"] + (f" -> {r['target']}" if r["target"] else ""),
                         r["before"]["value"], r["after"]["value"], r["reduction"], r["p_adjusted"],
                         "yes" if r["significant"] else "no", ""])
        for key in ("clean", "balanced"):
            a = acc[key]
            rows.append([pair["original"], pair["hardened"], f"{key} accuracy", a["before"], a["after"], -a["change"],
                         None, f"CI of change [{a['ci'][0]:+.3f}, {a['ci'][1]:+.3f}]",
                         pair["verdict"] if key == "balanced" else ""])
    for ps in section.get("per_sample") or []:
        rows.append([ps["original"], ps["hardened"], f"per-sample PGD {ps['norm']} robust accuracy", ps["before"],
                     ps["after"], ps["before"] - ps["after"], None, "", f"eps {ps['eps']:.4g}, n={ps['n']}"])
    return {"columns": ["original", "hardened", "cell", "before", "after", "reduction", "p (McNemar, Holm)",
                        "significant", "note"], "rows": rows}


def mitigation_doc(recipe: AuditRecipe, done: list[Cell], cfg: ReauditConfig | None = None) -> dict | None:
    """The audit document's ``mitigation`` section when it holds hardened twins (raw p-values: the caller
    adjusts them in the document's family with :func:`apply_family`); else None."""
    by_key = {c.key: c for c in done}
    pairs: dict[str, list] = defaultdict(list)
    for c in done:
        name = c.spec.model
        if not name or not is_hardened_name(name):
            continue
        for o in done:
            if o.spec.model and not is_hardened_name(o.spec.model) and hardened_name(o.spec.model) == name and \
                    c.spec.model_copy(update={"model": o.spec.model}).cache_key() == o.key and o.key in by_key:
                threat = ("targeted" if c.spec.target is not None else "surrogate" if c.spec.surrogate else
                          "train" if c.spec.source == "train" else "photos")
                pairs[o.spec.model].append((threat, o, c))
    if not pairs:
        return None
    cfg = cfg or ReauditConfig(device="cpu")
    sections = []
    for original, prs in pairs.items():
        try:
            lm, task = load_model_and_task(original, device="cpu")
            h_lm, _ = load_model_and_task(hardened_name(original), device="cpu")
            sections += mitigation_section(prs, task, lm.module, h_lm.module, prs[0][1].spec, cfg,
                                           lm.card.input_size)["pairs"]
        except (BadInput, OSError, ValueError) as exc:  # the tables stay; the section says why a pair is missing
            sections.append({"original": original, "hardened": hardened_name(original), "error": str(exc),
                             "cells": [], "accuracy": None, "verdict": "not compared"})
    return {"pairs": sections, "alpha": ALPHA, "max_accuracy_drop": cfg.max_accuracy_drop, "notes": NOTES}
