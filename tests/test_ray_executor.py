"""The Ray executor: a local Ray cluster gives the local executor's audit, with the same cache and resume."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from robaudit.auditing import run_audit
from robaudit.auditing.ray_executor import cell_resources, run_cells_ray
from robaudit.auditing.recipes import load_recipe
from robaudit.core.errors import BadInput
from robaudit.core.specs import UAPSpec

NAME, CLASSES = "pneumonia_resnet10t_ray_test", ["normal", "pneumonia"]
RECIPE = f"""
name = "ray-test"
models = ["{NAME}"]
sources = ["train"]
norms = ["linf", "l2"]
zetas = [0.08]
methods = ["fgsm"]
targets = ["no-such-class"]   # + the non-targeted cells: two cells fail, as they must on both executors
eval_limit = 24
source_limit = 24
max_iter = 2
batch_size = 8
controls = 2
device = "cpu"
transfer_eval = false
select = "none"
"""


@pytest.fixture(scope="module")
def recipe_file(tmp_path_factory):
    import timm

    from robaudit.models.store import ModelCard, save_model

    torch.manual_seed(1)
    net = timm.create_model("resnet10t", pretrained=False, num_classes=2)
    save_model(net, ModelCard(name=NAME, arch="resnet10t", init="random", task="pneumonia", classes=CLASSES,
                              input_size=32, mean=(0.5,) * 3, std=(0.5,) * 3))
    path = tmp_path_factory.mktemp("recipe") / "ray-test.toml"
    path.write_text(RECIPE)
    return path


@pytest.fixture(scope="module")
def local_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def local_doc(recipe_file, tmp_path_factory):
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a one-CPU Ray task
    try:
        rec, text = load_recipe(recipe_file)
        out = tmp_path_factory.mktemp("local")
        return run_audit(rec, out, recipe_text=text, quiet=True), out
    finally:
        torch.set_num_threads(n)


def _by_cell(doc) -> dict:
    return {Path(c["artifacts"]["cell_dir"]).name: c for c in doc["cells"]}


def _same_cells(a: dict, b: dict) -> None:
    assert a["counts"]["done"] == b["counts"]["done"] == 2 and a["counts"]["failed"] == b["counts"]["failed"] == 2
    assert sorted(f["key"] for f in a["failed"]) == sorted(f["key"] for f in b["failed"])
    assert all("no-such-class" in f["error"] for f in b["failed"])
    ca, cb = _by_cell(a), _by_cell(b)
    assert sorted(ca) == sorted(cb)
    for key in ca:
        ma, mb = ca[key]["metrics"], cb[key]["metrics"]
        assert mb["fooling_rate"] == ma["fooling_rate"]
        assert mb["confusion"] == ma["confusion"] and mb["clean_accuracy"] == ma["clean_accuracy"]
        assert cb[key]["control"]["fooling_rate"]["draws"] == ca[key]["control"]["fooling_rate"]["draws"]
        assert cb[key]["attack"]["source_fooling_rate"] == pytest.approx(ca[key]["attack"]["source_fooling_rate"])
    assert a["tables"]["1. UAP vs random control (every cell)"]["rows"] == \
        b["tables"]["1. UAP vs random control (every cell)"]["rows"]


def test_ray_runs_the_recipe_like_the_local_executor_and_resumes(recipe_file, local_doc, local_cluster, tmp_path):
    doc_local, out_local = local_doc
    rec, text = load_recipe(recipe_file)
    out = tmp_path / "ray"
    doc = run_audit(rec, out, recipe_text=text, quiet=True, executor="ray")
    _same_cells(doc_local, doc)
    for key in _by_cell(doc):
        assert (out / "cells" / key / "result.json").is_file()
        np.testing.assert_allclose(np.load(out / "cells" / key / "uap.npy"),
                                   np.load(out_local / "cells" / key / "uap.npy"), rtol=0, atol=1e-6)
    for failed in doc["failed"]:
        assert json.loads((out / "cells" / failed["key"] / "error.json").read_text())["key"] == failed["key"]

    # a half-finished fleet audit: one cell lost its result; --resume re-runs only that one, on Ray
    lost = sorted(_by_cell(doc))[0]
    (out / "cells" / lost / "result.json").unlink()
    resumed = run_audit(rec, out, recipe_text=text, quiet=True, resume=True, executor="ray")
    assert resumed["counts"]["cached"] == 1 and resumed["counts"]["done"] == 2
    _same_cells(doc_local, resumed)
    assert (out / "cells" / lost / "result.json").is_file()


def test_cells_fill_result_or_error_like_run_cell(recipe_file, local_cluster, tmp_path):
    from robaudit.auditing import Cell, classes_of

    rec, _ = load_recipe(recipe_file)
    specs = rec.cells(classes_of)
    cells = [Cell(s.cache_key(), s, tmp_path / "cells" / s.cache_key()) for s in specs if s.target is None][:1]
    bad = specs[-1].model_copy(update={"model": "pneumonia_resnet10t_not_trained"})
    cells.append(Cell(bad.cache_key(), bad, tmp_path / "cells" / bad.cache_key()))
    run_cells_ray(cells, quiet=True)
    assert cells[0].result is not None and cells[0].error is None and cells[0].result.model.name == NAME
    assert cells[1].result is None and cells[1].error.startswith("BadInput: ")
    assert (cells[1].dir / "error.json").is_file()


def test_ctrl_c_cancels_the_rest_and_keeps_finished_cells(recipe_file, local_cluster, tmp_path, monkeypatch):
    from robaudit.auditing import Cell, classes_of

    cells = [Cell(s.cache_key(), s, tmp_path / s.cache_key()) for s in load_recipe(recipe_file)[0].cells(classes_of)]
    real_wait, calls = local_cluster.wait, {"n": 0}

    def wait(refs, **kw):  # Ctrl-C in the driver once the first cell is back
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_wait(refs, **kw)

    monkeypatch.setattr(local_cluster, "wait", wait)
    with pytest.raises(KeyboardInterrupt):
        run_cells_ray(cells, quiet=True)
    first = [c for c in cells if c.result is not None or c.error is not None]
    assert len(first) == 1 and (first[0].dir / ("error.json" if first[0].error else "result.json")).is_file()
    assert calls["n"] == 3  # the grace wait for the cancelled cells


def test_missing_ray_is_one_line_bad_input(recipe_file, tmp_path, monkeypatch, capsys):
    from robaudit.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(BadInput, match=r"pip install 'robaudit\[ray\]'"):
        run_cells_ray([], quiet=True)
    code = main(["audit", "--recipe", str(recipe_file), "--executor", "ray", "--out", str(tmp_path / "a"), "--json"])
    err = capsys.readouterr().err
    assert code == 2 and "pip install 'robaudit[ray]'" in err
    assert len([ln for ln in err.splitlines() if ln.strip()]) == 1


@pytest.mark.parametrize("device, cluster_gpus, workers, expected", [
    ("cuda", 8, 0, {"num_cpus": 1, "num_gpus": 1}),
    ("cuda:2", 8, 3, {"num_cpus": 4, "num_gpus": 1}),
    ("auto", 4, 0, {"num_cpus": 1, "num_gpus": 1}),
    ("auto", 0, 0, {"num_cpus": 1, "num_gpus": 0}),
    ("cpu", 8, 0, {"num_cpus": 1, "num_gpus": 0}),
])
def test_cell_resources(device, cluster_gpus, workers, expected):
    spec = UAPSpec(model="m", device=device, workers=workers)
    assert cell_resources(spec, cluster_gpus) == expected


def test_ray_trains_missing_replicates_in_parallel_with_local_weights(local_cluster, tmp_path, monkeypatch):
    from robaudit.auditing import AuditRecipe, ensure_models
    from robaudit.auditing.recipes import TrainSettings
    from robaudit.models.store import read_card
    from robaudit.models.train import TrainConfig, train_model

    mini = "pneumonia-mini_tf_efficientnet_lite0"
    recipe = AuditRecipe(name="rep", models=[mini], replicates=2, sources=["train"], device="cpu",
                         train=TrainSettings(epochs=1, train_limit=64, batch_size=32))
    monkeypatch.setenv("ROBAUDIT_HOME", str(tmp_path / "ray-home"))
    ensure_models(recipe, train_missing=True, quiet=True, executor="ray")
    on_ray = {n: read_card(tmp_path / "ray-home" / "models" / n / "card.json") for n in (mini, f"{mini}@1")}
    assert on_ray[mini].weights_sha256 != on_ray[f"{mini}@1"].weights_sha256
    monkeypatch.setenv("ROBAUDIT_HOME", str(tmp_path / "local-home"))
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a one-CPU Ray task
    try:
        local = train_model(f"{mini}@1", TrainConfig(epochs=1, train_limit=64, batch_size=32, image_size=64),
                            device="cpu", quiet=True)
    finally:
        torch.set_num_threads(n)
    assert local.weights_sha256 == on_ray[f"{mini}@1"].weights_sha256
