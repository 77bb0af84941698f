"""The HTML report: one self-contained file (inline CSS, images as ``data:`` URIs, a Content-Security-Policy
that forbids every network load and every script), rendered with jinja2 autoescaping and readable printed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from robaudit import __version__
from robaudit.core.fmt import ci_text, pct, pval
from robaudit.core.results import Result
from robaudit.grading import SEVERITY_RULE, cell_label, severity_rank, source_kind
from robaudit.reporting.build import Report
from robaudit.reporting.mitigation import mitigation_plots
from robaudit.reporting.plots import find_artifact, image_artifact, make_plots, perturbation
from robaudit.reporting.review import fact_limitations, review_context

TEMPLATES = Path(__file__).parent / "templates"

SOURCE_KIND_TEXT = {"natural": "natural photos", "task": "task images", "other": "other"}


# ---------------------------------------------------------------------------------------- formatting


def num(x: Any) -> str:
    """Numbers in 4 significant digits, everything else as text; None -> ''. A mapping reads as ``key value``
    pairs (never raw JSON: a reader's report shows values, audit.json keeps the structure)."""
    if x is None:
        return ""
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:.4g}"
    if isinstance(x, (list, tuple)):
        return ", ".join(num(v) for v in x)
    if isinstance(x, dict):
        return "; ".join(f"{k} {num(v)}" for k, v in x.items() if not isinstance(v, (dict, list)) or len(v) <= 4)
    return str(x)


def jinja_env(autoescape: bool = True) -> Environment:
    """The jinja2 environment for report templates (autoescape on for HTML, strict undefined)."""
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=autoescape, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters.update(pct=pct, ci=ci_text, pval=pval, num=num)
    return env


# ------------------------------------------------------------------------------------------- content


def findings(report: Report) -> list[dict[str, Any]]:
    """One row per UAP cell, worst first."""
    rows = []
    for i in report.uap_indices:
        c, a = report.cells[i], report.assessments[i]
        m = c.metrics
        rows.append({
            "index": i, "label": cell_label(c), "model": c.model.name, "init": c.model.init,
            "source": c.attack.source or "", "source_kind": SOURCE_KIND_TEXT[source_kind(c)],
            "norm": c.attack.norm, "zeta": c.attack.zeta, "method": c.attack.method,
            "target": (c.attack.target_name or c.attack.target) if c.attack.targeted else None,
            "a": a, "n": m.fooling_rate.n if m else None,
            "clean_accuracy": m.clean_accuracy if m else None, "adv_accuracy": m.adv_accuracy if m else None,
            "test": c.comparison.test if c.comparison else None, "headline": i == report.headline,
            "pooled": c.pooled is not None,
            "spread": (" · ".join(f"{v:.1%}" for v in c.pooled.rates) if c.pooled else None),
        })
    # pooled rows (the verdict's unit with replicates) first, then worst first
    rows.sort(key=lambda r: (not r["pooled"], -severity_rank(r["a"].severity), -(r["a"].effect_lower or 0.0),
                             r["index"]))
    return rows


def per_sample_rows(report: Report) -> list[dict[str, Any]]:
    """One row per (per-sample cell, epsilon)."""
    rows = []
    for i in report.per_sample_indices:
        c = report.cells[i]
        for r in sorted(c.per_eps or [], key=lambda r: r.eps):
            rows.append({"label": cell_label(c), "eps": r.eps, "robust": r.robust_accuracy,
                         "success": r.success_rate, "clean": c.metrics.clean_accuracy if c.metrics else None})
        if c.min_norm is not None:
            rows.append({"label": cell_label(c) + " (minimal norm)", "eps": None, "robust": None, "success": None,
                         "clean": None, "min_norm": c.min_norm})
    return rows


def _unique(items: list[tuple[str, Any]]) -> list[Any]:
    seen, out = set(), []
    for key, item in items:
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out


ATTACK_FIELDS = ("threat_model", "method", "mode", "backend", "norm", "zeta", "eps", "eps_scale", "zeta_reference",
                 "clip", "source", "source_n", "budget", "surrogate", "max_iter", "steps", "step_size", "batch_size",
                 "seed", "device", "seconds", "uap_norm", "source_fooling_rate", "interrupted")


def _selection_text(a) -> str | None:
    """How v was chosen, in one line (the attacker-budget and selection settings of a cell)."""
    s = a.selection
    if s is None:
        return None
    text = (f"best of checks every {s.every} images on {s.n} {s.split} images: {s.best_rate:.1%} at {s.best_at} "
            f"images" + (f" (last v {s.final_rate:.1%})" if s.final_rate is not None else ""))
    if s.plateau:
        why = getattr(s, "stop_reason", None)
        text += f"; stopped early ({why})" if why else (f"; stopped after {s.patience} checks without gain"
                                                           if s.patience else "; stopped early by the stop rule")
    if a.candidates:
        runs = [f"{c.name}/seed {c.seed}: " + (f"skipped ({c.skipped})" if c.skipped else
                                                 f"{c.selection_rate:.1%}" if c.selection_rate is not None else "-")
                + (" (kept)" if c.chosen else "") for c in a.candidates]
        text += "; candidates " + ", ".join(runs)
    return text


def attack_rows(report: Report) -> tuple[list[str], list[list[Any]]]:
    """Per-cell attack settings; columns that are empty in every cell are dropped."""
    cols = [f for f in ATTACK_FIELDS if any(getattr(c.attack, f) not in (None, "") for c in report.cells)]
    rows = [[cell_label(c)] + [getattr(c.attack, f) for f in cols] for c in report.cells]
    if any(c.attack.selection is not None for c in report.cells):
        cols.append("selection")
        for row, c in zip(rows, report.cells, strict=True):
            row.append(_selection_text(c.attack) or "")
    return ["cell"] + cols, rows


def generic_table(value: Any) -> dict[str, Any]:
    """Render an audit table of any common shape: records, ``{columns, rows}``, ``{key: record}``."""
    if isinstance(value, dict) and isinstance(value.get("columns"), list) and isinstance(value.get("rows"), list):
        return {"columns": [str(c) for c in value["columns"]],
                "rows": [r if isinstance(r, list) else [r] for r in value["rows"]]}
    if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
        value = [{"": k, **v} for k, v in value.items()]
    if isinstance(value, list) and value and all(isinstance(r, dict) for r in value):
        cols: list[str] = []
        for r in value:
            cols += [str(k) for k in r if str(k) not in cols]
        return {"columns": cols, "rows": [[r.get(c) for c in cols] for r in value]}
    return {"text": "not a table: the values are in audit.json"}


OUTCOME_FIELDS = ("seconds", "uap_norm", "source_fooling_rate", "interrupted", "zeta_reference", "eps_scale")


def cell_details(report: Report) -> list[dict[str, Any]]:
    """Per cell, for the technical appendix: how v was chosen and the run's own outcomes (time, achieved norm)."""
    out = []
    for c in report.cells:
        items = [(f.replace("_", " "), num(getattr(c.attack, f))) for f in OUTCOME_FIELDS
                 if getattr(c.attack, f) not in (None, "", False)]
        sel = _selection_text(c.attack)
        if sel:
            items.append(("selection", sel))
        out.append({"label": cell_label(c), "facts": items})
    return out


def audit_facts(meta: dict[str, Any]) -> list[tuple[str, str]]:
    """An audit document's facts as a reader wants them (recipe, cells, run time, test family, replicates); the
    structures themselves (recipe, environment, p-value lists, matrices) stay in audit.json."""
    out = []
    recipe = meta.get("recipe")
    if isinstance(recipe, dict) and recipe.get("name"):
        out.append(("recipe", str(recipe["name"])))
    counts = meta.get("counts")
    if isinstance(counts, dict):
        out.append(("cells", ", ".join(f"{v} {k}" for k, v in counts.items())))
    if isinstance(meta.get("seconds"), (int, float)):
        out.append(("run time", f"{meta['seconds']:.0f} s"))
    mc = meta.get("multiple_comparison")
    if isinstance(mc, dict):
        fams = mc.get("families") if isinstance(mc.get("families"), dict) else {}
        out.append(("multiple comparisons", f"{mc.get('method', '')} over {mc.get('family_size', '?')} tests" +
                    (f" ({', '.join(f'{k}: {v}' for k, v in fams.items())})" if len(fams) > 1 else "")))
    rep = meta.get("replicates")
    if isinstance(rep, dict) and (rep.get("per_configuration") or 1) > 1:
        out.append(("training replicates", f"{rep['per_configuration']} per configuration, "
                    f"{rep.get('attack_seeds', 1)} attack seed(s) each"))
    for key in ("created", "robaudit_version", "schema_version"):
        if isinstance(meta.get(key), (str, int, float)):
            out.append((key.replace("_", " "), str(meta[key])))
    out.append(("full record", "audit.json (recipe, environment, every p-value, transfer matrices)"))
    return out


def limitations(report: Report) -> list[str]:
    """What this report cannot show, from the data at hand first, then the method's standing caveats."""
    cells = report.cells
    uap = [c for c in cells if c.attack.kind == "uap"]
    out = fact_limitations(report)
    if any(c.control is None for c in uap):
        out.append("Some cells have no random control, so their effect cannot be separated from noise "
                   "sensitivity.")
    if any(c.attack.interrupted for c in cells):
        out.append("At least one attack was interrupted before it finished; its rate is a lower estimate.")
    if any(not c.attack.clip for c in cells):
        out.append("Some perturbations were added without clipping to the valid pixel range (as in the "
                   "published method): a few perturbed inputs are not valid images.")
    if uap and not any(c.model.init == "random" for c in cells):
        out.append("No randomly initialised model was audited, so this report cannot attribute the "
                   "vulnerability to ImageNet transfer learning specifically.")
    if uap and not any(source_kind(c) == "natural" for c in uap):
        out.append("No UAP here was built from natural photos; the cells model an attacker with access to "
                   "other images (see the source column).")
    refs = sorted({c.attack.zeta_reference for c in uap if c.attack.zeta_reference})
    if refs:
        out.append(f"Perturbation size zeta is relative to the mean norm over: {'; '.join(refs)}.")
    if uap and not any(c.attack.threat_model == "zero-knowledge surrogate" for c in uap):
        out.append("UAPs were computed with the audited model's gradients (white-box). An attacker without the "
                   "weights would use a surrogate, typically weaker; a transfer matrix, where present, measures that.")
    out += [
        "The fooling rate counts changed predictions against the clean prediction, not the true label; "
        "targeted success counts images already in the target class (the clean rate is shown beside it).",
        "Findings hold for the exact model and data versions listed (hashes above); retrain, re-audit.",
        "A 'none' grade means no effect was detected at these sizes, sources and test-set size; it is not "
        "a proof of robustness.",
    ]
    return out


def mitigations(report: Report) -> list[str]:
    """Recommended mitigations, most specific first."""
    out = []
    frozen = [c for c in report.cells if (c.model.transfer or "").lower() in ("frozen", "feature-extractor",
                                                                              "linear", "linear-probe")]
    if frozen and severity_rank(report.severity) >= severity_rank("moderate"):
        out.append("A frozen ImageNet feature extractor keeps the features a natural-image UAP exploits; "
                   "compare full fine-tuning or training from random initialisation with this audit.")
    if severity_rank(report.severity) >= severity_rank("low"):
        out.append("Adversarial training against universal perturbations (or per-sample PGD training), then "
                   "re-run this audit with the same recipe to confirm the effect drops below the control.")
    out += [
        "Treat the model weights as sensitive: the attack needs the deployed model's gradients or a close "
        "surrogate, and a public ImageNet backbone makes good surrogates easy to obtain.",
        "Do not rely on input filtering (blur, JPEG, denoising) alone; adaptive attackers routinely bypass it.",
        "Flag predictions that change under small random input transformations for human review, and keep a "
        "clinician in the loop for decisions this classifier informs.",
        "Gate releases in CI with 'robaudit gate' and a policy that bounds the upper confidence bound of the "
        "natural-source fooling rate.",
    ]
    return out


def _threat(report: Report) -> list[str]:
    uap = [c for c in report.cells if c.attack.kind == "uap"]
    kinds = {source_kind(c) for c in uap if c.attack.threat_model != "zero-knowledge surrogate"}
    out = []
    if "natural" in kinds or not uap:
        out.append("Natural-source UAP (white-box natural): the attacker has ordinary photographs (e.g. ImageNet) "
                   "and the model's gradients, but no medical images. They compute one perturbation offline and add "
                   "it to any patient image.")
    if any(c.attack.threat_model == "zero-knowledge surrogate" for c in uap):
        out.append("Zero-knowledge surrogate UAP: the attacker has nothing but public photographs and the public "
                   "ImageNet model of the same architecture (or another model); the audited model and its images "
                   "are not touched until the perturbation is fixed.")
    if any(c.attack.selection is not None for c in uap):
        out.append("Stance: each perturbation is the strongest an attacker's procedure reached, chosen during the "
                   "build on held-out images (never the reported split) as the auditor set it; the reported numbers "
                   "are on the reported split.")
    if "task" in kinds:
        out.append("Task-image UAP: a stronger attacker who also holds images of the task's training "
                   "distribution.")
    if "other" in kinds:
        out.append("Other sources: see the source column for where each perturbation's inputs came from.")
    if any(c.targeted for c in [c.attack for c in report.cells]):
        out.append("Targeted UAPs push every image towards one chosen class (e.g. a benign diagnosis).")
    if report.per_sample_indices:
        out.append("Per-sample attacks: an attacker who holds each individual image and the gradients, an upper "
                   "bound on harm rather than the headline threat.")
    return out


def _examples(report: Report, cell: Result):
    return image_artifact(find_artifact(report, cell, "examples.png", "examples.png"))


def context(report: Report, with_plots: bool = True) -> dict[str, Any]:
    """The template context shared by the HTML and Markdown reports."""

    cells = report.cells
    models = _unique([(c.model.name + (c.model.sha256 or ""), c.model) for c in cells])
    data = _unique([(f"{c.data.name}/{c.data.split}/{c.data.sha256}", c.data) for c in cells])
    commands = _unique([(c.command, c.command) for c in cells if c.command])
    if isinstance(report.meta.get("command"), str) and report.meta["command"] not in commands:
        commands.insert(0, report.meta["command"])
    envs = _unique([(json.dumps(c.environment, sort_keys=True, default=str), c.environment) for c in cells
                    if c.environment])
    doc_notes = report.meta.get("notes") if isinstance(report.meta.get("notes"), list) else []
    notes = _unique([(str(n), str(n)) for n in doc_notes] + [(n, n) for c in cells for n in c.notes])
    attack_cols, attack_table = attack_rows(report)
    ctx: dict[str, Any] = {
        "r": report, "title": report.title, "severity": report.severity, "verdict": report.verdict,
        "summary": report.summary, "counts": report.counts(), "findings": findings(report),
        "per_sample": per_sample_rows(report), "models": models, "data": data, "commands": commands,
        "environments": envs, "attack_cols": attack_cols, "attack_table": attack_table, "notes": notes,
        "threat": _threat(report), "limitations": limitations(report), "mitigations": mitigations(report),
        "severity_rule": SEVERITY_RULE, "robaudit_version": __version__,
        "versions": sorted({c.robaudit_version for c in cells}),
        "schemas": sorted({c.schema_version for c in cells}),
        "created": sorted({c.created for c in cells}),
        "meta": audit_facts(report.meta), "cell_details": cell_details(report),
        "tables": {str(k): generic_table(v) for k, v in report.tables.items()},
        "n_cells": len(cells), "plots": [], "perturbation": None, "examples": None, "headline_label": None,
    }
    if report.headline is not None:
        h = report.assessments[report.headline]
        ctx.update(headline=h, headline_cell=cells[report.headline], headline_label=cell_label(cells[report.headline]))
    ctx.update(review_context(report))
    if with_plots:

        ctx["plots"] = make_plots(report) + mitigation_plots(report)
        order = ([report.headline] if report.headline is not None else []) + report.uap_indices
        for i in order:
            p, e = perturbation(report, cells[i]), _examples(report, cells[i])
            if p or e:
                ctx.update(perturbation=p, examples=e, artifact_cell=cell_label(cells[i]))
                break
    return ctx


def render_html(report: Report) -> str:
    """The report as one self-contained HTML document."""
    return jinja_env(autoescape=True).get_template("report.html.j2").render(**context(report))
