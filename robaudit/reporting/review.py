"""What a clinical safety and security reviewer signs: harm by diagnosis, the threat model per cell, model and
data identity, the attack settings (shared once, differences per cell), the bill of materials, and limitations
written from the run's own facts. Every item is read from the results; nothing here is assumed."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from robaudit.core.errors import BadInput
from robaudit.core.files import atomic_write_text
from robaudit.core.fmt import pct
from robaudit.core.results import Result
from robaudit.grading import cell_label
from robaudit.reporting.build import Report
from robaudit.reporting.facts import bill_of_materials, data_identity, harm_line, model_identity
from robaudit.reporting.facts import fmt_value as _fmt
from robaudit.reporting.plots import find_artifact

#: the published attacker's photo budget (Minagi et al. 2022): 100,000 ImageNet photos
PUBLISHED_BUDGET = 100_000
#: the threat models an audit can evaluate (``attack.threat_model``)
THREATS = ("white-box natural", "zero-knowledge surrogate", "training images")
#: attack fields that are settings (the rest of AttackInfo are outcomes: seconds, achieved norm, ...)
SETTINGS = ("threat_model", "method", "mode", "backend", "norm", "zeta", "eps", "eps_scale", "clip", "source",
            "source_n", "budget", "surrogate", "max_iter", "steps", "step_size", "batch_size", "seed", "device",
            "target_name")
SETTING_TITLES = {"threat_model": "threat model", "target_name": "target", "source_n": "source images",
                  "eps_scale": "eps unit", "max_iter": "passes", "step_size": "step size", "batch_size": "batch"}


def _uap(report: Report) -> list[int]:
    return [i for i in report.uap_indices if report.cells[i].metrics is not None]


# ----------------------------------------------------------------------------------------------- harm
def critical_rows(report: Report) -> list[dict[str, Any]]:
    """One row per UAP cell with a critical class: missed-disease and false-alarm rates, control, direction."""
    rows = []
    for i in _uap(report):
        c = report.cells[i]
        h = c.harm.critical if c.harm is not None else None
        if h is None:
            continue
        rows.append({"index": i, "label": cell_label(c), "severity": report.assessments[i].severity,
                     "critical": h.name, "source": h.source, "missed": h.missed_disease, "false_alarm": h.false_alarm,
                     "control_missed": h.control_missed_disease, "control_false_alarm": h.control_false_alarm,
                     "p": h.missed_disease_p, "direction": h.direction,
                     "worst": h.direction == "hides disease", "headline": i == report.headline})
    rows.sort(key=lambda r: (not r["headline"], -r["missed"].ci[0], r["index"]))
    return rows


def class_rows(report: Report) -> list[dict[str, Any]]:
    """Per (cell, class): sensitivity and specificity clean -> under the UAP, with the paired tests."""
    rows = []
    for i in _uap(report):
        c = report.cells[i]
        if c.harm is None:
            continue
        crit = c.harm.critical.index if c.harm.critical is not None else None
        for k in c.harm.classes:
            rows.append({"label": cell_label(c), "name": k.name, "critical": k.index == crit,
                         "sens": (k.sensitivity_clean, k.sensitivity_adv, k.sensitivity_p),
                         "spec": (k.specificity_clean, k.specificity_adv, k.specificity_p),
                         "drop": k.sensitivity_clean.value - k.sensitivity_adv.value, "headline": i == report.headline})
    return rows


def transitions(result: Result) -> dict[str, Any] | None:
    """The transition matrix: clean prediction (rows) -> prediction on x + v (columns), counts and row shares."""
    m = result.metrics
    if m is None or m.confusion is None:
        return None
    names = result.model.classes if len(result.model.classes) == len(m.confusion) else \
        [str(i) for i in range(len(m.confusion))]
    rows = []
    for name, counts in zip(names, m.confusion, strict=True):
        total = sum(counts)
        rows.append({"name": name, "total": total,
                     "cells": [(k, k / total if total else None) for k in counts]})
    return {"label": cell_label(result), "classes": names, "rows": rows, "n": sum(map(sum, m.confusion))}


# ------------------------------------------------------------------------------------- threat model
def threat_rows(report: Report) -> list[dict[str, str]]:
    """Per UAP cell, NIST AI 100-2's reading of an evasion attack: goal, knowledge, capability, delivery."""
    rows = []
    for i in _uap(report):
        c = report.cells[i]
        a = c.attack
        crit = c.harm.critical if c.harm is not None else None
        if a.targeted:
            goal = f"force every diagnosis to {a.target_name or a.target}"
            if crit is not None and crit.direction:
                goal += f" ({crit.direction}" + (": the clinically worst direction)" if crit.direction ==
                                                 "hides disease" else ")")
        else:
            goal = "change as many diagnoses as possible (untargeted)"
        if a.threat_model == "zero-knowledge surrogate":
            knowledge = f"no access to the model: v built on {a.surrogate or 'a public model'}"
        elif a.threat_model == "training images":
            knowledge = "the model's gradients and the task's training images (insider)"
        else:
            knowledge = "the model's gradients (white-box); no medical images"
        budget = f"{a.budget:,} augmented views of {a.source}" if a.budget else \
            f"{a.source_n or '?'} images of {a.source}"
        size = f"zeta = {a.zeta:.1%} of the mean image norm" if a.zeta is not None else f"eps = {_fmt(a.eps)}"
        capability = f"one {a.norm.upper() if a.norm == 'l2' else 'L-inf'} perturbation, {size}; built from {budget}"
        rows.append({"label": cell_label(c), "goal": goal, "knowledge": knowledge, "capability": capability,
                     "delivery": "the same v added to every input image after acquisition" +
                     (" (x + v clipped to valid pixels)" if a.clip else " (not clipped, as published)")})
    return rows


# --------------------------------------------------------------------------------- identity and BOM
def settings(report: Report) -> tuple[list[tuple[str, str]], list[str], list[list[str]]]:
    """Attack settings stated once where every UAP cell shares them, and a table of only the ones that differ."""
    cells = [report.cells[i] for i in _uap(report)] or list(report.cells)
    values = {f: [_fmt(getattr(c.attack, f, None)) for c in cells] for f in SETTINGS}
    shared = [(SETTING_TITLES.get(f, f), v[0]) for f, v in values.items() if len(set(v)) == 1 and v[0]]
    differ = [f for f, v in values.items() if len(set(v)) > 1]
    cols = ["cell"] + [SETTING_TITLES.get(f, f) for f in differ]
    rows = [[cell_label(c)] + [values[f][j] for f in differ] for j, c in enumerate(cells)]
    return shared, cols, rows if differ else []


# ------------------------------------------------------------------------------------- limitations
def detectable_effect(n: int, p0: float, power: float = 0.8, alpha: float = 0.05) -> float | None:
    """The smallest rate above ``p0`` that ``n`` images detect with ``power`` (two-sided ``alpha``; Cohen's h with
    statsmodels' NormalIndPower, two samples of n: conservative for the paired test the audit runs)."""
    from statsmodels.stats.power import NormalIndPower  # statsmodels.stats.power is slow to import

    if n < 2:
        return None
    h = float(NormalIndPower().solve_power(nobs1=n, alpha=alpha, power=power, ratio=1.0))
    phi = 2 * math.asin(math.sqrt(min(max(p0, 0.0), 1.0))) + h
    return None if phi > math.pi else math.sin(phi / 2) ** 2 - p0


def fact_limitations(report: Report) -> list[str]:
    """Limitations written from this run's facts: test set size and the smallest effect it detects, training
    runs, the attacker's budget against the published one, threats not evaluated, direction not tested."""
    cells = [report.cells[i] for i in _uap(report)]
    if not cells:
        return []
    out = []
    by_n: dict[int, list[float]] = {}
    for c in cells:
        ctrl = c.control_rate()
        by_n.setdefault(c.metrics.fooling_rate.n, []).append(ctrl.value if ctrl is not None else 0.0)
    for n, p0s in sorted(by_n.items()):
        p0 = sorted(p0s)[len(p0s) // 2]
        d = detectable_effect(n, p0)
        half = max(b - a for a, b in [c.metrics.fooling_rate.ci for c in cells if c.metrics.fooling_rate.n == n]) / 2
        out.append(f"Test set: {n} images. A rate is known to about ±{pct(half)} (95% Wilson); against a control "
                   f"near {pct(p0)}, an effect smaller than about {pct(d) if d is not None else 'n/a'} is not "
                   "reliably detected (80% power, two-sided 5%), and a missed-disease rate is over the detected "
                   "cases of one class only, so its interval is wider.")
    replicated = any(c.pooled is not None for c in report.cells)
    if not replicated:
        models = sorted({c.model.name for c in cells})
        out.append(f"The verdict rests on one training run per model ({', '.join(models[:4])}"
                   f"{' ...' if len(models) > 4 else ''}): the numbers describe these weights, not the training "
                   "recipe; train replicates (--replicate) to separate the two.")
    changed = {c.model.name: c.model.conditions_changed for c in cells if c.model.conditions_changed}
    for name, diffs in changed.items():
        out.append(f"{name} was trained under other conditions than this audit ran in ({'; '.join(diffs)}): the "
                   "same seed retrained here gives other weights, so these figures describe the stored weights and "
                   "a retrain may not reproduce them.")
    budgets = sorted({c.attack.budget for c in cells if c.attack.budget})
    if budgets:
        out.append(f"Attacker budget: {', '.join(f'{b:,}' for b in budgets)} photo views, "
                   f"{pct(max(budgets) / PUBLISHED_BUDGET)} of the published attacker's {PUBLISHED_BUDGET:,} photos; "
                   "a better-resourced attacker may reach higher rates.")
    missing = [t for t in THREATS if t not in {c.attack.threat_model for c in cells}]
    if missing:
        out.append(f"Not evaluated: {'; '.join(missing)} threat model{'s' if len(missing) > 1 else ''}. The "
                   "verdict says nothing about them.")
    crits = [c for c in cells if c.harm is not None and c.harm.critical is not None]
    if not crits:
        out.append("No critical class declared (dataset card critical_class or --critical-class): the harm of a "
                   "changed diagnosis is shown per class only, not as a missed-disease rate.")
    elif not any(c.attack.targeted and c.harm.critical.direction == "hides disease" for c in crits):
        out.append(f"No targeted cell toward a class other than {crits[0].harm.critical.name} (the clinically worst "
                   "direction, hiding disease) was run.")
    if not report.per_sample_indices:
        out.append("No per-sample attack was run: an attacker who perturbs each image separately is stronger than "
                   "the universal perturbation measured here.")
    return out


def residual_risk(report: Report) -> list[str]:
    """When hardening ran: the mitigation and what remains after it, per re-audited cell."""
    section = report.meta.get("mitigation") if isinstance(report.meta, dict) else None
    if not isinstance(section, dict):
        return []
    out = []
    for pair in section.get("pairs") or []:
        if pair.get("error"):
            out.append(f"{pair.get('hardened')}: not compared ({pair['error']}).")
            continue
        parts = [f"{r['threat']}{' -> ' + str(r['target']) if r.get('target') else ''} {pct(r['before']['value'])} "
                 f"-> {pct(r['after']['value'])}" + (" (significant)" if r.get("significant") else " (n.s.)")
                 for r in pair.get("cells") or [] if "reduction" in r]
        acc = (pair.get("accuracy") or {}).get("balanced") or {}
        acc_text = f"; balanced accuracy {pct(acc.get('before'))} -> {pct(acc.get('after'))}" if acc else ""
        out.append(f"Mitigation: universal adversarial training of {pair.get('original')} into {pair.get('hardened')}. "
                   f"Residual risk (UAP rate before -> after, rebuilt against each model): {', '.join(parts)}"
                   f"{acc_text}. {pair.get('verdict', '')}".strip())
    return out


def severity_note(report: Report) -> str:
    """Says how the grade reads direction: it does not; the harm table does (so a gate can)."""
    worst = [r for r in critical_rows(report) if r["worst"]]
    text = ("The severity grade reads the fooling rate (targeted success for a targeted cell) and does not weigh "
            "the direction of the change; the harm table above does, and the gate rules max_missed_disease_rate and "
            "max_sensitivity_drop read it.")
    if worst:
        w = max(worst, key=lambda r: r["missed"].value)
        text += (f" The clinically worst direction measured: {w['label']} hides {w['critical']} in "
                 f"{pct(w['missed'].value)} of detected cases (graded {w['severity']}).")
    return text


def review_context(report: Report) -> dict[str, Any]:
    """The reviewer's part of the template context."""
    shared, diff_cols, diff_rows = settings(report)
    headline = report.cells[report.headline] if report.headline is not None else None
    uap = _uap(report)
    matrix_cells = ([report.headline] if report.headline is not None else []) + [i for i in uap if i != report.headline]
    return {
        "harm_line": harm_line(headline) if headline is not None else None,
        "critical_rows": critical_rows(report), "class_rows": class_rows(report),
        "transition": transitions(report.cells[matrix_cells[0]]) if matrix_cells else None,
        "other_transitions": [t for i in matrix_cells[1:] if (t := transitions(report.cells[i])) is not None],
        "threat_rows": threat_rows(report), "model_identity": model_identity(report.cells),
        "data_identity": data_identity(report.cells), "shared_settings": shared, "diff_cols": diff_cols,
        "diff_rows": diff_rows, "bom": bill_of_materials(report.cells, report.meta),
        "fact_limitations": fact_limitations(report),
        "residual_risk": residual_risk(report), "severity_note": severity_note(report),
    }


# ------------------------------------------------------------------------------------ per-image bundle
def bundle_predictions(report: Report, path: str | Path) -> tuple[Path, int]:
    """Every cell's predictions.csv in one file, a ``cell`` column first (``robaudit report --per-image``), so a
    reviewer can pull any finding back to its images. Returns (path, cells bundled); a cell without the file
    (written before 0.6, or a per-sample attack) is named in a BadInput when none has one."""
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    header, bundled = None, 0
    for c in report.cells:
        src = find_artifact(report, c, "predictions.csv", "predictions.csv")
        if src is None or not src.is_file():
            continue
        with src.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
        if not rows:
            continue
        if header is None:
            header = ["cell"] + rows[0]
            out.writerow(header)
        for row in rows[1:]:
            out.writerow([cell_label(c)] + row)
        bundled += 1
    if not bundled:
        raise BadInput("no cell of this document has a predictions.csv beside it",
                       "re-run the cells with this robaudit version (each run writes predictions.csv)")
    path = Path(path)
    atomic_write_text(path, buf.getvalue())
    return path, bundled
