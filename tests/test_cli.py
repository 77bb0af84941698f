"""CLI: fast help, one-line errors with exit code 2 and no traceback, data/models listings."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from robaudit.cli import main


def run_cli(args, capsys):
    code = main(args)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_help_is_fast_and_light():
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-c", "import sys; from robaudit.cli import main; main(['--help']);"
                           "print('torch' in sys.modules, 'timm' in sys.modules)"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "uap" in proc.stdout
    assert proc.stdout.strip().endswith("False False")  # no heavy imports for --help
    assert time.time() - t0 < 10  # generous for a loaded CI box; typically ~0.4 s


@pytest.mark.parametrize("args, fragment", [
    (["uap", "--model", "skni_resnet18", "--source", "imagenet"], "unknown task"),
    (["uap", "--model", "skin_resnet5O"], "did you mean 'resnet50'"),
    (["uap", "--model", "skin_resnet18"], "robaudit train skin_resnet18"),
    (["uap", "--model", "skin_resnet18", "--zeta", "1.5"], "zeta must be in (0, 1]"),
    (["uap", "--model", "skin_resnet18", "--eps", "-0.1"], "eps must be > 0"),
    (["uap", "--model", "skin_resnet18", "--zeta", "0.02", "--eps", "0.1"], "not both"),
    (["uap", "--model", "skin_resnet18", "--method", "deepfool", "--mode", "reference"], "fgsm only"),
    (["train", "skni_resnet18"], "did you mean 'skin'"),
    (["train", "skin_resnet18", "--epochs", "0"], "epochs"),
    (["--data-root", "/nonexistent/robaudit", "data", "list"], "is not a folder"),
])
def test_bad_input_is_one_line_exit_2(args, fragment, capsys):
    code, out, err = run_cli(args, capsys)
    assert code == 2, err
    assert fragment in err
    assert "Traceback" not in err and len([ln for ln in err.strip().splitlines() if ln.strip()]) <= 3


def test_unknown_task_in_uap_is_caught_before_work(capsys, tmp_path):
    code, _, err = run_cli(["uap", "--model", "skni_resnet18"], capsys)
    assert code == 2 and "did you mean 'skin'" in err


def test_data_list_json(capsys, data_root):
    code, out, _ = run_cli(["data", "list", "--json"], capsys)
    assert code == 0
    doc = json.loads(out)
    names = {t["name"]: t for t in doc["tasks"]}
    assert set(names) >= {"skin", "retina", "pneumonia"}
    assert names["retina"]["views"] == ["referable"] and names["pneumonia"]["counts"]["test"] == 624
    assert {s["name"] for s in doc["sources"]} == {"imagenet", "natural", "train"}
    assert next(s for s in doc["sources"] if s["name"] == "imagenet")["images"] == 800


def test_models_list_json(capsys):
    code, out, _ = run_cli(["models", "list", "--json"], capsys)
    assert code == 0
    rows = {r["name"]: r for r in json.loads(out)["models"]}
    assert rows["skin_resnet50_random"]["transfer"] == "scratch"
    assert "pneumonia_tf_efficientnet_lite0" in rows


def test_data_fetch_offline_is_clear(capsys, tmp_path, monkeypatch):
    pytest.importorskip("medmnist")
    import socket

    def no_network(*a, **k):
        raise OSError("network unreachable (test)")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    code, _, err = run_cli(["--data-root", str(tmp_path), "data", "fetch", "bloodmnist"], capsys)
    assert code == 3 and "offline" in err and "Traceback" not in err
    code, _, err = run_cli(["--data-root", str(tmp_path), "data", "fetch", "bloodmnst"], capsys)
    assert code == 2 and "did you mean 'bloodmnist'" in err


def test_data_root_override_lasts_one_invocation_and_missing_task_files_are_named(tmp_path, capsys):
    from robaudit.core import locations

    code, _, err = run_cli(["--data-root", str(tmp_path), "uap", "--model", "skin_resnet18"], capsys)
    assert code == 2 and locations.configured_override() is None  # not leaked into the next call
    assert "'skin' (dermamnist.npz) is not in the data root" in err and "did you mean" not in err
