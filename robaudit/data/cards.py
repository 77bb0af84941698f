"""Dataset cards (``<name>.json`` beside an npz) and MedMNIST's own flags and class names."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from robaudit.core.files import read_model


class BinaryView(BaseModel):
    """A binary view of ordinal labels: positive when ``label >= positive_from_label``."""

    model_config = ConfigDict(extra="ignore")
    name: str
    positive_from_label: int
    label_names: list[str] = Field(min_length=2, max_length=2)


class DatasetCard(BaseModel):
    """What a dataset is: task alias, modality, label names and optional binary view."""

    model_config = ConfigDict(extra="ignore")
    task: str | None = None
    modality: str | None = None
    source: str | None = None
    label_kind: str = "nominal"
    label_names: list[str] = Field(min_length=2)
    binary_view: BinaryView | None = None

    @model_validator(mode="after")
    def _check_view(self) -> DatasetCard:
        # class names become report rows and --target values: blank or repeated names make both ambiguous
        if any(not n.strip() for n in self.label_names):
            raise ValueError("label_names must not be blank")
        if len(set(self.label_names)) != len(self.label_names):
            raise ValueError("label_names must be distinct")
        if self.binary_view and not 0 < self.binary_view.positive_from_label < len(self.label_names):
            raise ValueError("binary_view.positive_from_label must split the label range")
        return self

    @classmethod
    def read(cls, path: Path) -> DatasetCard:
        return read_model(cls, path, "dataset card", "fix the JSON (task, modality, label_names, binary_view)")


#: MedMNIST flags that robaudit names as tasks, with MedMNIST v2's own label names.
MEDMNIST = {
    "dermamnist": DatasetCard(
        task="skin", modality="dermatoscopy", source="MedMNIST DermaMNIST",
        label_names=["actinic keratoses and intraepithelial carcinoma", "basal cell carcinoma",
                     "benign keratosis-like lesions", "dermatofibroma", "melanoma", "melanocytic nevi",
                     "vascular lesions"]),
    "retinamnist": DatasetCard(
        task="retina", modality="fundus camera", source="MedMNIST RetinaMNIST", label_kind="ordinal",
        label_names=["0", "1", "2", "3", "4"],
        binary_view=BinaryView(name="referable", positive_from_label=2,
                               label_names=["non-referable", "referable"])),
    "pneumoniamnist": DatasetCard(
        task="pneumonia", modality="chest X-ray", source="MedMNIST PneumoniaMNIST",
        label_names=["normal", "pneumonia"]),
}

#: task alias -> MedMNIST flag
TASK_FLAGS = {card.task: flag for flag, card in MEDMNIST.items()}


def medmnist_card(flag: str) -> DatasetCard | None:
    """Card for any MedMNIST flag: built in for the three tasks, else from ``medmnist.INFO`` if installed."""
    if flag in MEDMNIST:
        return MEDMNIST[flag]
    try:
        from medmnist import INFO
    except ImportError:
        return None
    info = INFO.get(flag)
    if not info or info.get("task", "").startswith("multi-label"):
        return None
    labels = info["label"]
    names = [labels[str(i)] for i in range(len(labels))]
    return DatasetCard(task=None, modality=info.get("description", "")[:80] or None,
                       source=f"MedMNIST {info.get('python_class', flag)}",
                       label_kind="ordinal" if "ordinal" in info.get("task", "") else "nominal",
                       label_names=names)
