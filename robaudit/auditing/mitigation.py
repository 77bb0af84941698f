"""After a failed gate: harden a model, re-audit it beside the original, and say what it cost.

The re-audit runs the same UAP cells (natural photos, training images, zero-knowledge surrogate,
targeted) on the original and on the hardened model, on the same test images, each UAP rebuilt from
scratch against the model it is measured on (method ``best``). Its attacker shares nothing with the
hardening attacker: photos and selection images are drawn with the audit seed and were set apart
from hardening (see :mod:`robaudit.training.harden`), and the audit seed must differ from the hardening
seed. Before/after fooling rates are compared with exact McNemar tests on the same images (Holm over
the pairs); fooling is always against each model's own clean prediction, so a model that collapses to
one class is caught by its clean and balanced accuracy change (paired bootstrap intervals), not
rewarded with a low fooling rate. Per-sample PGD runs beside it: UAP robustness is not per-image
robustness.
"""

from __future__ import annotations

import time
from pathlib import Path

from robaudit.attacks.persample import run_attack
from robaudit.auditing.cells import Memo, load_cached, make_cell, run_cell
from robaudit.auditing.mitigation_stats import (
    TABLE,
    THREATS,
    ReauditConfig,
    accuracy_change,
    mitigation_doc,
    mitigation_section,
    pair_rows,
    section_table,
)
from robaudit.auditing.recipes import AuditRecipe, CheckpointModel
from robaudit.auditing.tables import build_audit_doc
from robaudit.core.console import info, progress, warn
from robaudit.core.errors import BadInput, RuntimeFailure
from robaudit.core.files import OutputLock, preflight_dir, write_json
from robaudit.core.specs import UAPSpec
from robaudit.models import load_model_and_task
from robaudit.models.store import is_trained, model_dir, read_card
from robaudit.models.zoo import hardened_name, is_hardened_name, split_replicate
from robaudit.training.harden import HardenConfig, harden_model


def _record(card) -> dict:
    rec = getattr(card, "harden", None) or (card.model_extra or {}).get("harden")
    if not rec:
        raise BadInput(f"model {card.name!r} has no hardening record in its card", "make it with 'robaudit harden'")
    return rec


def reaudit_specs(original: dict, hardened: dict, rec: dict, cfg: ReauditConfig, classes: list[str]) -> list:
    """(threat, spec for the original, spec for the hardened) with everything but the model equal."""
    hc = rec["config"]
    seed = hc["audit_seeds"][0]
    norm, zeta = cfg.norm or hc["norm"], cfg.zeta or hc["zeta"]
    target = cfg.target if cfg.target is not None else str(len(classes) - 1)
    base = dict(split=cfg.split, eval_limit=cfg.eval_limit, norm=norm, zeta=zeta, method=cfg.method, seed=seed,
                budget=cfg.budget, controls=cfg.controls, patience=cfg.patience, max_iter=cfg.max_iter,
                batch_size=cfg.batch_size, select="val", select_limit=hc["select_limit"], device=cfg.device)
    photos = dict(source="imagenet", source_limit=hc["audit_photos"])
    train = dict(source="train", source_limit=cfg.train_source_limit)
    surrogate = photos | {"surrogate": "pretrained"} | ({"weights_file": cfg.weights_file} if cfg.weights_file else {})
    per = {"photos": photos, "train": train, "surrogate": surrogate,
           "targeted": train | {"target": target}}
    out = []
    for threat in cfg.threats:
        kw = base | per[threat]
        out.append((threat, UAPSpec(**original, **kw), UAPSpec(**hardened, **kw)))
    return out


def compare_hardened(original: str | None, out_dir: Path, config: ReauditConfig | None = None, *,
                     checkpoint: str | None = None, arch: str | None = None, hardened: str | None = None,
                     resume: bool = True, quiet: bool = False, model_args: dict | None = None,
                     data: str | None = None) -> dict:
    """Re-audit ``original`` and its hardened twin cell by cell into ``out_dir``; returns (and writes
    ``out_dir/harden.json``) an audit document with a ``mitigation`` section. Finished cells are reused."""
    cfg = config or ReauditConfig()
    model_args = {k: v for k, v in (model_args or {}).items() if v not in (None, {}, False)}
    lm, task = load_model_and_task(original, checkpoint=checkpoint, arch=arch, device="cpu", data=data,
                                   **model_args)
    h_name = hardened or hardened_name(lm.card.name)
    if not is_trained(h_name):
        raise BadInput(f"hardened model {h_name!r} is not in the store", f"run 'robaudit harden {lm.card.name}'")
    h_card = read_card(model_dir(h_name) / "card.json")
    rec = _record(h_card)
    if rec["config"]["seed"] in rec["config"]["audit_seeds"]:  # HardenConfig refuses it; a hand-edited card
        raise BadInput("the hardening seed equals the audit seed; the re-audit would reuse hardening's draws")
    orig = {"model": original} if checkpoint is None else {"checkpoint": str(checkpoint), "arch": arch, "data": data}
    if checkpoint is not None:  # the re-audit reads the checkpoint as hardening did
        orig |= {k: v for k, v in (model_args.pop("overrides", None) or {}).items()} | model_args
    specs = reaudit_specs(orig, {"model": h_name}, rec, cfg, lm.classes)
    out_dir = Path(out_dir)
    preflight_dir(out_dir)
    with OutputLock(out_dir):
        t0 = time.time()
        pairs = []
        cells = []
        memo = Memo()  # the original's and the hardened model's clean and noise rows, shared by their threats
        with progress(disable=quiet) as prog:
            bar = prog.add_task(f"re-audit {lm.card.name}", total=2 * len(specs), status="")
            for threat, so, sh in specs:
                pair = []
                for spec in (so, sh):
                    cell = make_cell(spec, out_dir)
                    if not (resume and load_cached(cell)):
                        prog.update(bar, status=f"{threat} on {spec.model or 'checkpoint'}")
                        run_cell(cell, memo)
                        if cell.error:
                            warn(f"cell {cell.label} failed: {cell.error}")
                    prog.advance(bar)
                    pair.append(cell)
                    cells.append(cell)
                pairs.append((threat, *pair))
        h_lm, _ = load_model_and_task(h_name, device="cpu")
        recipe = _recipe_of(original, checkpoint, arch, h_name, specs, cfg)
        # the document finds the original/hardened pairs among its cells and puts their tests in its one family
        doc = build_audit_doc(recipe, cells, out_dir, seconds=time.time() - t0, reaudit=cfg)
        section = doc.get("mitigation")
        if section is None:
            raise RuntimeFailure(f"no re-audit cell of {lm.card.name} and {h_name} finished",
                                 f"see the cells' error.json under {out_dir / 'cells'}")
        section["hardening"] = {k: rec.get(k) for k in ("method", "from_model", "config", "eps", "photos",
                                                        "n_train", "n_val_monitored", "val_held_for_audit_selection")}
        section["hardening"]["seconds"] = h_card.metrics.get("seconds")
        if cfg.pgd_n:
            section["per_sample"] = per_sample_pgd(lm, h_lm, task, specs[0][1], cfg, quiet)
        doc["tables"][TABLE] = section_table(section)
        write_json(out_dir / "harden.json", doc)
    return doc


def _recipe_of(original, checkpoint, arch, h_name, specs, cfg: ReauditConfig) -> AuditRecipe:
    s = specs[0][1]
    return AuditRecipe(
        name=f"harden-{h_name}", description="re-audit of a model and its hardened twin (robaudit harden)",
        models=([original] if checkpoint is None else []) + [h_name],
        checkpoints=[CheckpointModel(path=str(checkpoint), arch=arch)] if checkpoint is not None else [],
        sources=sorted({sp.source for _, sp, _ in specs}), norms=[s.norm], zetas=[s.zeta], methods=[cfg.method],
        targets=[t.target for _, t, _ in specs if t.target is not None] or "none", controls=cfg.controls,
        split=cfg.split, eval_limit=cfg.eval_limit, seed=s.seed, device=cfg.device, transfer_eval=False,
        budget=cfg.budget, select_limit=s.select_limit, patience=cfg.patience,
        surrogates=["pretrained"] if any(t == "surrogate" for t, _, _ in specs) else [])


def per_sample_pgd(lm, h_lm, task, spec: UAPSpec, cfg: ReauditConfig, quiet: bool) -> list[dict]:
    """Per-sample PGD (torchattacks) at the UAP's eps on the same test images, both models."""
    size = lm.card.input_size
    ref = task.mean_norm(spec.norm, size, split="train", seed=spec.seed)
    eps = spec.zeta * ref
    x, y = task.tensors(spec.split, size=size, limit=cfg.pgd_n, seed=spec.seed)
    rates = []
    for m in (lm, h_lm):
        res = run_attack(m.module, x, y, attack="pgd", eps=[eps], norm=spec.norm, backend="torchattacks",
                         steps=cfg.pgd_steps, class_names=m.classes, seed=spec.seed, quiet=quiet)
        rates.append(res.per_eps[0].robust_accuracy)
    return [{"original": lm.card.name, "hardened": h_lm.card.name, "norm": spec.norm, "eps": eps, "n": len(x),
             "steps": cfg.pgd_steps, "before": rates[0].value, "after": rates[1].value,
             "before_ci": list(rates[0].ci), "after_ci": list(rates[1].ci)}]


# ----------------------------------------------------------------------------------- audit recipes
def harden_recipe_models(recipe: AuditRecipe, train_missing: bool, quiet: bool = False) -> AuditRecipe:
    """``harden = true``: add the hardened twin of every zoo model (hardening the missing ones with
    ``--train-missing``), set apart from this audit's photos, selection images and seeds."""
    if not getattr(recipe, "harden", False):
        return recipe
    names = [n for n in recipe.model_names() if not is_hardened_name(n)]  # every replicate
    seeds = recipe.attack_seed_list()
    cfg = HardenConfig(epochs=recipe.train.epochs, seed=max(seeds) + 1, audit_seeds=seeds,
                       audit_photos=recipe.source_limit, select_limit=recipe.select_limit,
                       source="train", train_limit=recipe.train.train_limit,
                       norm=recipe.norms[0], zeta=recipe.zetas[0])
    twins = []
    for n in names:
        h = hardened_name(n)
        if not is_trained(h):
            if not train_missing:
                raise BadInput(f"recipe {recipe.name!r} (harden = true) needs the hardened model {h!r}",
                               f"add --train-missing, or run 'robaudit harden {n}'")
            if not quiet:
                info(f"hardening {n} for recipe {recipe.name!r}")
            harden_model(n, cfg, device=recipe.device, quiet=quiet)
        twins.append(split_replicate(h)[0] if recipe.replicates > 1 else h)  # `replicates` expands the base
    return recipe.model_copy(update={"models": list(dict.fromkeys(list(recipe.models) + twins))})


__all__ = ["THREATS", "ReauditConfig", "accuracy_change", "compare_hardened", "harden_recipe_models",
           "mitigation_doc", "mitigation_section", "pair_rows", "reaudit_specs"]
