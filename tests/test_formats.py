"""Model files by content (robaudit.models.formats): one trained torchvision network through every format,
architecture resolution, head layouts, grey stems, MONAI via --arch-kwargs, and a hostile file for each
guard (each with its one-line message and error class)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from robaudit.core.errors import BadInput, UnsafeCheckpoint
from robaudit.data import embedded
from robaudit.models import formats as F

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 64


def _images(split: str, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Real chest X-rays (the embedded pneumonia-mini set), normalised as the test model takes them."""
    with np.load(embedded.NPZ) as d:
        x, y = d[f"{split}_images"], d[f"{split}_labels"].ravel()
    idx = np.random.default_rng(seed).permutation(len(x))[:n]
    t = torch.from_numpy(x[idx]).float().div(255).unsqueeze(1)
    return (t - 0.5) / 0.25, torch.from_numpy(y[idx].astype(np.int64))


def _state(net: nn.Module) -> dict:
    return {k: v.detach().contiguous().clone() for k, v in net.state_dict().items()}


def _load(path, **kw) -> F.NetFile:
    args = dict(arch=None, arch_kwargs=None, num_classes=2, channels=3, trust=False)
    return F.load_net(path, **{**args, **kw})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """torchvision mobilenet_v3_small (keys unlike timm's) after 12 Adam steps on real X-rays, saved in
    every format; its predictions on test images are not constant."""
    torch.manual_seed(0)
    net = torchvision.models.get_model("mobilenet_v3_small", weights=None, num_classes=2)
    x, y = _images("train", 128)
    x = x.expand(-1, 3, -1, -1)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    net.train()
    for step in range(12):
        i = slice((step * 32) % 128, (step * 32) % 128 + 32)
        opt.zero_grad()
        nn.functional.cross_entropy(net(x[i]), y[i]).backward()
        opt.step()
    with torch.no_grad():  # torchvision's batch-norm momentum 0.01 barely moves in 12 steps: recalibrate
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None
        for start in range(0, 128, 64):
            net(x[start:start + 64])
    net.eval()
    xt, yt = _images("test", 48, seed=1)
    xt = xt.expand(-1, 3, -1, -1).contiguous()
    with torch.no_grad():
        ref = net(xt)
    assert len(set(ref.argmax(1).tolist())) == 2, "the fixture model must not predict one class for all"
    d = tmp_path_factory.mktemp("formats")
    paths = {"torch": d / "weights.pth", "safetensors": d / "weights.bin", "torchscript": d / "scripted.pt",
             "torch.export": d / "exported.pt2", "onnx": d / "model.onnx"}
    torch.save({"state_dict": {f"module.{k}": v for k, v in _state(net).items()}}, paths["torch"])
    save_file(_state(net), str(paths["safetensors"]))  # no .safetensors suffix: detected by content
    torch.jit.save(torch.jit.script(net), str(paths["torchscript"]))
    batch = torch.export.Dim("batch", min=1, max=1024)
    torch.export.save(torch.export.export(net, (xt[:2],), dynamic_shapes=({0: batch},)), str(paths["torch.export"]))
    torch.onnx.export(net, (xt[:2],), str(paths["onnx"]), dynamo=False, opset_version=17, input_names=["input"],
                      dynamic_axes={"input": {0: "batch"}})
    return {"net": net, "x": xt, "y": yt, "ref": ref, "paths": paths, "dir": d}


def test_sniff_by_content(trained, tmp_path):
    for fmt, path in trained["paths"].items():
        assert F.sniff(path) == fmt
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    assert F.sniff(legacy) == "torch"
    for n in range(1, 400):  # a safetensors header whose length starts with byte 0x80 is still safetensors
        path = tmp_path / "st.safetensors"
        save_file({"w" * n: torch.ones(1)}, str(path))
        if path.read_bytes()[0] == 0x80:
            assert F.sniff(path) == "safetensors"
            break
    else:
        pytest.fail("no header length with a 0x80 first byte found")


def test_every_format_predicts_the_same(trained):
    """State dict (torch and safetensors), TorchScript, torch.export and ONNX: the same argmax on real
    X-rays, logits within float tolerance, input gradients flow, eval semantics (batch norm statistics
    unchanged by a forward pass)."""
    p, x, ref = trained["paths"], trained["x"], trained["ref"]
    expect = {"torch": "torch state_dict", "safetensors": "safetensors state_dict", "torchscript": "torchscript",
              "torch.export": "torch.export", "onnx": "onnx"}
    for fmt, path in p.items():
        arch = "torchvision:mobilenet_v3_small" if fmt in ("torch", "safetensors") else None
        nf = _load(path, arch=arch, trust=fmt == "torchscript", probe=x[:6])
        assert nf.format == expect[fmt] and nf.sha256 == F.sha256_file(path)
        assert nf.arch == arch and not nf.net.training
        before = _state(nf.net)
        xg = x.clone().requires_grad_(True)
        out = nf.net(xg)
        out.sum().backward()
        assert xg.grad is not None and xg.grad.abs().sum() > 0, fmt
        assert torch.equal(out.argmax(1), ref.argmax(1)), fmt
        assert (out.detach() - ref).abs().max() < 1e-4, fmt
        assert all(torch.equal(before[k], v) for k, v in nf.net.state_dict().items()), fmt
        if fmt == "onnx":
            assert nf.parity is not None and nf.parity < 1e-4 and "parity" in nf.note
        else:
            assert nf.parity is None
        assert F.declared_input(path, F.sniff(path), True) == (3, SIZE if fmt in ("onnx", "torch.export") else None)


def test_bare_arch_resolves_to_the_fitting_library(tmp_path):
    """efficientnet_b0 is a name in both libraries with different keys: a torchvision checkpoint resolves to
    torchvision and says so; a name only torchvision knows is said too; a fit for neither names both."""
    tv = torchvision.models.get_model("efficientnet_b0", weights=None, num_classes=2)
    path = tmp_path / "effnet.safetensors"
    save_file(_state(tv), str(path))
    nf = _load(path, arch="efficientnet_b0")
    assert nf.arch == "torchvision:efficientnet_b0" and nf.format == "safetensors state_dict"
    assert nf.note == "--arch efficientnet_b0: torchvision's key layout fits (timm's does not)"
    with pytest.raises(BadInput, match=r"does not fit arch 'timm:efficientnet_b0': \d+ missing, \d+ unexpected"):
        _load(path, arch="timm:efficientnet_b0")
    with pytest.raises(BadInput, match=r"^checkpoint fits neither timm's 'resnet18' \(.*missing.*\) nor "
                                       r"torchvision's 'resnet18' \(.*missing"):
        _load(path, arch="resnet18")
    with pytest.raises(BadInput, match=r"^checkpoint does not fit arch 'torchvision:mobilenet_v3_small' \(only "
                                       r"torchvision has 'mobilenet_v3_small'\): \d+ missing"):
        _load(path, arch="mobilenet_v3_small")
    same = tmp_path / "resnet18.pt"  # torchvision's resnet18 keys are timm's: timm, tried first, is used
    torch.save(_state(torchvision.models.get_model("resnet18", weights=None, num_classes=2)), same)
    nf = _load(same, arch="resnet18")
    assert nf.arch == "timm:resnet18" and nf.note == "--arch resnet18: timm's key layout fits (timm is tried first)"
    with pytest.raises(BadInput, match="unknown architecture 'efficientnet_bo'; did you mean"):
        _load(path, arch="efficientnet_bo")
    with pytest.raises(BadInput, match="no architecture"):
        _load(path)


def test_head_layouts_are_mapped(tmp_path):
    """A Sequential(Dropout, Linear) head read into a plain Linear (timm fc.1.* -> fc.*), a plain Linear
    read into torchvision's Sequential head (classifier.* -> classifier.1.*), and a wrong class count."""
    import timm

    torch.manual_seed(1)
    net = timm.create_model("resnet10t", num_classes=2)
    net.fc = nn.Sequential(nn.Dropout(0.2), nn.Linear(net.fc.in_features, 2))
    net.eval()
    path = tmp_path / "seqhead.pt"
    torch.save(net.state_dict(), path)
    nf = _load(path, arch="timm:resnet10t")
    assert nf.note == "head fc.1.* read as fc.*"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(nf.net(x), net(x), atol=1e-5)

    tv = torchvision.models.get_model("efficientnet_b0", weights=None, num_classes=2)
    tv.classifier = nn.Linear(1280, 2)  # torchvision's own head is Sequential(Dropout, Linear): classifier.1
    tv.eval()
    path = tmp_path / "plainhead.safetensors"
    save_file(_state(tv), str(path))
    nf = _load(path, arch="torchvision:efficientnet_b0")
    assert nf.note == "head classifier.* read as classifier.1.*"
    with torch.no_grad():
        assert torch.allclose(nf.net(x), tv(x), atol=1e-5)
    with pytest.raises(BadInput, match=r"^checkpoint has a 2-class head but the model expects 3 classes "
                                       r"\(classifier.1.weight \(2, 1280\)\)"):
        _load(path, arch="torchvision:efficientnet_b0", num_classes=3)


def test_one_channel_models(tmp_path):
    """A torchvision net whose stem was replaced by a 1-channel conv, and a timm in_chans=1 net: both load with
    channels=1 and take grey images; the file says it is 1-channel."""
    import timm

    x, _ = _images("test", 4)
    tv = torchvision.models.get_model("mobilenet_v3_small", weights=None, num_classes=2)
    old = tv.features[0][0]
    tv.features[0][0] = nn.Conv2d(1, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False)
    tv.eval()
    path = tmp_path / "grey_tv.safetensors"
    save_file(_state(tv), str(path))
    assert F.input_channels(path, "safetensors", False) == 1
    nf = _load(path, arch="torchvision:mobilenet_v3_small", channels=1)
    assert "first conv features.0.0 takes 1 channel" in nf.note
    with torch.no_grad():
        assert torch.allclose(nf.net(x), tv(x), atol=1e-5)
    with pytest.raises(BadInput, match=r"wrongly shaped.*features.0.0.weight: checkpoint \(16, 1, 3, 3\).*"
                                       r"pass --channels 1"):
        _load(path, arch="torchvision:mobilenet_v3_small", channels=3)

    tm = timm.create_model("resnet10t", num_classes=2, in_chans=1).eval()
    path = tmp_path / "grey_timm.pt"
    torch.save(tm.state_dict(), path)
    assert F.input_channels(path, "torch", False) == 1
    nf = _load(path, arch="resnet10t", channels=1)
    assert nf.arch == "timm:resnet10t"
    with torch.no_grad():
        assert torch.allclose(nf.net(x), tm(x), atol=1e-5)


def test_monai_densenet_through_arch_kwargs(tmp_path):
    from monai.networks.nets import DenseNet121

    kwargs = {"spatial_dims": 2, "in_channels": 1, "out_channels": 2}
    torch.manual_seed(2)
    net = DenseNet121(**kwargs).eval()
    path = tmp_path / "monai.pt"
    torch.save(net.state_dict(), path)
    nf = _load(path, arch="monai.networks.nets:DenseNet121", arch_kwargs=kwargs, channels=1)
    assert nf.arch == "monai.networks.nets:DenseNet121" and nf.format == "torch state_dict"
    x, _ = _images("test", 3)
    with torch.no_grad():
        assert torch.allclose(nf.net(x), net(x), atol=1e-5)
    with pytest.raises(BadInput, match=r"cannot be built with .*TypeError"):
        _load(path, arch="monai.networks.nets:DenseNet121", arch_kwargs={"spatial_dims": 2, "colour": 1})
    with pytest.raises(BadInput, match=r"cannot import 'Nope' from 'monai.networks.nets'"):
        _load(path, arch="monai.networks.nets:Nope")


def test_own_factory_gets_num_classes_unless_given(tmp_path, monkeypatch):
    (tmp_path / "my_nets_for_formats.py").write_text(
        "from torch import nn\n"
        "def small(num_classes, width=4):\n"
        "    return nn.Sequential(nn.Conv2d(3, width, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),\n"
        "                         nn.Linear(width, num_classes))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    net = nn.Sequential(nn.Conv2d(3, 6, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 2))
    path = tmp_path / "small.safetensors"
    save_file(_state(net), str(path))
    nf = _load(path, arch="my_nets_for_formats:small", arch_kwargs={"width": 6})
    assert nf.net[3].out_features == 2 and nf.arch == "my_nets_for_formats:small"
    with pytest.raises(BadInput, match=r"^checkpoint does not fit arch 'my_nets_for_formats:small': .*wrongly shaped"):
        _load(path, arch="my_nets_for_formats:small")  # width 4: the checkpoint's conv has 6 channels
    with pytest.raises(BadInput, match="has a 2-class head but the model expects 3 classes"):
        _load(path, arch="my_nets_for_formats:small", arch_kwargs={"width": 6}, num_classes=3)


def test_own_code_is_imported_only_when_asked(tmp_path):
    """Loading robaudit's format code imports no user package (monai here); ``--arch pkg:factory`` does."""
    code = ("import sys, robaudit.models.formats as F; print('monai' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.stdout.strip() == "False", out.stderr[-500:]


def test_pickle_needs_trust(tmp_path):
    """A pickle whose loading would run code (here: create a file) is refused without trust and runs nothing;
    a pickled nn.Module with trust is used as it is."""
    marker = tmp_path / "pwned"

    class Hostile:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "hostile.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": Hostile()}, path, pickle_protocol=4)
    with pytest.raises(UnsafeCheckpoint, match=r"contains pickled code.*--trust-checkpoint"):
        _load(path, arch="resnet10t")
    assert not marker.exists()

    import timm

    net = timm.create_model("resnet10t", num_classes=2).eval()
    whole = tmp_path / "whole.pt"
    torch.save(net, whole)
    with pytest.raises(UnsafeCheckpoint, match="pickled code"):
        _load(whole)
    nf = _load(whole, trust=True)
    assert nf.format == "pickled module" and nf.arch is None and not nf.net.training


def test_torchscript_needs_trust(trained):
    with pytest.raises(UnsafeCheckpoint, match=r"is TorchScript, which is code.*--trust-checkpoint if you trust"):
        _load(trained["paths"]["torchscript"])
    assert F.input_channels(trained["paths"]["torchscript"], "torchscript", False) is None


def _rewrite_zip(src: Path, dst: Path, edit) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = edit(info.filename, zin.read(info.filename))
            zout.writestr(info, data)


def test_hostile_torch_export_archives(trained, tmp_path):
    """A .pt2 whose graph calls a non-operator (torch.os.system) or that pickles an object is refused
    without trust, before anything in it runs."""
    src = trained["paths"]["torch.export"]
    calls = tmp_path / "calls.pt2"
    _rewrite_zip(src, calls, lambda n, b: b.replace(b'"torch.ops.aten.hardswish_.default"', b'"torch.os.system"')
                 if n.endswith("models/model.json") else b)
    with pytest.raises(UnsafeCheckpoint, match=r"calls 'torch.os.system', which is not a torch operator"):
        _load(calls)

    marker = tmp_path / "pwned"

    class Hostile:
        def __reduce__(self):
            return (Path.touch, (marker,))

    buf = io.BytesIO()
    torch.save((Hostile(),), buf, pickle_protocol=4)
    pickled = tmp_path / "pickled.pt2"
    _rewrite_zip(src, pickled, lambda n, b: buf.getvalue() if "sample_inputs" in n else b)
    with pytest.raises(UnsafeCheckpoint, match=r"holds 'data/sample_inputs/model.pt', which contains pickled code"):
        _load(pickled)
    for read in (F.declared_input, F.input_channels):  # what the loader asks before load_net: the same guard
        with pytest.raises(UnsafeCheckpoint, match="contains pickled code"):
            read(pickled, "torch.export", False)
    assert not marker.exists()
    assert F.declared_input(src, "torch.export", False) == (3, SIZE)

    def pickled_weight(name, data):
        if not name.endswith("_weights_config.json"):
            return data
        cfg = json.loads(data)
        next(iter(cfg["config"].values()))["use_pickle"] = True
        return json.dumps(cfg).encode()

    flagged = tmp_path / "flagged.pt2"
    _rewrite_zip(src, flagged, pickled_weight)
    with pytest.raises(UnsafeCheckpoint, match=r"holds 'features.0.0.weight' as a pickled object"):
        _load(flagged)


def test_torch_export_in_training_mode_runs_in_eval(tmp_path):
    """A program exported from a net in train mode: batch norm uses its running statistics, dropout is off,
    and nothing in the model changes on a forward pass."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.5), nn.Flatten(),
                        nn.Linear(8 * 14 * 14, 2))
    with torch.no_grad():
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2)
    path = tmp_path / "train_mode.pt2"
    batch = torch.export.Dim("batch", min=1, max=64)
    torch.export.save(torch.export.export(net.train(), (torch.randn(2, 3, 16, 16),), dynamic_shapes=({0: batch},)),
                      str(path))
    nf = _load(path)
    assert nf.note == "exported in training mode: batch norm and dropout switched to eval"
    x = torch.randn(5, 3, 16, 16)
    before = _state(nf.net)
    with torch.no_grad():
        assert torch.allclose(nf.net(x), net.eval()(x), atol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in nf.net.state_dict().items())


def _onnx_with_external_data(trained, tmp_path: Path) -> tuple[Path, object]:
    import onnx

    model = onnx.load(str(trained["paths"]["onnx"]))
    path = tmp_path / "ext" / "model.onnx"
    path.parent.mkdir()
    onnx.save_model(model, str(path), save_as_external_data=True, location="weights.bin", size_threshold=0)
    return path, onnx


def test_onnx_external_data_outside_its_folder_refused(trained, tmp_path, monkeypatch):
    path, onnx = _onnx_with_external_data(trained, tmp_path)
    nf = _load(path, probe=trained["x"][:4])  # beside the model: read
    assert torch.equal(nf.net(trained["x"]).argmax(1), trained["ref"].argmax(1))

    def no_read(*a, **k):
        raise AssertionError("external data read before the locations were checked")

    monkeypatch.setattr(onnx, "load_external_data_for_model", no_read)
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\0" * 4096)
    for loc in ("../secret.bin", str(secret), "sub/../../secret.bin"):
        model = onnx.load(str(path), load_external_data=False)
        for t in model.graph.initializer:
            for e in t.external_data:
                if e.key == "location":
                    e.value = loc
        hostile = path.with_name("hostile.onnx")
        onnx.save_model(model, str(hostile))
        with pytest.raises(BadInput, match=r"points outside the model's folder \(external data location"):
            _load(hostile)
    (path.parent / "weights.bin").unlink()
    (path.parent / "weights.bin").symlink_to(secret)  # a link beside the model to a file elsewhere
    with pytest.raises(BadInput, match=r"points outside the model's folder \(external data location 'weights.bin'"):
        _load(path)


def test_size_limit(trained, monkeypatch):
    monkeypatch.setenv("ROBAUDIT_MAX_MODEL_BYTES", "100000")
    over = r"is \d+\.\d MiB, over robaudit's limit of 97.7 KiB.*ROBAUDIT_MAX_MODEL_BYTES"
    for path in trained["paths"].values():
        with pytest.raises(BadInput, match=over):
            F.sniff(path)
    monkeypatch.setenv("ROBAUDIT_MAX_MODEL_BYTES", "lots")
    with pytest.raises(BadInput, match="ROBAUDIT_MAX_MODEL_BYTES='lots' is not a positive number"):
        F.sniff(trained["paths"]["onnx"])
    monkeypatch.delenv("ROBAUDIT_MAX_MODEL_BYTES")
    assert F.max_model_bytes() == F.MAX_MODEL_BYTES == 4 << 30


def test_zip_bomb_refused(tmp_path, monkeypatch):
    """A small zip that unpacks past the limit (torch's own archives are stored uncompressed)."""
    path = tmp_path / "bomb.pt"
    torch.save({"w": torch.zeros(4)}, path)
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("bomb/data/9", b"\0" * 400_000)
    monkeypatch.setenv("ROBAUDIT_MAX_MODEL_BYTES", "200000")
    assert path.stat().st_size < 200_000
    with pytest.raises(BadInput, match=r"unpacks to 3\d\d\.\d KiB, over robaudit's limit of 195.3 KiB"):
        _load(path, arch="resnet10t")


def test_onnx_external_data_counts_towards_the_limit(trained, tmp_path, monkeypatch):
    path, _ = _onnx_with_external_data(trained, tmp_path)
    monkeypatch.setenv("ROBAUDIT_MAX_MODEL_BYTES", str(path.stat().st_size + 1000))
    with pytest.raises(BadInput, match="with its external data is .* over robaudit's limit"):
        _load(path)


def test_onnx_unsupported_op_named(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3, 1, 1])
    node = helper.make_node("GlobalLpPool", ["x"], ["y"], p=2)
    model = helper.make_model(helper.make_graph([node], "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "lppool.onnx"
    onnx.save_model(model, str(path))
    with pytest.raises(BadInput, match=r"^the ONNX graph uses GlobalLpPool \(opset 17\), which .* does not support "
                                       r"\(re-export with torch.onnx.export\(..., dynamo=False, opset_version=17\)\)"):
        _load(path)


def _opset20_graph(shape: list[int]):
    """What torch.onnx.export(..., dynamo=True) writes for conv -> relu -> mean pool -> flatten -> linear:
    opset 20, ReduceMean-18 (axes as an input), Reshape with allowzero=1."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(4)
    inits = [numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(size=4).astype(np.float32), "b"),
             numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "axes"),
             numpy_helper.from_array(np.array(shape, dtype=np.int64), "shape"),
             numpy_helper.from_array(rng.normal(size=(2, 4)).astype(np.float32), "fc_w"),
             numpy_helper.from_array(rng.normal(size=2).astype(np.float32), "fc_b")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("ReduceMean", ["r", "axes"], ["m"], keepdims=1),
             helper.make_node("Reshape", ["m", "shape"], ["f"], allowzero=1),
             helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], transB=1)]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])
    return helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits), ir_version=10,
                             opset_imports=[helper.make_opsetid("", 20)])


def test_onnx_dynamo_style_opset20_graph(tmp_path):
    """Supported honestly: allowzero dropped (no 0 in the shape), opset 20 converted to 17, parity checked;
    with a 0 in the shape (where allowzero matters) it is refused naming the op."""
    import onnx
    import onnxruntime

    path = tmp_path / "dynamo.onnx"
    onnx.save_model(_opset20_graph([-1, 4]), str(path))
    nf = _load(path)
    assert "ONNX opset 20 converted to 17" in nf.note and nf.parity < 1e-5
    x = torch.randn(5, 3, 8, 8)
    ref = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        assert np.allclose(nf.net(x).numpy(), ref, atol=1e-5)
    zero = tmp_path / "allowzero.onnx"
    onnx.save_model(_opset20_graph([0, 4]), str(zero))
    with pytest.raises(BadInput, match=r"^the ONNX graph uses .*Reshape with allowzero=1 \(opset 20\), which "
                                       r".* \(re-export"):
        _load(zero)


def test_onnx_parity_refused_with_the_figure(trained, monkeypatch):
    """A converter that gets the numbers wrong is caught by the onnxruntime comparison."""
    import onnx2torch

    real = onnx2torch.convert

    class Off(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x) + 0.05

    monkeypatch.setattr(onnx2torch, "convert", lambda m: Off(real(m)))
    with pytest.raises(BadInput, match=r"differs from onnxruntime by 0.05 \(max abs logit\).*tolerance 0.001"):
        _load(trained["paths"]["onnx"], probe=trained["x"][:4])


def test_onnx_input_declared_by_the_file(trained):
    assert F.onnx_input_size(trained["paths"]["onnx"]) == SIZE
    assert F.input_channels(trained["paths"]["onnx"], "onnx", False) == 3


def test_onnx_without_the_extra_gives_the_install_hint(trained, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx2torch", None)
    with pytest.raises(BadInput, match=r"needs onnx, onnxruntime and onnx2torch.*pip install 'robaudit\[onnx\]'"):
        _load(trained["paths"]["onnx"])
    monkeypatch.setitem(sys.modules, "onnx", None)
    assert F.sniff(trained["paths"]["onnx"]) == "onnx"  # recognised without onnx itself, so the hint is right
    with pytest.raises(BadInput, match=r"\(onnx is not installed\).*pip install 'robaudit\[onnx\]'"):
        F.onnx_input_size(trained["paths"]["onnx"])


def test_garbage_and_truncated_files(trained, tmp_path):
    """Random bytes, and every format cut in half: BadInput, never a traceback (torchscript with trust)."""
    rng = np.random.default_rng(0)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(rng.bytes(5000))
    cases = [junk]
    for fmt, path in trained["paths"].items():
        cut = tmp_path / f"cut_{fmt}{path.suffix}"
        cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        cases.append(cut)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    cases.append(empty)
    for path in cases:
        with pytest.raises(BadInput) as err:
            _load(path, arch="torchvision:mobilenet_v3_small", trust=True)
        assert "\n" not in str(err.value), str(err.value)
    with pytest.raises(BadInput, match="does not exist"):
        F.sniff(tmp_path / "nothing.pt")

