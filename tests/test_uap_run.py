"""``robaudit uap`` end to end on real data and a fine-tuned model: the published effect, controls,
determinism, schema, interruption and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from robaudit.cli import main
from robaudit.core.specs import make_spec
from robaudit.eval.run import run_uap

MODEL = "pneumonia_tf_efficientnet_lite0"
#: CPU-sized published setting: zeta 4%, 300 ImageNet photos, 300 test images, 10 control draws; plain passes
#: over the photos and the last v (release 0.2's attacker: these figures were measured with it)
COMMON = dict(source="imagenet", zeta=0.04, source_limit=300, eval_limit=300, max_iter=3, controls=10,
              device="cpu", seed=0, augment=False, select="none", method="fgsm")
PLAIN = ["--no-augment", "--select", "none", "--method", "fgsm"]
#: the published effect, measured with the current attacker (augmented photo stream, v chosen on 128 val X-rays):
#: the plain 3-pass attacker's margins hinged on the training draw (another CPU trains other weights from the
#: same seed: on one, natural p = 3e-3; on an AMD EPYC, p = 0.015), this one's do not
EFFECT = dict(source="imagenet", zeta=0.04, source_limit=300, eval_limit=300, controls=10, device="cpu", seed=0,
              method="fgsm", budget=2000, select_limit=128)


@pytest.fixture(scope="module")
def finetuned(trained):
    """The fine-tuned pneumonia model of the trainer acceptance test (ImageNet init, 64 px)."""
    return trained(MODEL)


@pytest.fixture(scope="module")
def nontargeted(finetuned, tmp_path_factory):
    out = tmp_path_factory.mktemp("uap-nt")
    return run_uap(make_spec(model=MODEL, norm="linf", **EFFECT), out_dir=out, quiet=True), out


def test_natural_image_uap_beats_random_control(nontargeted):
    """The published finding on a model fine-tuned from ImageNet weights, with an ImageNet-photo UAP.

    Measured (L-inf, zeta 4%, 2,000 augmented views of 300 photos, AMD EPYC, torch 2.14.1): fooling 38.7%
    [33.3, 44.3] vs control 15.8% [14.7, 16.9], exact McNemar p = 2e-11.
    """
    run, _ = nontargeted
    r = run.result
    fr, ctrl = r.metrics.fooling_rate, r.control.fooling_rate
    assert r.attack.source == "imagenet" and r.attack.zeta == pytest.approx(0.04)
    assert fr.n == 300 and len(ctrl.draws) == 10
    assert fr.value >= ctrl.value + MARGIN_NT, (fr.value, ctrl.value)
    assert fr.ci[0] > ctrl.ci[1]
    assert r.comparison.test.startswith("mcnemar") and r.comparison.p_value < 1e-2
    assert r.attack.uap_norm == pytest.approx(r.attack.eps, rel=1e-3)  # the UAP uses its L-inf budget


def test_targeted_uap_beats_random_control(finetuned, tmp_path):
    """Pneumonia -> 'normal' (hiding disease). Measured (L2, zeta 4%, as above): success 94.0% (clean rate
    23.3%) vs control 6.9%, McNemar p = 5e-79."""
    spec = make_spec(model=MODEL, target="normal", norm="l2", **EFFECT)
    r = run_uap(spec, out_dir=tmp_path, quiet=True).result
    ts, ctrl = r.metrics.targeted_success_rate, r.control.targeted_success_rate
    assert r.attack.target == 0 and r.attack.target_name == "normal"
    assert ts.value >= ctrl.value + MARGIN_T, (ts.value, ctrl.value, ts.clean_rate)
    assert ts.value >= ts.clean_rate + 2 * MARGIN_T
    assert r.comparison.p_value < 1e-3


def test_outputs_and_schema(nontargeted):
    jsonschema = pytest.importorskip("jsonschema")
    from robaudit.core.results import SCHEMA_PATH, SCHEMA_VERSION, json_schema

    run, out = nontargeted
    for f in ("result.json", "spec.json", "uap.npy", "uap.png", "examples.png", "predictions.npz"):
        assert (out / f).is_file(), f
    doc = json.loads((out / "result.json").read_text())
    jsonschema.validate(doc, json.loads(SCHEMA_PATH.read_text()))
    assert json.loads(SCHEMA_PATH.read_text()) == json.loads(json.dumps(json_schema())), \
        "schema file is stale: run python -m robaudit.core.results"
    assert doc["schema_version"] == SCHEMA_VERSION and doc["attack"]["kind"] == "uap" and doc["attack"]["clip"]
    v = np.load(out / "uap.npy")
    assert v.shape == (1, 3, 64, 64) and np.abs(v).max() == pytest.approx(doc["attack"]["eps"], rel=1e-3)
    with np.load(out / "predictions.npz") as z:
        assert float((z["clean"] != z["adv"]).mean()) == pytest.approx(doc["metrics"]["fooling_rate"]["value"])


def test_same_seed_same_perturbation(finetuned, tmp_path):
    small = COMMON | dict(source_limit=64, eval_limit=32, max_iter=1, controls=1)
    a = run_uap(make_spec(model=MODEL, **small), out_dir=tmp_path / "a", quiet=True)
    b = run_uap(make_spec(model=MODEL, **small), out_dir=tmp_path / "b", quiet=True)
    assert np.array_equal(np.load(tmp_path / "a" / "uap.npy"), np.load(tmp_path / "b" / "uap.npy"))
    assert a.result.metrics == b.result.metrics


def test_an_audits_memo_gives_the_same_result_and_computes_shared_rows_once(finetuned, monkeypatch):
    """Two cells on one model that differ in source share clean predictions, the model check and (linf) the noise
    draws: with the memo the second cell's results equal a fresh run's, and it runs neither again."""
    import robaudit.eval.run as run_mod
    from robaudit.eval.run import Given, Memo

    small = COMMON | dict(source_limit=48, eval_limit=40, max_iter=1, controls=3, norm="linf")
    specs = [make_spec(model=MODEL, **small), make_spec(model=MODEL, **(small | dict(source="train")))]
    fresh = [run_uap(s, quiet=True).result for s in specs]
    memo = Memo()
    run_uap(specs[0], quiet=True, given=Given(memo=memo))
    assert len(memo.checks) == 1 and len(memo.draws) == 2  # the clean row, the 3 noise rows
    checks, draws = [], []
    check, score = run_mod.check_model, run_mod.score_draws
    monkeypatch.setattr(run_mod, "check_model", lambda *a, **k: checks.append(1) or check(*a, **k))
    monkeypatch.setattr(run_mod, "score_draws", lambda net, x, vs, **k: draws.append(len(vs)) or score(net, x, vs, **k))
    again = run_uap(specs[1], quiet=True, given=Given(memo=memo)).result
    assert checks == [] and draws == [1]  # v alone (select none: no trajectory)
    assert again.metrics == fresh[1].metrics and again.control == fresh[1].control
    assert again.comparison == fresh[1].comparison and again.control.fooling_rate.draws == \
        fresh[0].control.fooling_rate.draws  # linf: the same noise as the first cell's


def test_cli_json_prints_only_json(finetuned, tmp_path, capsys):
    code = main(["uap", "--model", MODEL, "--source", "natural", "--source-limit", "32", "--eval-limit", "32",
                 "--max-iter", "1", "--controls", "2", "--norm", "linf", "--zeta", "0.02", "--device", "cpu",
                 "--no-report", "--out", str(tmp_path), "--json", *PLAIN])
    out = capsys.readouterr().out
    assert code == 0
    doc = json.loads(out)
    assert doc["attack"]["source"] == "natural" and doc["attack"]["norm"] == "linf"
    assert doc["attack"]["eps"] == pytest.approx(0.02 * float(doc["attack"]["zeta_reference"].split("= ")[1]),
                                                 rel=1e-3)


def test_interrupt_keeps_partial_and_resumes(finetuned, tmp_path, capsys, monkeypatch):
    import robaudit.attacks.uap.state as engine

    args = ["uap", "--model", MODEL, "--source", "imagenet", "--source-limit", "96", "--eval-limit", "32",
            "--max-iter", "2", "--controls", "1", "--device", "cpu", "--no-report", "--out", str(tmp_path), *PLAIN]
    real_tick, calls = engine.UAPState.tick, {"n": 0}

    def tick(self, n, fooled=0):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real_tick(self, n, fooled)

    monkeypatch.setattr(engine.UAPState, "tick", tick)
    code = main(args)
    err = capsys.readouterr().err
    assert code == 130 and "resume" in err
    partial = np.load(tmp_path / "uap.partial.npy")
    assert np.abs(partial).max() > 0 and not (tmp_path / "result.json").exists()
    monkeypatch.setattr(engine.UAPState, "tick", real_tick)
    assert main(args) == 0
    assert (tmp_path / "result.json").is_file() and not (tmp_path / "uap.partial.npy").exists()
    assert "resuming" in capsys.readouterr().err


@pytest.mark.parametrize("extra, fragment", [
    (["--target", "9"], "outside the model's classes"),
    (["--target", "pneumonai"], "did you mean 'pneumonia'"),
    (["--data", "skin"], "has 2 classes (normal, pneumonia) but data 'skin' has 7"),
    (["--source", "EMPTY"], "contains no images"),
    (["--source", "TEXT"], "no decodable images"),
])
def test_bad_input_exit_2(finetuned, tmp_path, capsys, extra, fragment):
    empty = tmp_path / "empty"
    empty.mkdir()
    text = tmp_path / "text"
    text.mkdir()
    (text / "notes.png").write_text("not an image")
    extra = [str(empty) if a == "EMPTY" else str(text) if a == "TEXT" else a for a in extra]
    code = main(["uap", "--model", MODEL, "--device", "cpu", "--source-limit", "8", "--eval-limit", "8",
                 "--controls", "1", "--out", str(tmp_path / "out"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and "Traceback" not in err


#: margins over the random control, measured 5.9 (non-targeted) and 23.8 (targeted) points; asserted with slack
MARGIN_NT = 0.04
MARGIN_T = 0.06
