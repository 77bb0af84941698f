"""Your model as you hold it: a torchvision network trained by its own script, with its own mean/std and a head
whose class order is not the folders' alphabetical one, read as a state_dict, TorchScript, torch.export and
ONNX; preprocessing and class order checked before the audit and recorded in the result.

The model is trained here (shufflenet_v2_x0_5: keys unlike timm's; ~10 s on one core) on the embedded chest
X-rays written out as a folder of grey PNGs, as a hospital group's export would be."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import robaudit as ra
from robaudit.cli import main

MEAN, STD, SIZE = 0.5, 0.25, 64
HEAD = ["pneumonia", "normal"]  # the head's order; the folders sort as normal/, pneumonia/
FLAGS = ["--mean", str(MEAN), "--std", str(STD), "--input-size", str(SIZE)]


@pytest.fixture(scope="module")
def xray_folder(tmp_path_factory, one_thread):
    """The embedded chest X-rays as <root>/{train,val,test}/<class>/*.png, 8-bit grey."""
    d = ra.load_data("pneumonia-mini")
    root = tmp_path_factory.mktemp("byo") / "xray"
    for split in ("train", "val", "test"):
        x, y = d.tensors(split)
        for i, (img, lab) in enumerate(zip(x, y, strict=True)):
            p = root / split / d.classes[int(lab)] / f"{i:04d}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray((img[0].numpy() * 255).round().astype(np.uint8), mode="L").save(p)
    return root


@pytest.fixture(scope="module")
def files(xray_folder):
    """One trained torchvision network, saved the four ways users hold models."""
    d = ra.load_data("pneumonia-mini")
    torch.manual_seed(0)
    net = torchvision.models.shufflenet_v2_x0_5(num_classes=2)
    x, y = d.tensors("train", size=SIZE)
    y = 1 - y  # trained with the head order HEAD
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    for _ in range(3):
        net.train()
        for i in torch.randperm(len(x)).split(32):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net((x[i] - MEAN) / STD), y[i]).backward()
            opt.step()
    net.eval()
    out = xray_folder.parent
    ex = torch.rand(2, 3, SIZE, SIZE)
    paths = {"state_dict": out / "shuffle.pt", "torchscript": out / "shuffle_ts.pt", "onnx": out / "shuffle.onnx",
             "torch.export": out / "shuffle.pt2"}
    torch.save(net.state_dict(), paths["state_dict"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(net, ex).save(str(paths["torchscript"]))
        torch.onnx.export(net, (ex,), str(paths["onnx"]), dynamo=False, opset_version=17, input_names=["x"],
                          dynamic_axes={"x": {0: "n"}})
        torch.export.save(torch.export.export(net, (ex,), dynamic_shapes=({0: torch.export.Dim("n", max=1024)},)),
                          str(paths["torch.export"]))
    return paths


class Ran:
    """One in-process ``robaudit`` call: exit code, stdout, and stdout + stderr as ``output``."""

    def __init__(self, capsys, args):
        self.exit_code = main([str(a) for a in args])
        cap = capsys.readouterr()
        self.stdout, self.output = cap.out, cap.out + cap.err


def _check(capsys, path, *extra, data=None):
    r = Ran(capsys, ["models", "check", "--checkpoint", path, *(["--data", data] if data else []), "--json", *extra])
    return r, (json.loads(r.stdout) if r.stdout.strip().startswith("{") else None)


def test_four_formats_give_identical_predictions(files, xray_folder):
    preds, parity = {}, None
    for fmt, path in files.items():
        model = ra.load_model(path, arch="torchvision:shufflenet_v2_x0_5" if fmt == "state_dict" else None,
                              data=str(xray_folder), mean=MEAN, std=STD, input_size=SIZE, classes=HEAD,
                              trust_checkpoint=fmt == "torchscript")
        chk = ra.check(model, str(xray_folder))
        preds[fmt] = chk.predictions
        assert chk.model["format"].endswith(fmt) or chk.model["format"] == f"torch {fmt}"
        assert chk.clean_accuracy > 0.65 and not chk.below_chance and chk.warnings == []
        assert model.preprocessing()["source"]["mean"] == "flag"
        if fmt == "onnx":
            parity = model.card.parity
    first = preds["state_dict"]
    for fmt, p in preds.items():
        assert torch.equal(p, first), fmt
    assert parity is not None and 0 <= parity < 1e-3


def test_onnx_parity_and_preprocessing_in_the_result(files, xray_folder, tmp_path, capsys):
    out = tmp_path / "run"
    r = Ran(capsys, ["uap", "--checkpoint", str(files["onnx"]), "--data", str(xray_folder), *FLAGS,
                                 "--classes", ",".join(HEAD), "--source", "natural", "--budget", "64",
                                 "--select-limit", "32", "--eval-limit", "64", "--controls", "2", "--out", str(out),
                                 "--no-report"])
    assert r.exit_code == 0, r.output
    res = json.loads((out / "result.json").read_text())
    m = res["model"]
    assert m["format"] == "onnx" and 0 <= m["onnx_parity"] < 1e-3
    pre = m["preprocessing"]
    assert (pre["mean"], pre["std"], pre["input_size"], pre["classes"]) == ([MEAN] * 3, [STD] * 3, SIZE, HEAD)
    assert pre["source"]["mean"] == "flag" and pre["source"]["classes"] == "flag"
    assert pre["source"]["class_mapping"] == "by name"
    assert any("data labels mapped to the outputs by name" in n and "ONNX parity" in n for n in res["notes"])
    # the folder's images are grey: the photo source was greyscaled for it
    assert ra.load_data(str(xray_folder)).describe()["grey"] is True


def test_head_order_is_honoured_by_name_and_a_backwards_read_is_refused(files, xray_folder, tmp_path, capsys):
    ckpt = files["state_dict"]
    arch = ["--arch", "torchvision:shufflenet_v2_x0_5"]
    r, right = _check(capsys, ckpt, *arch, *FLAGS, "--classes", ",".join(HEAD), data=xray_folder)
    assert r.exit_code == 0, r.output
    assert right["classes"] == HEAD and right["data"]["counts"] == {"pneumonia": 150, "normal": 150}
    # without --classes the folders' order is assumed (said), and the model reads backwards: below chance
    r, wrong = _check(capsys, ckpt, *arch, *FLAGS, data=xray_folder)
    assert r.exit_code == 1
    assert wrong["below_chance"] and abs(wrong["clean_accuracy"] - (1 - right["clean_accuracy"])) < 1e-9
    assert wrong["model"]["provenance"]["classes"] == "data"
    # an audit refuses it with the figures (exit 2), unless forced
    args = ["uap", "--checkpoint", str(ckpt), *arch, "--data", str(xray_folder), *FLAGS, "--source", "natural",
            "--budget", "32", "--select-limit", "32", "--eval-limit", "48", "--controls", "1", "--no-report"]
    r = Ran(capsys, [*args, "--out", str(tmp_path / "refused")])
    assert r.exit_code == 2 and "below chance" in r.output and "--force" in r.output and "Traceback" not in r.output
    r = Ran(capsys, [*args, "--force", "--out", str(tmp_path / "forced")])
    assert r.exit_code == 0, r.output
    # names that do not match the data's are an error, not a re-ordering by count
    r, _ = _check(capsys, ckpt, *arch, *FLAGS, "--classes", "sick,healthy", data=xray_folder)
    assert r.exit_code == 2 and "class names differ" in r.output


def test_wrong_normalisation_is_visible(files, xray_folder, capsys):
    ckpt, arch = files["state_dict"], ["--arch", "torchvision:shufflenet_v2_x0_5", "--classes", ",".join(HEAD)]
    r, d = _check(capsys, ckpt, *arch, "--input-size", str(SIZE), "--mean", "0", "--std", "1", data=xray_folder)
    assert r.exit_code == 0
    assert max(d["predicted_share"]) == 1.0 and any("collapse" in w for w in d["warnings"])
    # nothing given: torchvision's ImageNet statistics are assumed, said in one line and recorded as a default
    r, d = _check(capsys, ckpt, *arch, "--input-size", str(SIZE), data=xray_folder)
    assert "assumed mean 0.485,0.456,0.406" in r.output and "--mean --std" in r.output
    assert d["model"]["provenance"]["mean"].startswith("default") and d["model"]["mean"] == [0.485, 0.456, 0.406]


def test_partial_card_is_completed_and_named(files, xray_folder, tmp_path, capsys):
    ckpt = tmp_path / "mine.pt"
    ckpt.write_bytes(files["state_dict"].read_bytes())
    (tmp_path / "mine.json").write_text(json.dumps({"arch": "torchvision:shufflenet_v2_x0_5", "classes": HEAD,
                                                    "mean": [MEAN], "std": [STD]}))
    r, d = _check(capsys, ckpt, data=xray_folder)
    assert r.exit_code == 0, r.output
    assert d["model"]["provenance"] == {"mean": "card", "std": "card", "classes": "card", "channels": "model file",
                                        "input_size": "default (torchvision's ImageNet)", "class_mapping": "by name"}
    assert "assumed input_size 224" in r.output
    # a card field of the wrong type: fix the card or pass the flag (not "retrain")
    (tmp_path / "mine.json").write_text(json.dumps({"arch": "torchvision:shufflenet_v2_x0_5", "classes": HEAD,
                                                    "input_size": "big"}))
    r, _ = _check(capsys, ckpt, data=xray_folder)
    assert r.exit_code == 2 and "input_size" in r.output and "retrain" not in r.output
    assert "--input-size" in r.output


@pytest.mark.parametrize("args, exit_code, says", [
    (["--arch-kwargs", "{not json"], 2, "arch-kwargs"),
    (["--mean", "0.5,0.5"], 2, "one value per channel"),
    (["--channels", "2"], 2, "channels"),
    (["--classes", "only"], 2, "at least two"),
])
def test_bad_model_flags_are_one_line(files, xray_folder, args, exit_code, says, capsys):
    r, _ = _check(capsys, files["state_dict"], "--arch", "torchvision:shufflenet_v2_x0_5", *args, data=xray_folder)
    assert r.exit_code == exit_code and says in r.output and "Traceback" not in r.output


def test_model_file_failures_are_one_line(files, xray_folder, capsys):
    # weights without an architecture
    r, _ = _check(capsys, files["state_dict"], *FLAGS, data=xray_folder)
    assert r.exit_code == 2 and "--arch" in r.output
    # TorchScript is code: refused without --trust-checkpoint, and the message says so
    r, _ = _check(capsys, files["torchscript"], *FLAGS, data=xray_folder)
    assert r.exit_code == 2 and "TorchScript" in r.output and "--trust-checkpoint" in r.output
    # a model file that names no classes, without data
    r, _ = _check(capsys, files["onnx"])
    assert r.exit_code == 2 and "--classes" in r.output


def test_data_show_and_library_describe(xray_folder, capsys):
    r = Ran(capsys, ["data", "show", str(xray_folder), "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["classes"] == ["normal", "pneumonia"] and d["grey"] and d["channels"] == 1
    assert d["splits"]["test"] == {**d["splits"]["test"], "n": 300, "per_class": {"normal": 150, "pneumonia": 150},
                                   "size": [64, 64]}
    assert 0 <= d["splits"]["train"]["min"] < d["splits"]["train"]["max"] <= 1


def test_too_few_selection_images_is_a_warning(files, tmp_path, xray_folder, capsys):
    flat = tmp_path / "flat"  # no split folders: 70/10/20 of 120 images leaves 12 to choose v on
    for cls in ("normal", "pneumonia"):
        (flat / cls).mkdir(parents=True)
        for p in sorted((xray_folder / "test" / cls).glob("*.png"))[:60]:
            (flat / cls / p.name).write_bytes(p.read_bytes())
    r = Ran(capsys, ["uap", "--checkpoint", str(files["onnx"]), "--data", str(flat), *FLAGS, "--classes",
                                 ",".join(HEAD), "--source", "natural", "--budget", "32", "--controls", "1",
                                 "--out", str(tmp_path / "run"), "--no-report"])
    assert r.exit_code == 0, r.output
    assert "only 12 val images" in r.output


def test_recipe_checkpoints_carry_the_model_options(files, xray_folder):
    from robaudit.auditing.recipes import AuditRecipe

    recipe = AuditRecipe(name="mine", sources=["natural"], norms=["linf"], zetas=[0.04], methods=["fgsm"],
                         checkpoints=[{"path": str(files["state_dict"]), "arch": "torchvision:shufflenet_v2_x0_5",
                                       "data": str(xray_folder), "mean": [MEAN], "std": [STD], "input_size": SIZE,
                                       "classes": HEAD}])
    (spec,) = recipe.cells(lambda m: HEAD)
    assert (spec.checkpoint, spec.mean, spec.input_size, spec.classes) == (str(files["state_dict"]), (MEAN,), SIZE,
                                                                           HEAD)
    with pytest.raises(Exception, match="path"):
        AuditRecipe(name="x", checkpoints=[{"path": "a.pt", "checkpoint": "b.pt"}])


def test_random_init_twin_of_your_architecture(files, xray_folder, capsys):
    r = Ran(capsys, ["train", "shuffle_twin", "--like", files["state_dict"], "--init", "random", "--data",
                     xray_folder, "--arch", "torchvision:shufflenet_v2_x0_5", *FLAGS, "--classes", ",".join(HEAD),
                     "--epochs", "1", "--train-limit", "160", "--json"])
    assert r.exit_code == 0, r.output
    card = json.loads(r.stdout)
    assert (card["arch"], card["init"], card["transfer"], card["classes"]) == ("torchvision:shufflenet_v2_x0_5",
                                                                              "random", "scratch", HEAD)
    assert (card["mean"], card["input_size"], card["twin_of"]["name"]) == ([MEAN] * 3, SIZE, "shuffle")
    # the stored twin is a zoo-like model: it loads by name and audits on the same folder, in the same order
    r, d = _check(capsys, "shuffle_twin", data=xray_folder)
    assert r.exit_code in (0, 1), r.output
    assert d["model"]["arch"] == "torchvision:shufflenet_v2_x0_5" and d["classes"] == HEAD
    r = Ran(capsys, ["train", "x", "--like", files["torchscript"], "--init", "random", "--trust-checkpoint",
                     "--data", xray_folder, *FLAGS])
    assert r.exit_code == 2 and "cannot be rebuilt" in r.output


def test_monai_network_through_arch_kwargs(xray_folder, tmp_path, capsys):
    pytest.importorskip("monai")
    from monai.networks.nets import DenseNet121

    torch.manual_seed(0)
    net = DenseNet121(spatial_dims=2, in_channels=1, out_channels=2)
    torch.save(net.state_dict(), tmp_path / "monai.pt")
    kwargs = '{"spatial_dims": 2, "in_channels": 1, "out_channels": 2}'
    r, d = _check(capsys, tmp_path / "monai.pt", "--arch", "monai.networks.nets:DenseNet121", "--arch-kwargs", kwargs,
                  "--input-size", "32", "--mean", "0.5", "--std", "0.25", "--eval-limit", "16", data=xray_folder)
    assert r.exit_code in (0, 1), r.output
    assert d["model"]["channels"] == 1 and d["model"]["provenance"]["channels"] == "model file"
    assert d["model"]["arch"] == "monai.networks.nets:DenseNet121" and d["n"] == 16


def test_default_photos_without_a_data_root_are_the_bundled_set(files, xray_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ROBAUDIT_DATA", str(tmp_path))  # a data root without imagenet/
    r = Ran(capsys, ["uap", "--checkpoint", files["onnx"], "--data", xray_folder, *FLAGS, "--classes", ",".join(HEAD),
                     "--budget", "32", "--select-limit", "32", "--eval-limit", "48", "--controls", "1",
                     "--out", tmp_path / "run", "--no-report"])
    assert r.exit_code == 0, r.output
    assert "the photo source is the bundled 'natural' set" in r.output
    assert json.loads((tmp_path / "run" / "result.json").read_text())["attack"]["source"] == "natural"
