"""Attacker strength: v chosen on the medical selection split, the augmented photo budget, strongest-of,
and the zero-knowledge surrogate (real data, the session's fine-tuned pneumonia model, CPU-sized)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import robaudit.eval.run as runner
from robaudit.attacks.predict import predict
from robaudit.cli import main
from robaudit.core.specs import make_spec
from robaudit.data import load_source, load_task
from robaudit.data.stream import AugmentedStream
from robaudit.eval.run import run_uap

MODEL = "pneumonia_tf_efficientnet_lite0"
SMALL = dict(source="imagenet", zeta=0.04, eval_limit=96, controls=1, device="cpu", select_limit=64)


@pytest.fixture(scope="module")
def finetuned(trained):
    return trained(MODEL)


def _selection_rate(v: torch.Tensor, spec, result) -> float:
    """The recorded selection split, rebuilt from the task as the runner draws it, scored independently."""
    task = load_task("pneumonia", size=64)
    x, _ = task.tensors(result.attack.selection.split, size=64, limit=spec.select_limit, seed=spec.seed + 1)
    from robaudit.models import load_model

    m = load_model(MODEL, device="cpu").module
    clean, adv = predict(m, x), predict(m, x, v)
    return float((adv != clean).float().mean())


def test_kept_v_is_the_best_on_the_selection_split_not_the_last(finetuned, tmp_path):
    """A long constant-step fgsm build over plain photos overfits them: its last v scores below an
    earlier one on the held-out val images, and the v written to uap.npy is that earlier, better one."""
    spec = make_spec(model=MODEL, norm="linf", method="fgsm", augment=False, source_limit=64, max_iter=8,
                     batch_size=16, select_every=64, patience=None, stop_delta=0, step_size=0.01, **SMALL)
    r = run_uap(spec, out_dir=tmp_path, quiet=True).result
    sel = r.attack.selection
    assert sel.split == "val" and sel.n == 64 and len(sel.trajectory) >= 6
    assert sel.final_rate < sel.best_rate, [p.selection_rate for p in sel.trajectory]
    assert sel.best_rate == max(p.selection_rate for p in sel.trajectory)
    assert sel.best_at < sel.trajectory[-1].images
    kept = torch.from_numpy(np.load(tmp_path / "uap.npy"))
    assert _selection_rate(kept, spec, r) == pytest.approx(sel.best_rate, abs=1e-12)
    assert _selection_rate(kept, spec, r) != pytest.approx(sel.final_rate, abs=1e-12)
    assert all(p.test_rate is not None for p in sel.trajectory)  # measured after the build, for the report
    kept_test = next(p.test_rate for p in sel.trajectory if p.images == sel.best_at)
    assert r.metrics.fooling_rate.value == pytest.approx(kept_test, abs=1e-12)


def test_select_none_keeps_the_blind_attackers_last_v(finetuned):
    spec = make_spec(model=MODEL, norm="linf", method="sgd", augment=False, source_limit=32, max_iter=2,
                     select="none", **SMALL)
    r = run_uap(spec, quiet=True)
    assert r.result.attack.selection is None and r.result.attack.threat_model == "white-box natural"


def test_augmented_stream_is_seeded_and_stops_at_the_budget(tmp_path):
    src = load_source("natural")
    a = torch.cat(list(AugmentedStream(src, 32, 150, seed=5, chunk_size=64)))
    b = torch.cat(list(AugmentedStream(src, 32, 150, seed=5, chunk_size=50, workers=2)))
    c = torch.cat(list(AugmentedStream(src, 32, 150, seed=6, chunk_size=64)))
    assert a.shape == (150, 3, 32, 32) and torch.equal(a, b)  # chunking and worker processes change nothing
    assert not torch.equal(a, c)
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    assert len({x.numpy().tobytes() for x in a}) == 150  # every draw is its own view
    # more draws than photos: the stream cycles through them (another order, other crops each epoch)
    small = load_source("natural", limit=10)
    assert sum(len(x) for x in AugmentedStream(small, 16, 37, chunk_size=8)) == 37
    # an undecodable photo is skipped and counted, never fatal
    from PIL import Image

    for i in range(3):
        Image.fromarray(np.full((40, 40, 3), 60 * i, np.uint8)).save(tmp_path / f"ok{i}.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    stream = AugmentedStream(load_source(tmp_path), 16, 40, chunk_size=16)
    n = sum(len(x) for x in stream)
    assert stream.skipped == 10 and n == 30


def test_best_races_the_methods_and_records_every_rung(finetuned, tmp_path):
    """``best`` races fgsm, sgd and perphoto by successive halving over one stream (cuts at 64 and 128
    views): a candidate is dropped only where the selection images separate it from the leader, and then
    it has seen only the views up to that cut; every candidate's rungs are in result.json."""
    code = main(["uap", "--model", MODEL, "--source", "imagenet", "--method", "best", "--norm", "linf",
                 "--budget", "384", "--select-every", "64", "--source-limit", "64", "--eval-limit", "64",
                 "--select-limit", "64", "--controls", "1", "--device", "cpu", "--no-report", "--out", str(tmp_path),
                 "--seed", "1", "--stop-delta", "0", "--race-rung", "64"])
    assert code == 0
    from robaudit.core.results import load_result

    a = load_result(tmp_path / "result.json").attack
    assert [c.method for c in a.candidates] == ["fgsm", "sgd", "perphoto"] and a.budget == 384
    assert a.selection.race_rungs == [64, 128]
    [winner] = [c for c in a.candidates if c.chosen]
    assert winner.dropped_at is None and winner.images_seen == 384 and all(r.kept for r in winner.rungs)
    for c in a.candidates:
        assert c.rungs and c.rungs[0].images == 64
        for r in c.rungs:
            if not r.kept:  # dropped: separated from the leader, and it stopped right there
                assert r.p_vs_leader < 0.05 and c.dropped_at == r.images == c.images_seen
                assert r.selection_rate < winner.rungs[len(c.rungs) - 1].selection_rate
        if c.dropped_at is None:
            assert c.images_seen == 384 and len(c.rungs) == 2
    assert winner.selection_rate == a.selection.best_rate == max(c.selection_rate for c in a.candidates
                                                                 if c.dropped_at is None)
    assert a.selection.stop_rule is None  # --stop-delta 0: the whole budget
    assert a.selection.check_seconds > 0 and a.selection.build_seconds >= winner.seconds


def test_toward_classes_races_a_build_per_class_judged_by_the_non_targeted_rate(finetuned, tmp_path):
    """On a two-class model the default (sgd) races an sgd build toward each class; the non-targeted build is one
    of those two directions and does not race. The cell stays non-targeted: every candidate is ranked by the
    non-targeted rate on the selection split, and the kept v's rate, rescored independently, is the winner's.
    The first cut sits at half the budget (a build toward the right class starts slowest); the setting is hashed
    only when not left to the default."""
    args = ["uap", "--model", MODEL, "--source", "imagenet", "--norm", "linf", "--budget", "512",
            "--select-every", "64", "--source-limit", "64", "--eval-limit", "64", "--select-limit", "64",
            "--controls", "1", "--device", "cpu", "--no-report", "--seed", "2", "--stop-delta", "0"]
    assert main([*args, "--out", str(tmp_path)]) == 0
    from robaudit.core.results import load_result

    r = load_result(tmp_path / "result.json")
    a = r.attack
    assert a.method == "sgd" and [(c.method, c.toward) for c in a.candidates] == [("sgd", "normal"),
                                                                                 ("sgd", "pneumonia")]
    assert a.selection.race_rungs == [256]  # half the budget (a quarter would be 128): the only cut before the end
    assert not a.targeted and a.target is None
    [winner] = [c for c in a.candidates if c.chosen]
    finalists = [c for c in a.candidates if c.dropped_at is None]
    assert winner.selection_rate == a.selection.best_rate == max(c.selection_rate for c in finalists)
    spec = make_spec(model=MODEL, norm="linf", seed=2, **SMALL)
    kept = torch.from_numpy(np.load(tmp_path / "uap.npy"))
    assert _selection_rate(kept, spec, r) == pytest.approx(a.selection.best_rate, abs=1e-12)
    assert spec.cache_key() == make_spec(model=MODEL, norm="linf", seed=2, toward_classes=None, **SMALL).cache_key()
    assert len({make_spec(model=MODEL, norm="linf", seed=2, toward_classes=t, **SMALL).cache_key()
                for t in (None, True, False)}) == 3


P, D = [("fgsm", None), ("sgd", None), ("perphoto", None)], [("sgd", None)]  # best's race; one plain sgd build


@pytest.mark.parametrize("n, method, asked, target, expected", [
    (2, "sgd", None, None, [("sgd", 0), ("sgd", 1)]),  # the default on two classes: both directions, no plain build
    (5, "sgd", None, None, D),  # above two classes the default is one plain build (the CLI's hint names the race)
    (5, "sgd", True, None, D + [("sgd", c) for c in range(5)]),  # asked: the plain build and one toward each class
    (5, "best", True, None, D + [("sgd", c) for c in range(5)]),
    (2, "best", None, None, P),  # best keeps its race of methods unless asked
    (2, "sgd", False, None, D),
    (2, "sgd", None, 1, D),  # targeted: the direction is given
    (12, "sgd", True, None, D),  # more classes than TOWARD_MAX_CLASSES: refused with a warning
])
def test_candidate_runs_by_class_count_method_and_setting(n, method, asked, target, expected):
    """Which builds race, as (method, seed, class aimed at): the default races the directed builds in two-class
    sgd cells only; toward_classes=True races them, beside the plain build, on up to 10 classes."""
    from types import SimpleNamespace

    from robaudit.eval.run import candidate_runs

    spec = SimpleNamespace(method=method, seed=3, restarts=1, toward_classes=asked)
    prep = SimpleNamespace(spec=spec, lm=SimpleNamespace(classes=[f"c{i}" for i in range(n)]), target=target,
                           surrogate=None, select_score=lambda v: None)
    assert candidate_runs(prep) == [(m, 3, t) for m, t in expected]


def test_toward_classes_where_it_cannot_apply_says_so(finetuned, tmp_path, capsys):
    """Asked for where it cannot apply (a single method, a targeted cell), --toward-classes is a warning that says
    why, and the run is the plain one."""
    args = ["uap", "--model", MODEL, "--source", "imagenet", "--norm", "linf", "--budget", "64", "--source-limit",
            "16", "--eval-limit", "16", "--select-limit", "16", "--controls", "1", "--device", "cpu", "--no-report",
            "--toward-classes"]
    assert main([*args, "--method", "fgsm", "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--target", "normal", "--out", str(tmp_path / "b")]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "--toward-classes ignored: it races sgd builds (--method sgd or best), not fgsm" in err
    assert "--toward-classes ignored: the cell is targeted (--target)" in err
    from robaudit.core.results import load_result

    b = load_result(tmp_path / "b" / "result.json").attack
    assert b.targeted and b.method == "sgd" and b.candidates == []  # the plain targeted build


def test_stop_rule_ends_a_flat_build_early_and_says_why(finetuned):
    """A build whose best v barely moves is ended by the stop rule well before its budget, and the result records
    the rule, the reason and each check's bound. Flat by construction, so the test does not hinge on one training
    draw: at zeta 0.05 % a v of that norm moves at most an image or two of the 64 selection images across the
    boundary, and the paired bound over the window is then at most 1/64 < delta 0.02, so the build stops at the
    first check where the rule can be read (window + 1). (A real build rising by one image per check on 64
    selection images keeps going at the default delta 0.01.) The floor is lowered to 0 here: by default no build
    stops before 2,000 views (``stop_after``), which is this whole budget."""
    spec = make_spec(model=MODEL, norm="linf", method="sgd", toward_classes=False, budget=2000, select_every=128,
                     source_limit=64, stop_delta=0.02, stop_window=3, stop_after=0, **{**SMALL, "zeta": 0.0005})
    r = run_uap(spec, quiet=True).result
    sel = r.attack.selection
    assert sel.plateau and sel.stop_rule.window == spec.stop_window and sel.stop_rule.delta == spec.stop_delta
    assert sel.stop_rule.after == 0
    assert r.attack.candidates == [] and len(sel.trajectory) == spec.stop_window + 1
    assert sel.trajectory[-1].images < 2000 / 3
    assert "confidence" in sel.stop_reason and sel.trajectory[-1].upper_gain <= 1 / 64 < spec.stop_delta
    assert all(p.upper_gain is None for p in sel.trajectory[:spec.stop_window])
    assert sel.best_rate == max(p.selection_rate for p in sel.trajectory)


def test_zero_knowledge_surrogate_never_calls_the_audited_model(finetuned, monkeypatch):
    """--surrogate pretrained: v is built and chosen on the public ImageNet lite0 with photos only; the
    audited model (and its images) is first used after v is fixed."""
    calls = {"n": 0, "at_measure": None}
    real_load, real_measure = runner.load_model_and_task, runner.measure

    def load(*a, **k):
        lm, task = real_load(*a, **k)
        lm.module.register_forward_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
        return lm, task

    def measure(prep, v):
        calls["at_measure"] = calls["n"]
        return real_measure(prep, v)

    monkeypatch.setattr(runner, "load_model_and_task", load)
    monkeypatch.setattr(runner, "measure", measure)
    spec = make_spec(model=MODEL, norm="linf", method="sgd", surrogate="pretrained", budget=128, source_limit=96,
                     **SMALL)
    r = run_uap(spec, quiet=True).result
    assert calls["at_measure"] == 0 and calls["n"] > 0
    a = r.attack
    assert a.threat_model == "zero-knowledge surrogate" and "ImageNet classifier" in a.surrogate
    assert a.selection.split == "held-out photos" and a.selection.n >= 9
    assert any("zero-knowledge" in n for n in r.notes)


def test_surrogate_refusals(finetuned, capsys):
    args = ["uap", "--model", MODEL, "--surrogate", "pretrained", "--device", "cpu", "--no-report"]
    assert main(args + ["--target", "normal"]) == 2
    assert main(args + ["--source", "train"]) == 2
    assert main(["uap", "--model", MODEL, "--surrogate", "no_such_model", "--device", "cpu", "--no-report"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 3 and "Traceback" not in err and "not 'pretrained', a trained zoo model" in err
