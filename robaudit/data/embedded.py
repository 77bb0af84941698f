"""The embedded task: a small real medical dataset shipped inside the package (no data root needed).

``pneumonia-mini`` is a seeded, class-balanced 64 px subset of the Kermany et al. (2018) paediatric
chest X-rays (CC BY 4.0; see ``embedded_data/NOTICE.md``), rebuilt from the data root's
``pneumoniacxr_128.npz`` by ``scripts/build_embedded_data.py``. It is always available by name; an npz
in the data root that answers to the same name (file stem, flag or card ``task``) or a folder of that
name in the data root wins over it.
"""

from __future__ import annotations

from pathlib import Path

from robaudit.data.cards import DatasetCard

DIR = Path(__file__).resolve().parent / "embedded_data"
NAME = "pneumonia-mini"
NPZ = DIR / "pneumonia_mini_64.npz"
CARD = DIR / "pneumonia_mini_64.json"
INDEX = DIR / "pneumonia_mini_64.index.csv"
NOTICE = DIR / "NOTICE.md"

#: how the subset is drawn (scripts/build_embedded_data.py reads these)
SOURCE_FILE = "pneumoniacxr_128.npz"
SOURCE_SHA256 = "ef2125e491bcae0921d9c6c20c12e3bc151e04ae263c0bfe71a17a5e560c358e"
SEED = 1234
SIZE = 64
#: images per split and class (label 0 normal, 1 pneumonia); each split is drawn from the same source split
COUNTS = {"train": (400, 400), "val": (50, 50), "test": (150, 150)}

#: sha256 of the decoded arrays' bytes (C order), per npz key
SHA256 = {
    "test_images": "0694f866f0eb30b3aff91b632788dc8c40dff381170cbfa91df687fc20dd873a",
    "test_labels": "eea82ed4aa152a57918ddd1b868000dacc73d9c41e87fe7c3cf4b47fcd9c27b4",
    "train_images": "1fb9687a8e30a42d1be2b3c9865a898b6183158da782780b2ffbe8283a9d2747",
    "train_labels": "4320096a0a4ec0ea6477deb770159aae635bf2ffaf5fbb6478b571351d543029",
    "val_images": "8573530c09edd0dd223e6b903e3f0f77375430fe585e986ce463dd3096425732",
    "val_labels": "aeaca8cfba3e431d531fd4a9e291e0471c79eb3060fcbbbe76e58687d409a8d0",
}


def card() -> DatasetCard:
    """The embedded task's dataset card."""
    return DatasetCard.read(CARD)


def names() -> list[str]:
    """Names the embedded tasks answer to."""
    return [NAME]


def task_path(name: str) -> Path | None:
    """The npz of the embedded task called ``name`` (None if no embedded task has that name)."""
    return NPZ if name == NAME and NPZ.is_file() else None
