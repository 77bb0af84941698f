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
    critical_class: str | None = Field(None, description="the view's class whose missed call harms (e.g. "
                                       "referable)")


class DatasetCard(BaseModel):
    """What a dataset is: task alias, modality, label names and optional binary view."""

    model_config = ConfigDict(extra="ignore")
    task: str | None = None
    modality: str | None = None
    source: str | None = None
    label_kind: str = "nominal"
    label_names: list[str] = Field(min_length=2)
    binary_view: BinaryView | None = None
    critical_class: str | None = Field(None, description="the class whose missed call harms a patient (the "
                                       "disease: pneumonia, melanoma); harm reports its missed-disease rate")

    @model_validator(mode="after")
    def _check_view(self) -> DatasetCard:
        # class names become report rows and --target values: blank or repeated names make both ambiguous
        if any(not n.strip() for n in self.label_names):
            raise ValueError("label_names must not be blank")
        if len(set(self.label_names)) != len(self.label_names):
            raise ValueError("label_names must be distinct")
        if self.binary_view and not 0 < self.binary_view.positive_from_label < len(self.label_names):
            raise ValueError("binary_view.positive_from_label must split the label range")
        if self.critical_class is not None and self.critical_class not in self.label_names:
            raise ValueError(f"critical_class {self.critical_class!r} is not one of label_names")
        bv = self.binary_view
        if bv and bv.critical_class is not None and bv.critical_class not in bv.label_names:
            raise ValueError(f"binary_view.critical_class {bv.critical_class!r} is not one of its label_names")
        return self

    @classmethod
    def read(cls, path: Path) -> DatasetCard:
        return read_model(cls, path, "dataset card", "fix the JSON (task, modality, label_names, binary_view)")


#: MedMNIST flags that robaudit names as tasks, with MedMNIST v2's own label names.
MEDMNIST = {
    "dermamnist": DatasetCard(
        task="skin", modality="dermatoscopy", source="MedMNIST DermaMNIST", critical_class="melanoma",
        label_names=["actinic keratoses and intraepithelial carcinoma", "basal cell carcinoma",
                     "benign keratosis-like lesions", "dermatofibroma", "melanoma", "melanocytic nevi",
                     "vascular lesions"]),
    "retinamnist": DatasetCard(
        task="retina", modality="fundus camera", source="MedMNIST RetinaMNIST", label_kind="ordinal",
        label_names=["0", "1", "2", "3", "4"],
        binary_view=BinaryView(name="referable", positive_from_label=2,
                               label_names=["non-referable", "referable"], critical_class="referable")),
    "pneumoniamnist": DatasetCard(
        task="pneumonia", modality="chest X-ray", source="MedMNIST PneumoniaMNIST", critical_class="pneumonia",
        label_names=["normal", "pneumonia"]),
}

#: the critical class of the data sets robaudit ships or fetches, by class name, for cards that do not declare
#: one (the data root's cards predate the field): the disease whose missed call harms. A name is used only when
#: it is one of the task's classes, and the result records that it came from here ('built-in').
BUILT_IN_CRITICAL = ("pneumonia", "melanoma", "referable", "malignant")


def critical_class(card: DatasetCard, view: str | None, classes: list[str]) -> tuple[str | None, str | None]:
    """The task's critical class and where it came from: the card's (or its binary view's) ``critical_class``
    ('card'), else the one class of :data:`BUILT_IN_CRITICAL` among ``classes`` ('built-in'), else (None, None)."""
    declared = card.binary_view.critical_class if view and card.binary_view else card.critical_class
    if declared is not None and declared in classes:
        return declared, "card"
    known = [c for c in classes if c.lower() in BUILT_IN_CRITICAL]
    return (known[0], "built-in") if len(known) == 1 else (None, None)

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
