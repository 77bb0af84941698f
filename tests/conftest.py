"""Shared fixtures: the real data root (../shared/data or $ROBAUDIT_DATA) and an isolated home.

Without that data root (a contributor's clone), the suite runs on the data embedded in robaudit
(pneumonia-mini, bundled photos): the modules in SHARED_ONLY and every test asking for ``data_root``
or ``trained`` skip with a one-line reason.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

REPO = Path(__file__).resolve().parents[1]


def _data_root() -> Path:
    env = os.environ.get("ROBAUDIT_DATA")
    return Path(env) if env else (REPO.parent / "shared" / "data")


DATA_ROOT = _data_root()
HAVE_SHARED = DATA_ROOT.is_dir() and ((DATA_ROOT / "MANIFEST.md").exists() or any(DATA_ROOT.glob("*.npz")))
NO_SHARED = f"needs the shared real data (../shared/data or $ROBAUDIT_DATA; none at {DATA_ROOT})"

#: test modules built on the shared data (its tasks, its ImageNet photos, models trained on them)
SHARED_ONLY = {"test_audit", "test_cli", "test_data", "test_distributed", "test_gate", "test_models",
               "test_persample", "test_ray_executor", "test_reliability", "test_report", "test_report_browser",
               "test_strength", "test_train", "test_uap_engine", "test_uap_run"}


def pytest_collection_modifyitems(config, items):
    if HAVE_SHARED:
        return
    skip = pytest.mark.skip(reason=NO_SHARED)
    for item in items:
        if item.module.__name__.rsplit(".", 1)[-1] in SHARED_ONLY:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def data_root() -> Path:
    if not HAVE_SHARED:
        pytest.skip(NO_SHARED)
    return DATA_ROOT


@pytest.fixture(scope="session", autouse=True)
def _robaudit_env(tmp_path_factory):
    """Point the product at the real data (or at no data root: the embedded data) and a per-session model
    store (unless CI set one)."""
    if HAVE_SHARED:
        os.environ["ROBAUDIT_DATA"] = str(DATA_ROOT)
    else:
        os.environ.pop("ROBAUDIT_DATA", None)
    if "ROBAUDIT_HOME" not in os.environ:
        os.environ["ROBAUDIT_HOME"] = str(tmp_path_factory.mktemp("robaudit-home"))
    yield


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's torch work on one thread: per-image loops on tiny inputs are dominated by thread start-up."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tiny_model():
    """A small real timm CNN (random init, 3 classes) that owns its normalisation, in eval mode."""
    import timm
    import torch

    from robaudit.models.normalize import Normalized

    torch.manual_seed(0)
    net = timm.create_model("resnet10t", pretrained=False, num_classes=3)
    return Normalized(net, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)).eval()


#: CPU-sized training recipes shared by the acceptance tests (trained once per session)
TRAIN_RECIPES = {
    "pneumonia_tf_efficientnet_lite0": dict(epochs=2, image_size=64, train_limit=1500, balanced=True),
    "pneumonia_tf_efficientnet_lite0_random": dict(epochs=2, image_size=64, train_limit=1500, balanced=True),
}


@pytest.fixture(scope="session")
def trained(data_root):
    """``trained(name)`` trains a zoo model once per session (CPU-sized recipe) and returns its card."""
    cards = {}

    def get(name: str):
        from robaudit.models.store import is_trained, model_dir, read_card
        from robaudit.models.train import TrainConfig, train_model

        if name not in cards:
            want = TRAIN_RECIPES[name]
            card = read_card(model_dir(name) / "card.json") if is_trained(name) else None
            if card is not None and all(card.train.get(k) == v for k, v in want.items()):
                cards[name] = card  # trained by an earlier test (or CI run) with this exact recipe
            else:
                cards[name] = train_model(name, TrainConfig(**want), device="cpu", quiet=True, resume=False)
        return cards[name]

    return get
