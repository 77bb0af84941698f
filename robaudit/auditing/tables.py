"""An audit document: every finished cell plus derived tables (UAP vs control, sources, initialisations,
transfer matrices), with one Holm family over every test in it (see :mod:`robaudit.grading`)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel

from robaudit import __version__
from robaudit.attacks.lp import project
from robaudit.auditing.cells import Cell
from robaudit.auditing.mitigation_stats import ReauditConfig, apply_family, mitigation_doc, section_pvalues
from robaudit.auditing.pooled import pool_results, pooled_comparisons
from robaudit.auditing.recipes import AuditRecipe
from robaudit.core.provenance import command_line, environment, now_iso
from robaudit.core.stats import REPLICATE_INTERVAL, REPLICATE_TEST, mcnemar_exact
from robaudit.data import load_task
from robaudit.data.images import resize_batch
from robaudit.eval.run import predict_as_measured
from robaudit.grading import (
    FAMILY_NOTE,
    FAMILY_NOTE_REPLICATED,
    PRIMARY,
    PVALUE_CORRECTION,
    REPLICATES,
    adjust_family,
    cell_families,
    cell_pvalues,
    family_sizes,
)
from robaudit.models import load_model
from robaudit.models.fuse import folded
from robaudit.models.zoo import is_hardened_name

AUDIT_KIND = "audit"
CELL_TABLE = "1. UAP vs random control (every cell)"


class CellRow(BaseModel):
    """One row of the cells table, by name. audit.json keeps the table as ``{columns, rows}`` lists
    (the format readers already have); writer and readers both go through this model, so nobody looks a
    column up by its title."""

    model: str
    init: str | None
    transfer: str | None
    threat_model: str
    source: str | None
    norm: str | None
    zeta: float | None
    method: str | None
    target: str
    rate: float | None
    ci: str
    control: float | None
    control_ci: str
    p: float | None
    p_adjusted: float | None = None

    @staticmethod
    def columns() -> list[str]:
        """The human titles written as the table's ``columns``, in field order."""
        return ["model", "init", "transfer", "threat model", "source", "norm", "zeta", "method", "target", "rate",
                "95% CI", "control", "control CI", "p (McNemar exact)", f"p ({PVALUE_CORRECTION})"]

    def as_list(self) -> list:
        return [getattr(self, f) for f in type(self).model_fields]

    @classmethod
    def from_list(cls, row: list) -> CellRow:
        return cls(**dict(zip(cls.model_fields, row, strict=True)))


def cell_rows(doc: dict) -> list[CellRow]:
    """The cells table of an audit document, as named rows."""
    return [CellRow.from_list(r) for r in doc["tables"][CELL_TABLE]["rows"]]


def build_audit_doc(recipe: AuditRecipe, cells: list[Cell], out_dir: Path, seconds: float,
                    reaudit: ReauditConfig | None = None) -> dict:
    """The audit document of ``cells``; ``reaudit`` sets the mitigation section's tolerance (robaudit harden)."""
    done = [c for c in cells if c.result is not None]
    rows = []
    for c in done:
        r, a = c.result, c.result.attack
        rate, crate = c.rate, c.result.control_rate()
        rows.append(CellRow(
            model=r.model.name, init=r.model.init, transfer=r.model.transfer, threat_model=a.threat_model or "-",
            source=a.source, norm=a.norm, zeta=a.zeta, method=a.method, target=a.target_name or "-",
            rate=rate.value, ci=f"[{rate.ci[0]:.3f}, {rate.ci[1]:.3f}]", control=crate.value if crate else None,
            control_ci=f"[{crate.ci[0]:.3f}, {crate.ci[1]:.3f}]" if crate else "",
            p=c.result.comparison.p_value if c.result.comparison else None))
    pooled = pool_results([c.result for c in done])
    pvals = cell_pvalues([c.result for c in done] + pooled)

    # ImageNet init vs random init / linear / top-k on the same images: exact paired test
    init_rows, init_p, init_replicate = [], [], []
    by_setting = defaultdict(list)
    for c in done:
        if is_hardened_name(c.result.model.name):  # compared with its original in the mitigation section
            continue
        a = c.result.attack
        recipe_key = (c.result.model.task, c.result.model.arch, a.source, a.norm, round(a.zeta, 6), a.method,
                      a.target, a.seed, a.surrogate, c.result.model.replicate)  # replicate R against replicate R
        by_setting[recipe_key].append(c)
    for key, group in by_setting.items():
        base = [c for c in group if c.result.model.init == "imagenet" and c.result.model.transfer == "full"]
        for b in base:
            for o in group:
                if o is b:
                    continue
                sb, so = b.success(), o.success()
                if sb is None or so is None or sb.shape != so.shape:
                    continue
                stat, p, detail = mcnemar_exact(sb, so)
                init_rows.append([key[1], key[2], key[3], key[4], key[5], b.result.attack.target_name or "-",
                                  f"{b.result.model.name}", b.rate.value,
                                  f"{o.result.model.name} ({o.result.model.init}/{o.result.model.transfer})",
                                  o.rate.value, p])
                init_p.append(p)
                init_replicate.append(b.result.model.replicate is not None)
    comparisons = pooled_comparisons(pooled)
    mitigation = mitigation_doc(recipe, done, reaudit)  # original vs hardened twins, when the cells hold them
    mitigation_p = section_pvalues(mitigation) if mitigation else []
    other_p = init_p + [c["p_value"] for c in comparisons] + mitigation_p

    cell_fams = cell_families([c.result for c in done] + pooled)
    replicated = bool(pooled)
    other_fams = [REPLICATES if replicated and fam_of_init else PRIMARY for fam_of_init in init_replicate] + \
        [PRIMARY] * (len(comparisons) + len(mitigation_p))
    cell_adj, other_adj = adjust_family(pvals, other_p, cell_fams, other_fams)
    for row, p, adj in zip(rows, pvals, cell_adj, strict=False):  # pvals: the cells, then the pooled rows
        row.p_adjusted = adj if adj is not None else p  # a family of one test: its own p
    for row, adj in zip(init_rows, other_adj, strict=False):
        row.append(adj)
    pooled_rows = [_pooled_row(r, p, adj) for r, p, adj in zip(pooled, pvals[len(done):], cell_adj[len(done):],
                                                                 strict=True)]
    n_init = len(init_p)
    comparison_rows = [_comparison_row(c, adj) for c, adj in
                       zip(comparisons, other_adj[n_init:n_init + len(comparisons)], strict=True)]
    sizes = family_sizes(pvals, cell_fams, other_fams)

    sources_rows = []
    by_model_setting = defaultdict(dict)
    for c in done:
        a = c.result.attack
        if a.targeted:
            continue
        k = (c.result.model.name, a.norm, round(a.zeta, 6), a.method)
        by_model_setting[k][a.source + (" (zero-knowledge)" if a.surrogate else "")] = c.rate.value
        if c.result.control:
            by_model_setting[k]["random control"] = c.result.control.fooling_rate.value
    source_cols = sorted({s for d in by_model_setting.values() for s in d if s != "random control"})
    for (model, norm, zeta, method), d in sorted(by_model_setting.items()):
        sources_rows.append([model, norm, zeta, method] + [d.get(s) for s in source_cols] + [d.get("random control")])

    matrices = transfer_matrices(done, recipe) if recipe.transfer_eval else []
    failed = [{"key": c.key, "cell": c.label, "error": c.error} for c in cells if c.error]
    tables = {
        CELL_TABLE: {"columns": CellRow.columns(), "rows": [r.as_list() for r in rows]},
        "2. Natural vs training vs random source (non-targeted fooling rate)": {
            "columns": ["model", "norm", "zeta", "method"] + source_cols + ["random control"],
            "rows": sources_rows},
        "3. ImageNet init vs other initialisations / transfer configurations (same images)": {
            "columns": ["arch", "source", "norm", "zeta", "method", "target", "ImageNet full", "rate", "other",
                        "rate", "p (McNemar exact)", f"p ({PVALUE_CORRECTION})"],
            "rows": init_rows},
    }
    for i, m in enumerate(matrices):
        tables[f"4.{i + 1} Transfer: {m['title']}"] = {
            "columns": ["UAP built on \\ evaluated on"] + m["cols"],
            "rows": [[r] + vals for r, vals in zip(m["rows"], m["values"], strict=True)]}
    if pooled_rows:
        tables["6. Pooled over training replicates (replicate = unit; t-interval over replicates)"] = {
            "columns": ["model", "threat model", "source", "norm", "zeta", "method", "target", "replicates",
                        "per-replicate rates", "pooled rate", "95% CI (t)", "control", "control CI",
                        "between-replicate SD", "within (attack seeds) SD", "p (paired t vs control)",
                        f"p ({PVALUE_CORRECTION})"],
            "rows": pooled_rows}
    if comparison_rows:
        tables["7. ImageNet full vs other configurations, pooled (paired t-test by replicate)"] = {
            "columns": ["arch", "source", "norm", "zeta", "method", "target", "ImageNet full", "mean rate", "other",
                        "mean rate", "mean difference", "95% CI (t)", "t", "df", "p (paired t)",
                        f"p ({PVALUE_CORRECTION})"],
            "rows": comparison_rows}
    if mitigation:
        apply_family(mitigation, other_adj[n_init + len(comparisons):], tables)
    if failed:
        tables["5. Failed cells"] = {"columns": ["cell", "error"], "rows": [[f["cell"], f["error"]] for f in failed]}
    return {
        "kind": AUDIT_KIND, "schema_version": "1.0", "robaudit_version": __version__,
        "created": now_iso(), "command": command_line() or None,
        "recipe": recipe.model_dump(), "environment": done[0].result.environment if done else environment("cpu"),
        "seconds": seconds,
        "counts": {"cells": len(cells), "done": len(done), "failed": len(failed),
                   "cached": sum(c.cached for c in cells)},
        "multiple_comparison": {"method": PVALUE_CORRECTION, "family_size": sizes.get(PRIMARY, 0),
                                "families": sizes, "note": FAMILY_NOTE_REPLICATED if replicated else FAMILY_NOTE,
                                "comparison_p_values": other_p, "comparison_families": other_fams},
        "cells": [_cell_json(c) for c in done] + [json.loads(r.model_dump_json()) for r in pooled],
        "replicates": {"per_configuration": recipe.replicates, "attack_seeds": len(recipe.attack_seed_list()),
                       "pooled_rows": len(pooled), "interval": REPLICATE_INTERVAL, "test": REPLICATE_TEST,
                       "comparisons": [_comparison_json(c) for c in comparisons]},
        "failed": failed, "tables": tables,
        "transfer": matrices[0] if matrices else None, "transfer_matrices": matrices,
        **({"mitigation": mitigation} if mitigation else {}),
    }


def _rates(values) -> str:
    return ", ".join(f"{v:.3f}" for v in values)


def _pooled_row(r, p, adj) -> list:
    a, info, rate, ctrl = r.attack, r.pooled, r.primary_rate(), r.control_rate()
    return [r.model.name, a.threat_model or "-", a.source, a.norm, a.zeta, a.method, a.target_name or "-",
            len(info.replicates), _rates(info.rates), rate.value, f"[{rate.ci[0]:.3f}, {rate.ci[1]:.3f}]",
            ctrl.value if ctrl else None, f"[{ctrl.ci[0]:.3f}, {ctrl.ci[1]:.3f}]" if ctrl else "",
            info.between_replicate_sd, info.within_replicate_sd, p, adj if adj is not None else p]


def _comparison_row(c: dict, adj: float) -> list:
    b, o = c["base"], c["other"]
    a = b.attack
    return [b.model.arch, a.source, a.norm, a.zeta, a.method, a.target_name or "-", b.model.name,
            float(np.mean(c["base_rates"])), f"{o.model.name} ({o.model.init}/{o.model.transfer})",
            float(np.mean(c["other_rates"])), c["mean_difference"], f"[{c['ci'][0]:.3f}, {c['ci'][1]:.3f}]",
            c["t"], c["df"], c["p_value"], adj]


def _comparison_json(c: dict) -> dict:
    return {"base": c["base"].model.name, "other": c["other"].model.name, "source": c["base"].attack.source,
            "norm": c["base"].attack.norm, "zeta": c["base"].attack.zeta, "method": c["base"].attack.method,
            "target": c["base"].attack.target, "surrogate": c["base"].attack.surrogate,
            **{k: c[k] for k in ("replicates", "base_rates", "other_rates", "mean_difference", "ci", "t", "df",
                                 "p_value", "degenerate")}}


def _cell_json(cell: Cell) -> dict:
    """A cell's result with its artifacts made relative to the audit folder (``cells/<hash>/...``)."""
    doc = json.loads(cell.result.model_dump_json())
    doc["artifacts"] = {k: f"cells/{cell.key}/{v}" for k, v in doc["artifacts"].items()} | {
        "cell_dir": f"cells/{cell.key}"}
    return doc


def transfer_matrices(done: list[Cell], recipe: AuditRecipe) -> list[dict]:
    """UAP from model A evaluated on model B (same task, source, norm, zeta, method; non-targeted)."""
    groups = defaultdict(list)
    for c in done:
        a = c.result.attack
        if not a.targeted and not a.surrogate:  # a surrogate's v does not depend on the audited model
            groups[(c.result.data.name, a.source, a.norm, round(a.zeta, 6), a.method, a.seed)].append(c)
    out = []
    models_cache: dict = {}
    for (data_name, source, norm, zeta, method, _seed), group in sorted(groups.items(), key=lambda kv: str(kv[0])):
        if len(group) < 2:
            continue
        names = [c.result.model.name for c in group]
        values = []
        for a_cell in group:
            v = torch.from_numpy(np.load(a_cell.dir / "uap.npy"))
            row = []
            for b_cell in group:  # the diagonal goes through the same path: it must equal the cell's own rate
                spec = b_cell.spec
                key = spec.model or spec.checkpoint  # checkpoints have no zoo name: one cache entry per file
                if key not in models_cache:
                    kw = spec.ref().load_kwargs()
                    m = load_model(kw.pop("model"), device=spec.device, task=spec.data, **kw)
                    models_cache[key] = m, folded(m.module, m.channels, m.card.input_size, m.device)
                lm, fast = models_cache[key]
                size = lm.card.input_size
                task = load_task(spec.data or lm.card.task, size=size)
                x, _ = task.tensors(spec.split, size=size, limit=spec.eval_limit, seed=spec.seed)
                vb = v if v.shape[-1] == size else project(resize_batch(v, size), norm, b_cell.result.attack.eps)
                with np.load(b_cell.dir / "predictions.npz") as z:
                    clean = torch.from_numpy(z["clean"])
                adv = predict_as_measured(lm, x, vb, spec.clip, fast)
                row.append(float((adv != clean).float().mean()))
            values.append(row)
        out.append({"title": f"{data_name} | source {source} | {norm} zeta={zeta:g} | {method}",
                    "rows": names, "cols": names, "values": values, "metric": "fooling rate"})
    return out
