"""The public API (``import robaudit as ra``): a user's own module and in-memory data audited like the CLI.

The contract tests: every public name imports; a custom 1-channel nn.Module with its own mean/std audited
from tensors gives the CLI's v bit for bit and the CLI's numbers for the same checkpoint, data and seed;
``run.save`` writes the CLI's file set; bad arguments are one-line BadInput naming the argument."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from greynet import MEAN, STD, train_greynet
from safetensors.torch import save_file
from typer.testing import CliRunner

import robaudit as ra
from robaudit.cli import app
from robaudit.data.images import resize_batch

SETTINGS = dict(norm="linf", zeta=0.06, seed=3, budget=256, controls=4, select_limit=32, select_every=128,
                batch_size=32)


def test_every_public_name_imports():
    for name in ra.__all__:
        assert getattr(ra, name) is not None, name
    assert set(ra.__all__) >= {"Model", "Data", "uap", "UAPRun", "attack", "audit", "report", "gate", "load_model",
                               "load_data", "BadInput", "Result", "UAPConfig"}
    with pytest.raises(AttributeError):
        _ = ra.not_a_name


@pytest.fixture(scope="module")
def grey():
    """Embedded chest X-rays as 1-channel uint8 arrays (a user's in-memory data) and a GreyNet trained on them."""
    task = ra.load_data("pneumonia-mini").task

    def split(name, n):
        x, y = task.tensors(name, size=None, limit=n, seed=0)
        return (x[:, :1] * 255).round().to(torch.uint8).numpy(), y.numpy()

    arrays = {"train": split("train", 400), "val": split("val", 64), "test": split("test", 120)}
    xtr = resize_batch(torch.from_numpy(arrays["train"][0]).float() / 255, 32)  # the model's input size
    net = train_greynet(xtr, torch.from_numpy(arrays["train"][1]), epochs=10)
    return arrays, net, task.label_names


def _data(arrays, classes):
    return ra.Data(test=arrays["test"], val=arrays["val"], train=arrays["train"], classes=classes, name="xray-grey")


def test_custom_module_matches_cli(grey, tmp_path):
    arrays, net, classes = grey
    model = ra.Model(net, classes=classes, mean=MEAN, std=STD, input_size=32, channels=1, name="greynet")
    assert model.channels == 1 and model.module(torch.rand(2, 1, 32, 32)).shape == (2, 2)
    run = ra.uap(model, _data(arrays, classes), source="natural", **SETTINGS)
    res = run.result
    assert run.v.shape == (1, 1, 32, 32)
    assert float(run.v.abs().max()) <= res.attack.eps + 1e-6
    # the network is a real classifier and the recorded preprocessing is what it was given
    assert res.metrics.clean_accuracy > 0.6
    assert (res.model.channels, res.model.mean, res.model.std, res.model.input_size) == (1, [0.45], [0.22], 32)
    assert any("preprocessing assumed" in n and "64x64 px resized to 32 px" in n for n in res.notes)
    assert res.data.n == 120 and res.control is not None and res.control.draws == 4

    # the same network as a checkpoint + card, the same images as an npz, through the CLI
    ckpt = tmp_path / "greynet.safetensors"
    save_file(net.state_dict(), str(ckpt))
    (tmp_path / "greynet.json").write_text(json.dumps(dict(name="greynet", arch="greynet:GreyNet", classes=classes,
                                                           input_size=32, mean=MEAN, std=STD, channels=1)))
    npz = tmp_path / "xray.npz"
    np.savez(npz, **{f"{s}_{k}": arr for s, (x, y) in arrays.items() for k, arr in (("images", x[:, 0]),
                                                                                    ("labels", y))})
    out = tmp_path / "cli"
    args = ["uap", "--checkpoint", str(ckpt), "--data", str(npz), "--source", "natural", "--out", str(out)]
    for k, v in SETTINGS.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    cli_v = torch.from_numpy(np.load(out / "uap.npy"))
    assert torch.equal(cli_v.reshape(run.v.shape), run.v), "same model, data, settings and seed: the same v"
    cli = ra.load_result(out / "result.json")
    assert cli.metrics.fooling_rate.k == res.metrics.fooling_rate.k
    assert cli.metrics.clean_accuracy == res.metrics.clean_accuracy
    assert cli.control.fooling_rate.value == res.control.fooling_rate.value
    assert cli.comparison.p_value == res.comparison.p_value
    assert cli.attack.eps == res.attack.eps and cli.model.channels == 1

    saved = run.save(tmp_path / "lib")
    assert sorted(p.name for p in saved.iterdir()) == sorted(p.name for p in out.iterdir())
    assert np.array_equal(np.load(saved / "uap.npy"), np.load(out / "uap.npy"))
    html = res._repr_html_()
    assert "<html" in html.lower() and "greynet" in html
    assert res.to_markdown(tmp_path / "r.md").read_text().startswith("#")


def test_bad_arguments_are_one_line(grey):
    arrays, net, classes = grey
    x, y = arrays["test"]
    cases = [
        (lambda: ra.Data(test=(x[:5], y[:4])), "5 images but 4 labels"),
        (lambda: ra.Data(test=(x.astype(np.float32)[:, :, :, None].repeat(3, 3)[:, :, :, :2], y)), "test: images"),
        (lambda: ra.Data(test=(np.full((3, 1, 8, 8), np.nan, np.float32), [0, 1, 0])), "NaN"),
        (lambda: ra.Data(test=(x, y + 5), classes=classes), "labels range"),
        (lambda: ra.Data(test=(x.astype(np.float32), y)), "outside [0, 1]"),
        (lambda: ra.Model(net, classes=["a"], mean=MEAN, std=STD, input_size=32, channels=1), "two distinct"),
        (lambda: ra.Model(net, classes=classes, mean=MEAN, std=STD, input_size=32, channels=3), "forward pass fails"),
        (lambda: ra.Model(net, classes=classes + ["x"], mean=MEAN, std=STD, input_size=32, channels=1),
         "returns shape (1, 2)"),
    ]
    for make, text in cases:
        with pytest.raises(ra.BadInput) as e:
            make()
        assert text in str(e.value) and "\n" not in str(e.value), (text, str(e.value))
    # classes= names the head's order: the data's labels are mapped to it by name, so a wrong order given
    # here reads the network backwards, which the pre-audit check refuses (not silently inverted)
    model = ra.Model(net, classes=classes[::-1], mean=MEAN, std=STD, input_size=32, channels=1)
    with pytest.raises(ra.BadInput, match="below chance") as e:
        ra.uap(model, _data(arrays, classes), source="train", **SETTINGS)
    assert "--force" in str(e.value)
    forced = ra.uap(model, _data(arrays, classes), source="train", force=True, **SETTINGS)
    assert forced.result.metrics.clean_accuracy < 0.5
    chk = ra.check(model, _data(arrays, classes))
    assert chk.below_chance and chk.data["mapping"] == {classes[0]: classes[0], classes[1]: classes[1]}
    # zeta needs training images; an unknown setting names the argument
    only_test = ra.Data(test=arrays["test"], classes=classes)
    model = ra.Model(net, classes=classes, mean=MEAN, std=STD, input_size=32, channels=1)
    with pytest.raises(ra.BadInput, match="train="):
        ra.uap(model, only_test, source="natural", select="none", controls=0)
    with pytest.raises(ra.BadInput, match="bogus"):
        ra.uap(model, only_test, bogus=1)


def test_report_and_gate_are_library_calls(tmp_path):
    """ra.report / ra.gate on the committed example: the CLI's reading (severity, exit code) from Python."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    cells = sorted((root / "reports/example/cells").glob("*/result.json"))
    cell = next(c for c in cells if (r := ra.load_result(c)).attack.threat_model == "white-box natural"
                and not r.attack.targeted and r.attack.norm == "l2")
    result = ra.load_result(cell)
    md = ra.report(result, tmp_path / "r.md")
    assert md.read_text().startswith("#") and "Vulnerable" in md.read_text()
    assert ra.report(root / "reports/example/audit.json", tmp_path / "a.html").stat().st_size > 10_000
    verdict = ra.gate(result, root / "docs/policy.example.toml")
    assert verdict.exit_code() in (0, 1) and verdict.exit_code() == ra.gate(cell, root / "docs/policy.example.toml")\
        .exit_code()
    with pytest.raises(ra.BadInput):
        ra.gate(result, tmp_path / "missing.toml")
