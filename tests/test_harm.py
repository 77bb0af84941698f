"""Harm by diagnosis on the embedded chest X-rays (critical class pneumonia, from the shipped dataset card): a
UAP targeted to *normal* built against a small real CNN, its missed-disease rate recomputed by hand from the
run's predictions.csv, the transition matrix against the test count, sensitivity before against an independent
forward pass, and the gate rules that read these fields."""

from __future__ import annotations

import csv
import functools

import numpy as np
import pytest
import torch
from greynet import xray_cnn

import robaudit as ra
from robaudit.core.errors import BadInput
from robaudit.data.cards import DatasetCard
from robaudit.eval.metrics import critical_of, harm_metrics

SIZE = 32


@functools.lru_cache(maxsize=1)
def _model() -> ra.Model:
    """The README's small CNN, three epochs on the 800 embedded training X-rays at 32 px (a few seconds)."""
    net, classes = xray_cnn(SIZE)
    return ra.Model(net, classes=classes, mean=(0.5,) * 3, std=(0.25,) * 3, input_size=SIZE, name="xray-cnn")


@pytest.fixture(scope="module")
def run(tmp_path_factory, one_thread):
    """A targeted -> normal photo UAP on the embedded task (its card declares critical_class pneumonia)."""
    out = tmp_path_factory.mktemp("harm") / "run"
    r = ra.uap(_model(), "pneumonia-mini", source="natural", norm="linf", zeta=0.04, seed=0, budget=600,
               target="normal", controls=5, out=out)
    return r, out


def _csv(out) -> list[dict]:
    with open(out / "predictions.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_missed_disease_rate_is_recomputed_by_hand_from_predictions_csv(run):
    r, out = run
    crit = r.result.harm.critical
    assert (crit.name, crit.index, crit.source, crit.direction) == ("pneumonia", 1, "card", "hides disease")
    rows = _csv(out)
    assert len(rows) == r.result.data.n == 300
    assert list(rows[0]) == ["index", "label", "clean", "adv", "clean_score", "adv_score", "control_adv"]
    detected = [w for w in rows if w["label"] == "pneumonia" and w["clean"] == "pneumonia"]
    missed = [w for w in detected if w["adv"] != "pneumonia"]
    assert crit.missed_disease.n == len(detected) > 50
    assert crit.missed_disease.k == len(missed)
    assert crit.missed_disease.value == pytest.approx(len(missed) / len(detected))
    lo, hi = crit.missed_disease.ci
    assert lo < crit.missed_disease.value < hi                         # a Wilson interval, not a point
    cleared = [w for w in rows if w["label"] == "normal" and w["clean"] == "normal"]
    alarms = [w for w in cleared if w["adv"] == "pneumonia"]
    assert (crit.false_alarm.k, crit.false_alarm.n) == (len(alarms), len(cleared))
    ctrl_missed = [w for w in detected if w["control_adv"] != "pneumonia"]
    assert crit.control_missed_disease == pytest.approx(len(ctrl_missed) / len(detected))
    # the attack toward normal hides disease far beyond the same-norm noise
    assert crit.missed_disease.value > crit.control_missed_disease + 0.2 and crit.missed_disease_p < 1e-6


def test_transition_matrix_sums_to_the_test_count_and_matches_the_records(run):
    r, out = run
    conf = np.array(r.result.metrics.confusion)
    assert conf.sum() == 300 and conf.shape == (2, 2)
    rows = _csv(out)
    names = r.result.model.classes
    by_hand = np.zeros((2, 2), int)
    for w in rows:
        by_hand[names.index(w["clean"]), names.index(w["adv"])] += 1
    assert (by_hand == conf).all()
    # the index column is each image's position in the test split; labels agree with the split's
    _, y = ra.load_data("pneumonia-mini").tensors("test")
    assert [int(w["index"]) for w in rows] == list(range(300))
    assert [names.index(w["label"]) for w in rows] == y.tolist()


def test_sensitivity_before_equals_an_independent_forward_pass(run):
    from sklearn.metrics import recall_score

    r, out = run
    model = _model()
    x, y = ra.load_data("pneumonia-mini").tensors("test", size=SIZE)
    with torch.inference_mode():
        prob = model.module(x).softmax(1)
    pred = prob.argmax(1).numpy()
    pneu = next(k for k in r.result.harm.classes if k.name == "pneumonia")
    assert pneu.sensitivity_clean.value == pytest.approx(recall_score(y.numpy(), pred, pos_label=1))
    assert pneu.specificity_clean.value == pytest.approx(recall_score(y.numpy(), pred, pos_label=0))
    assert pneu.sensitivity_adv.value < pneu.sensitivity_clean.value - 0.2 and pneu.sensitivity_p < 1e-6
    # the `robaudit models check` figure: its confusion matrix (rows: label) gives the same recall
    chk = ra.check(model, "pneumonia-mini")
    row = chk.confusion[chk.classes.index("pneumonia")]
    assert pneu.sensitivity_clean.value == pytest.approx(row[chk.classes.index("pneumonia")] / sum(row))
    scores = np.array([float(w["clean_score"]) for w in _csv(out)])
    assert scores == pytest.approx(prob.max(1).values.numpy(), abs=1e-5)


def test_reports_lead_with_the_harm_and_the_gate_reads_it(run, tmp_path):
    from robaudit.gating import evaluate, parse_policy
    from robaudit.grading import load_input
    from robaudit.reporting import build_report, render

    r, out = run
    ai = load_input(out / "result.json")                                # read back through the schema
    crit = ai.cells[0].harm.critical
    rep = build_report(ai)
    assert rep.summary.split(": ", 1)[1].startswith(f"missed pneumonia: {crit.missed_disease.value:.1%}")
    html, md = render(rep, "html"), render(rep, "md")
    assert html.index('id="harm"') < html.index('id="findings"') and "clinically worst direction" in html
    assert f"({crit.missed_disease.k}/{crit.missed_disease.n})" in md
    pol = parse_policy({"rule": [
        {"id": "missed", "kind": "max_missed_disease_rate", "max": 0.2},
        {"id": "missed-value", "kind": "max_missed_disease_rate", "max": 0.99, "bound": "value"},
        {"id": "sens", "kind": "max_sensitivity_drop", "max": 0.1},
        {"id": "sens-normal", "kind": "max_sensitivity_drop", "class": "normal", "max": 0.1}]})
    by = {c.rule: c for c in evaluate(pol, ai).checks}
    assert by["missed"].status == "fail" and by["missed"].measured == pytest.approx(crit.missed_disease.ci[1])
    assert by["missed-value"].status == "pass"
    assert by["missed-value"].measured == pytest.approx(crit.missed_disease.value)
    pneu = next(k for k in ai.cells[0].harm.classes if k.name == "pneumonia")
    drop = pneu.sensitivity_clean.value - pneu.sensitivity_adv.value
    assert by["sens"].status == "fail" and by["sens"].measured == pytest.approx(drop)
    assert by["sens-normal"].status == "pass" and by["sens-normal"].measured < 0   # normal's recall rises


def test_harm_metrics_by_hand():
    """Ten images, three classes, critical class 2: every rate is a count a reader can check."""
    y = np.array([2, 2, 2, 2, 0, 0, 1, 1, 1, 2])
    clean = np.array([2, 2, 2, 0, 0, 0, 1, 1, 2, 2])
    adv = np.array([0, 1, 2, 0, 2, 0, 1, 0, 2, 2])
    ctrl = np.array([2, 2, 2, 0, 0, 0, 1, 1, 2, 1])
    h = harm_metrics(clean, adv, y, ["a", "b", "c"], critical=2, critical_source="flag", target=0, control_adv=ctrl)
    c = h.critical
    # detected critical: images 0, 1, 2, 9 (label 2, clean 2); the UAP moves 0 and 1 away
    assert (c.missed_disease.k, c.missed_disease.n) == (2, 4) and c.control_missed_disease == pytest.approx(0.25)
    # cleared: label != 2 and clean != 2: images 4, 5, 6, 7 (image 8 was a clean false alarm); 4 turned critical
    assert (c.false_alarm.k, c.false_alarm.n) == (1, 4) and c.direction == "hides disease"
    sens = {k.name: (k.sensitivity_clean.k, k.sensitivity_adv.k, k.sensitivity_clean.n) for k in h.classes}
    assert sens == {"a": (2, 1, 2), "b": (2, 1, 3), "c": (4, 2, 5)}
    spec_c = next(k for k in h.classes if k.name == "c")
    assert (spec_c.specificity_clean.k, spec_c.specificity_adv.k, spec_c.specificity_clean.n) == (4, 3, 5)
    assert harm_metrics(clean, adv, y, ["a", "b", "c"], critical=2, target=2).critical.direction == \
        "raises false alarms"


def test_critical_class_from_flag_card_or_table_and_bad_names():
    xray = ra.load_data("pneumonia-mini")
    task = xray.task
    assert critical_of(None, task, xray.classes) == (1, "card")
    assert critical_of("normal", task, xray.classes) == (0, "flag") and critical_of("0", task, xray.classes)[0] == 0
    with pytest.raises(BadInput, match="--critical-class 'tumour'"):
        critical_of("tumour", task, xray.classes)
    bare = DatasetCard(label_names=["nevus", "melanoma"])
    from robaudit.data.cards import critical_class

    assert critical_class(bare, None, bare.label_names) == ("melanoma", "built-in")
    assert critical_class(DatasetCard(label_names=["a", "b"]), None, ["a", "b"]) == (None, None)
    with pytest.raises(ValueError, match="critical_class"):
        DatasetCard(label_names=["a", "b"], critical_class="c")


def test_report_per_image_bundles_the_records(run, tmp_path):
    from test_report import run_cli

    r, out = run
    assert run_cli(["report", out / "result.json", "--per-image", "--out", tmp_path / "rep"]) == 0
    with open(tmp_path / "rep" / "per-image.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 300 and {w["cell"] for w in rows} == {ra.grading.cell_label(r.result)}
    assert [w["adv"] for w in rows] == [w["adv"] for w in _csv(out)] and (tmp_path / "rep" / "report.html").is_file()
    ra.report(r.result, tmp_path / "lib" / "report.md")                # no run folder: no bundle asked, none written
    assert not (tmp_path / "lib" / "per-image.csv").exists()
    ra.report(out / "result.json", tmp_path / "lib" / "report.md", per_image=True)
    assert (tmp_path / "lib" / "per-image.csv").read_text().count("\n") == 301
