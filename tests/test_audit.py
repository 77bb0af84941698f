"""``robaudit audit`` on real data: a test-sized recipe end to end, kill + resume, statistics, transfer."""

from __future__ import annotations

import json

import numpy as np
import pytest

from robaudit.auditing.recipes import AuditRecipe, load_recipe
from robaudit.cli import main
from robaudit.core.errors import BadInput

TINY = """
name = "tiny"
tasks = ["pneumonia"]
archs = ["tf_efficientnet_lite0"]
transfers = ["full", "scratch"]
sources = ["imagenet", "train", "random"]
norms = ["l2"]
zetas = [0.04]
targets = "none"
controls = 3
eval_limit = 64
source_limit = 64
max_iter = 3                # three passes: with one, every cell of this box's training draw had Holm p = 1 (with
                            # three its fine-tune's training-image cell has p = 5e-4), and the family test says nothing
device = "cpu"
augment = false
select = "none"
methods = ["fgsm"]
"""


@pytest.fixture(scope="module")
def twins(trained):
    return trained("pneumonia_tf_efficientnet_lite0"), trained("pneumonia_tf_efficientnet_lite0_random")


@pytest.fixture(scope="module")
def recipe_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("recipe") / "tiny.toml"
    p.write_text(TINY)
    return p


@pytest.fixture(scope="module")
def full_run(twins, recipe_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("audit-full")
    assert main(["audit", "--recipe", str(recipe_file), "--out", str(out)]) == 0
    return json.loads((out / "audit.json").read_text()), out


def test_packaged_recipes_validate():
    quick, _ = load_recipe("quick")
    assert quick.base_names() == ["pneumonia_tf_efficientnet_lite0", "pneumonia_tf_efficientnet_lite0_random",
                                  "pneumonia_tf_efficientnet_lite0_linear"]
    assert quick.replicates == 3 and quick.model_names()[:3] == ["pneumonia_tf_efficientnet_lite0",
                                                                  "pneumonia_tf_efficientnet_lite0@1",
                                                                  "pneumonia_tf_efficientnet_lite0@2"]
    assert len(quick.cells(lambda m: [0, 1])) == 9 * 6  # 9 models x (photos, train, zero-knowledge) x 2 norms
    paper, _ = load_recipe("paper")
    assert paper.replicates == 10 and len(paper.base_names()) == 18
    assert len(paper.model_names()) == 180 and paper.zetas == [0.02, 0.04, 0.06] and paper.clip is False
    assert "random" not in paper.sources  # the random control is part of every cell
    classes = {"skin": 7, "retina-referable": 2, "pneumonia": 2}
    cells = paper.cells(lambda m: [0] * classes[m.split("_")[0]])
    # per model: 2 sources x 2 norms x 3 zetas x (1 non-targeted + n_classes targeted), plus the zero-knowledge
    # cells: the photo source x 2 norms x 3 zetas on the public ImageNet model
    assert len(cells) == sum(2 * 2 * 3 * (1 + classes[m.split("_")[0]]) + 2 * 3 for m in paper.model_names())
    assert sum(c.surrogate == "pretrained" for c in cells) == 180 * 6 and paper.budget == 100000


def test_recipe_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nzetas = [4]\n')
    with pytest.raises(BadInput, match="zetas must be in"):
        load_recipe(bad)
    bad.write_text('name = "x"\nnorms = ["l3"]\n')
    with pytest.raises(BadInput, match="norms"):
        load_recipe(bad)
    bad.write_text("name = \n")
    with pytest.raises(BadInput, match="not valid TOML"):
        load_recipe(bad)
    with pytest.raises(BadInput, match="did you mean 'quick'"):
        load_recipe("quik")


def test_audit_end_to_end(full_run):
    doc, out = full_run
    assert doc["kind"] == "audit" and doc["counts"] == {"cells": 4, "done": 4, "failed": 0, "cached": 0}
    inits = {(c["model"]["init"], c["attack"]["source"]) for c in doc["cells"]}
    assert inits == {("imagenet", "imagenet"), ("imagenet", "train"), ("random", "imagenet"), ("random", "train")}
    t1 = doc["tables"]["1. UAP vs random control (every cell)"]
    assert len(t1["rows"]) == 4 and t1["columns"][-1] == "p (holm)"
    raw = [r[-2] for r in t1["rows"]]
    init_rows = doc["tables"]["3. ImageNet init vs other initialisations / transfer configurations (same images)"]
    assert len(init_rows["rows"]) == 2  # imagenet vs random, for each source
    family = raw + [r[-2] for r in init_rows["rows"]]
    from statsmodels.stats.multitest import multipletests

    expected = multipletests(family, method="holm")[1]
    got = [r[-1] for r in t1["rows"]] + [r[-1] for r in init_rows["rows"]]
    assert np.allclose(got, expected)
    assert doc["multiple_comparison"]["method"] == "holm" and doc["multiple_comparison"]["family_size"] == 6
    assert (out / "report.html").is_file() and (out / "report.md").is_file()


def test_report_and_gate_read_the_audits_own_holm_family(full_run):
    """One family per document: the report and the gate of an audit show the audit's adjusted p-values
    (every cell test and every init comparison), not a family of the cells alone."""
    from robaudit.gating import evaluate, parse_policy
    from robaudit.grading import load_input
    from robaudit.reporting import build_report

    doc, out = full_run
    table = doc["tables"]["1. UAP vs random control (every cell)"]["rows"]
    ai = load_input(out / "audit.json")
    report = build_report(ai)
    shown = [a.p_adjusted for a in report.assessments]
    assert shown == pytest.approx([r[-1] for r in table], rel=1e-12)
    cells_only = build_report(ai.cells)  # the same cells as a plain list: their own, smaller family
    assert [a.p_adjusted for a in cells_only.assessments] != pytest.approx(shown, rel=1e-12)
    gate = evaluate(parse_policy({"rule": [{"kind": "max_severity", "max": "critical"}]}), ai)
    assert [c.status for c in gate.checks] == ["pass"] * 4
    assert report.severity in {a.severity for a in report.assessments}


def test_transfer_diagonal_equals_per_model_uap(full_run):
    from robaudit.core.specs import UAPSpec
    from robaudit.eval.run import run_uap

    doc, out = full_run
    m = doc["transfer"]
    assert m["rows"] == m["cols"] and len(m["rows"]) == 2
    for i, name in enumerate(m["rows"]):
        cell = next(c for c in doc["cells"] if c["model"]["name"] == name and c["attack"]["source"] ==
                    m["title"].split("source ")[1].split(" ")[0])
        assert m["values"][i][i] == pytest.approx(cell["metrics"]["fooling_rate"]["value"], abs=1e-12)
        spec = UAPSpec.model_validate_json((out / cell["artifacts"]["cell_dir"] / "spec.json").read_text())
        solo = run_uap(spec, out_dir=None, quiet=True).result
        assert solo.metrics.fooling_rate.value == pytest.approx(m["values"][i][i], abs=1e-12)


def test_kill_and_resume_matches_uninterrupted(twins, recipe_file, full_run, tmp_path, monkeypatch, capsys):
    import robaudit.auditing.cells as runner  # where the audit calls run_uap

    real, calls = runner.run_uap, {"n": 0}

    def crashing(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(runner, "run_uap", crashing)
    assert main(["audit", "--recipe", str(recipe_file), "--out", str(tmp_path)]) == 130
    assert "--resume" in capsys.readouterr().err
    assert len(list(tmp_path.glob("cells/*/result.json"))) == 2
    monkeypatch.setattr(runner, "run_uap", real)
    assert main(["audit", "--recipe", str(recipe_file), "--out", str(tmp_path)]) == 2  # refuses to overwrite
    assert main(["audit", "--recipe", str(recipe_file), "--out", str(tmp_path), "--resume"]) == 0
    resumed = json.loads((tmp_path / "audit.json").read_text())
    full, _ = full_run
    assert resumed["counts"]["cached"] == 2 and resumed["counts"]["done"] == 4

    def strip(d):
        return [{k: v for k, v in c.items() if k not in ("created", "command", "artifacts")} | {
            "attack": {k: v for k, v in c["attack"].items() if k != "seconds"}} for c in d["cells"]]

    assert strip(resumed) == strip(full)
    assert resumed["tables"] == full["tables"] and resumed["transfer"] == full["transfer"]


def test_failing_cell_is_recorded_and_audit_carries_on(twins, tmp_path):
    from robaudit.auditing import run_audit

    recipe = AuditRecipe(name="failing", models=["pneumonia_tf_efficientnet_lite0"],
                         sources=["natural", str(tmp_path / "no-such-folder")], eval_limit=32, source_limit=32,
                         max_iter=1, controls=1, device="cpu", transfer_eval=False, methods=["fgsm"], budget=64,
                         select="none")
    doc = run_audit(recipe, tmp_path / "out", quiet=True)
    assert doc["counts"]["done"] == 1 and doc["counts"]["failed"] == 1
    assert "unknown source" in doc["failed"][0]["error"]
    assert list((tmp_path / "out" / "cells").glob("*/error.json"))


def test_statistics_agree_with_scipy_on_known_cases():
    from scipy.stats import binomtest

    from robaudit.core.stats import adjust_pvalues, mcnemar_exact, proportion_ci

    a = np.array([1] * 10 + [0] * 2 + [1] * 5 + [0] * 3, bool)
    b = np.array([0] * 10 + [1] * 2 + [1] * 5 + [0] * 3, bool)
    _, p, detail = mcnemar_exact(a, b)
    assert detail["a_only"] == 10 and detail["b_only"] == 2
    assert p == pytest.approx(binomtest(2, 12, 0.5).pvalue)  # = 0.0386
    assert adjust_pvalues([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    lo, hi = proportion_ci(83, 100)
    assert (lo, hi) == pytest.approx((0.7445, 0.8911), abs=1e-4)  # Wilson 95%, by hand: 0.8178 -+ 0.0733


def test_missing_models_need_train_missing(tmp_path, capsys):
    p = tmp_path / "r.toml"
    p.write_text('name = "r"\nmodels = ["retina-referable_resnet10t"]\ntransfers = []\n')
    assert main(["audit", "--recipe", str(p), "--out", str(tmp_path / "o")]) == 2
    assert "--train-missing" in capsys.readouterr().err


def test_train_missing_gives_scratch_models_their_own_epochs(tmp_path, monkeypatch):
    """[train] scratch_epochs applies to random-init twins only; other models get epochs."""
    import robaudit.auditing as audit
    from robaudit.auditing import ensure_models

    seen = {}
    monkeypatch.setenv("ROBAUDIT_HOME", str(tmp_path))
    monkeypatch.setattr(audit, "is_trained", lambda name: False)
    monkeypatch.setattr(audit, "train_model", lambda name, cfg, **kw: seen.__setitem__(name, cfg.epochs))
    recipe = AuditRecipe(name="r", tasks=["pneumonia"], archs=["resnet10t"], transfers=["full", "scratch", "linear"],
                         train={"epochs": 2, "scratch_epochs": 5})
    ensure_models(recipe, train_missing=True, quiet=True)
    assert seen == {"pneumonia_resnet10t": 2, "pneumonia_resnet10t_random": 5, "pneumonia_resnet10t_linear": 2}
    seen.clear()
    ensure_models(recipe.model_copy(update={"train": recipe.train.model_copy(update={"scratch_epochs": None})}),
                  train_missing=True, quiet=True)
    assert seen["pneumonia_resnet10t_random"] == 2
