"""The demo's story should not hinge on one training draw: what decides trained weights is recorded and a
change is said (models list, the report), training stops at its val plateau, an older demo's models are
retrained, and (slow) the demo's fine-tune retrained with 1 and with 2 threads tells the same story."""

from __future__ import annotations

import json

import pytest
import torch

import robaudit as ra
from robaudit.cli import main
from robaudit.core.provenance import condition_changes, training_conditions
from robaudit.data.embedded import NAME as EMBEDDED
from robaudit.models.store import model_dir, read_card
from robaudit.models.train import TrainConfig, train_model

NAME = f"{EMBEDDED}_tf_efficientnet_lite0"


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A store of this test's own: the demo test trains the same zoo names with its own settings."""
    monkeypatch.setenv("ROBAUDIT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _set_card(name: str, **trained_under) -> None:
    path = model_dir(name) / "card.json"
    card = json.loads(path.read_text())
    card["trained_under"].update(trained_under)
    path.write_text(json.dumps(card))


def test_conditions_are_recorded_and_a_change_is_named_in_models_list_and_the_report(home, tmp_path, capsys):
    card = train_model(NAME, TrainConfig(epochs=1, image_size=32, train_limit=64), device="cpu", quiet=True)
    now = training_conditions(torch.device("cpu"))
    assert card.trained_under == now and now["torch_threads"] == torch.get_num_threads()
    assert now["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and now["torch"] == torch.__version__
    assert read_card(model_dir(NAME) / "card.json").trained_under == now  # stored with the weights
    assert condition_changes(now, now) == []
    assert condition_changes({**now, "torch_threads": 7}, now) == [f"torch_threads 7 -> {now['torch_threads']}"]

    assert main(["models", "list"]) == 0
    assert "trained under other conditions" not in capsys.readouterr().err
    _set_card(NAME, torch_threads=7, cpu_capability="AVX512")
    assert main(["models", "list"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert f"{NAME}: trained under other conditions" in err and f"torch_threads 7 -> {now['torch_threads']}" in err
    assert f"cpu_capability AVX512 -> {now['cpu_capability']}" in err

    # the result records both and the report names the change among its limitations
    run = ra.uap(NAME, source="natural", budget=64, eval_limit=32, select_limit=16, controls=1, device="cpu",
                 force=True)
    m = run.result.model
    assert m.trained_under["torch_threads"] == 7
    assert m.conditions_changed == [f"torch_threads 7 -> {now['torch_threads']}",
                                    f"cpu_capability AVX512 -> {now['cpu_capability']}"]
    md = " ".join(run.result.to_markdown(tmp_path / "r.md").read_text().replace("\\_", "_").split())
    assert "trained under other conditions than this audit ran in" in md and "torch_threads 7" in md
    assert "The verdict rests on one training run per model" in md


def test_training_stops_at_its_val_plateau_and_keeps_the_best_epoch(home):
    """At a learning rate of 1e-9 the weights barely move: val accuracy stops rising at once, so with
    patience 1 training ends one epoch after its best, well before the 8 epochs allowed."""
    card = train_model(NAME, TrainConfig(epochs=8, patience=1, lr=1e-9, image_size=32, train_limit=64),
                       device="cpu", quiet=True)
    m, history = card.metrics, card.train["history"]
    assert m["epochs_run"] == len(history) < 8 and card.train["patience"] == 1
    assert m["epochs_run"] == m["best_epoch"] + 1
    best = max(h["val_accuracy"] for h in history)
    assert history[int(m["best_epoch"]) - 1]["val_accuracy"] == best == m["val_accuracy"]
    # without patience the old fingerprint (an unfinished 0.5 run resumes) and every epoch
    assert TrainConfig(epochs=3).fingerprint("x") == TrainConfig.model_validate(
        {"epochs": 3}).fingerprint("x") != TrainConfig(epochs=3, patience=2).fingerprint("x")
    assert '"patience"' not in TrainConfig().model_dump_json(exclude={"patience"})


def test_an_older_demos_models_are_retrained(home):
    from robaudit.demo import choose_data, demo_recipe, duration_line, stale_models

    recipe = demo_recipe(choose_data(), small=True)
    cfg = recipe.train.config().model_copy(update={"train_limit": 64, "image_size": 32})
    train_model(NAME, cfg, device="cpu", quiet=True)
    assert stale_models(recipe) == [NAME]  # other size and subset than this demo's
    train_model(NAME, recipe.train.config(), device="cpu", quiet=True, resume=False)
    assert stale_models(recipe) == []
    assert stale_models(demo_recipe(choose_data(), small=True, train_seed=1)) == [NAME]
    # the first line states the measured time for what this run will do: retrain (fresh) or reuse (trained)
    full = demo_recipe(choose_data())
    assert "4 min 12 s" in duration_line(full, False, [NAME]) and "8 epochs at most" in duration_line(full, False, [])
    assert full.train.epochs == full.train.scratch_epochs == 8 and full.train.patience == 2


@pytest.mark.slow
def test_the_demos_finetune_tells_the_same_story_with_one_and_two_threads(tmp_path, monkeypatch):
    """The must-show of a stable front door: the demo's own fine-tune, retrained from an empty store with 1 and
    with 2 torch threads (another reduction order in the kernels: other weights from the same seed on many
    CPUs), lands within a few points of clean accuracy, and the demo's own photo cell (white-box, non-targeted)
    beats same-norm noise on both."""
    from robaudit.demo import choose_data, demo_recipe
    from robaudit.eval.run import run_uap

    recipe = demo_recipe(choose_data())
    [spec] = [s for s in recipe.cells(lambda _: ["normal", "pneumonia"]) if s.model == NAME and s.source == "natural"
              and s.target is None and s.surrogate is None and s.access == "white-box"]
    n = torch.get_num_threads()
    seen = {}
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            monkeypatch.setenv("ROBAUDIT_HOME", str(tmp_path / f"home{threads}"))
            card = train_model(NAME, recipe.train.config(), device="cpu", quiet=True)
            r = run_uap(spec.model_copy(update={"device": "cpu"}), quiet=True).result
            seen[threads] = (card.trained_under["torch_threads"], card.metrics["test_accuracy"],
                             r.metrics.fooling_rate, r.control.fooling_rate, r.comparison.p_value)
    finally:
        torch.set_num_threads(n)
    (t1, acc1, *_), (t2, acc2, *_) = seen[1], seen[2]
    assert (t1, t2) == (1, 2)
    assert abs(acc1 - acc2) <= 0.05, seen
    for _, _, rate, control, p in seen.values():
        assert rate.ci[0] > control.ci[1] and p < 1e-3, seen  # the photo UAP beats noise on either draw


def test_recipe_skip_leaves_cells_out_of_the_cross_product(tmp_path, capsys):
    from robaudit.auditing.recipes import AuditRecipe, load_recipe

    base = dict(name="r", tasks=["pneumonia-mini"], archs=["tf_efficientnet_lite0"], sources=["natural", "train"],
                targets=["normal"])
    full = AuditRecipe(**base).cells(lambda _: ["normal", "pneumonia"])
    assert len(full) == 2 * 2 * 2  # (full, scratch) x (natural, train) x (none, normal)
    cut = AuditRecipe(**base, skip=[{"transfer": "scratch", "target": "normal"}, {"source": "train",
                                                                                 "target": "none"}])
    kept = [(s.model.endswith("_random"), s.source, s.target) for s in cut.cells(lambda _: ["normal", "pneumonia"])]
    assert kept == [(False, "natural", None), (False, "natural", "normal"), (False, "train", "normal"),
                    (True, "natural", None)]
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "r"\ntasks = ["pneumonia-mini"]\narchs = ["tf_efficientnet_lite0"]\n'
                   'skip = [{ model = "x" }]\n')
    with pytest.raises(ra.BadInput) as e:
        load_recipe(bad)
    assert "skip" in str(e.value)
