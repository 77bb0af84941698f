"""``robaudit demo`` on a reduced setting: the embedded chest X-rays with no data root, offline."""

from __future__ import annotations

import json

from robaudit.core import locations
from robaudit.demo import choose_data, run_demo


def test_demo_small_runs_on_the_embedded_data_without_a_data_root(tmp_path, monkeypatch):
    monkeypatch.delenv("ROBAUDIT_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no MedMNIST cache either: only what ships in the package
    locations.set_data_root(None)
    doc, choice, paths = run_demo(tmp_path / "demo", small=True, device="cpu", quiet=True)
    assert choice.task == "pneumonia-mini" and choice.source == "natural" and "Kermany" in choice.why
    # 2 models (ImageNet init, random init) x photo UAP + the fine-tune's photo UAP targeted to 'normal'
    assert doc["counts"] == {"cells": 3, "done": 3, "failed": 0, "cached": 0}
    cells = doc["cells"]
    assert {c["attack"]["threat_model"] for c in cells} == {"white-box natural"}
    assert [(c["model"]["init"], c["attack"]["source"]) for c in cells if c["attack"]["target_name"] == "normal"] \
        == [("imagenet", "natural")]
    assert {c["model"]["init"] for c in cells} == {"imagenet", "random"}
    assert all(c["data"]["name"] == "pneumonia-mini" and c["data"]["n"] == 96 for c in cells)
    natural = [c for c in cells if c["attack"]["source"] == "natural"]
    assert all(c["attack"]["budget"] == 256 and c["attack"]["selection"]["trajectory"] for c in natural)
    html = paths["html"].read_text()
    assert "pneumonia-mini" in html and "Attack strength vs the attacker" in html
    assert "Kermany" in json.dumps(json.loads((tmp_path / "demo" / "audit.json").read_text())["notes"])
    assert paths["md"].is_file()


def test_demo_on_a_data_root_task_uses_its_imagenet_photos(data_root):
    choice = choose_data("pneumonia")
    assert choice.task == "pneumonia" and choice.target == "normal" and choice.source == "imagenet"
