"""``robaudit demo`` on a reduced setting, and its offline data fallbacks."""

from __future__ import annotations

import json

from robaudit import settings
from robaudit.data import load_task
from robaudit.demo import choose_data, run_demo


def test_demo_small_runs_end_to_end(tmp_path, data_root):
    doc, choice, paths = run_demo(tmp_path / "demo", small=True, device="cpu", quiet=True, allow_download=False)
    assert choice.task == "pneumonia" and choice.source == "imagenet" and "data root" in choice.why
    # 2 models (ImageNet init, random init) x 2 sources (imagenet, train) x (non-targeted + targeted 'normal')
    assert doc["counts"]["cells"] == 8 and doc["counts"]["failed"] == 0
    targets = {c["attack"]["target_name"] for c in doc["cells"]}
    assert targets == {None, "normal"}
    assert {c["model"]["init"] for c in doc["cells"]} == {"imagenet", "random"}
    html = paths["html"].read_text()
    assert "pneumonia" in html and "data root" in json.dumps(json.loads((tmp_path / "demo" / "audit.json")
                                                                        .read_text())["notes"])
    assert paths["md"].is_file()


def test_bundled_medical_fallback_without_data_root(tmp_path, monkeypatch):
    monkeypatch.delenv("ROBAUDIT_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no MedMNIST cache either
    monkeypatch.setenv("ROBAUDIT_HOME", str(tmp_path / "home"))
    settings.set_data_root(None)
    try:
        choice = choose_data(allow_download=False)
        assert choice.task == "modality" and "inside installed wheels" in choice.why
        assert choice.source == "natural"
        task = load_task("modality")
        assert task.num_classes >= 3 and task.count("train") > 300
        x, y = task.tensors("test", size=32, limit=16)
        assert x.shape == (16, 3, 32, 32) and len(set(y.tolist())) >= 2
    finally:
        settings.set_data_root(None)
