"""In-memory data for the library: ``Data(test=(x, y), val=..., train=...)`` from tensors, arrays or Datasets.

Each split is normalised once to float32 (N, C, H, W) in [0, 1] and int64 labels, checked (shape, range,
NaN, label range, x/y lengths) with errors that name the argument, and served through the same
:class:`~robaudit.data.tasks.TaskData` interface the engine uses for npz files and folders.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from robaudit.core.errors import BadInput
from robaudit.core.results import DataInfo
from robaudit.data.cards import DatasetCard
from robaudit.data.images import resize_batch, to_channels
from robaudit.data.tasks import SPLITS, TaskData, load_task


def as_split(value, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One split as (float32 (N, C, H, W) in [0, 1], int64 (N,)); ``value`` an (x, y) pair or a Dataset."""
    if isinstance(value, torch.utils.data.Dataset) and not isinstance(value, (tuple, list)):
        try:
            items = [value[i] for i in range(len(value))]
        except TypeError:
            raise BadInput(f"{what}: a Dataset without len()", "pass an (x, y) pair or a map-style Dataset") from None
        if not items:
            raise BadInput(f"{what}: the Dataset is empty", "pass at least one (image, label)")
        xs = [torch.as_tensor(np.asarray(im)) if not isinstance(im, torch.Tensor) else im for im, _ in items]
        value = (torch.stack(xs), torch.as_tensor([int(lab) for _, lab in items]))
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise BadInput(f"{what}: expected an (x, y) pair or a torch Dataset, got {type(value).__name__}",
                       f"pass {what}=(images, labels)")
    x, y = _images(value[0], what), _labels(value[1], what)
    if len(x) != len(y):
        raise BadInput(f"{what}: {len(x)} images but {len(y)} labels", "pass one label per image")
    if len(x) == 0:
        raise BadInput(f"{what}: no images", f"pass a non-empty {what} split, or leave it out")
    return x, y


def _images(x, what: str) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(np.asarray(x)))
    if t.ndim == 3:  # (N, H, W) grey
        t = t.unsqueeze(1)
    if t.ndim != 4:
        raise BadInput(f"{what}: images have shape {tuple(t.shape)}", "pass (N, C, H, W) or (N, H, W, C) with "
                       "C = 1 or 3, or (N, H, W) grey")
    if t.shape[1] not in (1, 3) and t.shape[-1] in (1, 3):  # NHWC
        t = t.permute(0, 3, 1, 2)
    if t.shape[1] not in (1, 3):
        raise BadInput(f"{what}: images have shape {tuple(t.shape)}: no axis of 1 or 3 channels",
                       "pass (N, C, H, W) or (N, H, W, C) with C = 1 or 3")
    if t.dtype == torch.uint8:
        return t.float().div_(255.0).contiguous()
    if not t.is_floating_point():
        raise BadInput(f"{what}: images are {t.dtype}", "pass uint8 0-255 or float in [0, 1]")
    t = t.detach().float().cpu()
    if not torch.isfinite(t).all():
        raise BadInput(f"{what}: images contain NaN or inf pixels", "fix or drop those images")
    lo, hi = float(t.min()), float(t.max())
    if lo < 0 or hi > 1:
        raise BadInput(f"{what}: float pixels range {lo:.4g}..{hi:.4g}, outside [0, 1]",
                       "pass un-normalised images in [0, 1] (or uint8): the model's mean/std are applied by robaudit")
    return t.contiguous()


def _labels(y, what: str) -> torch.Tensor:
    arr = np.asarray(y.detach().cpu() if isinstance(y, torch.Tensor) else y).reshape(-1)
    if arr.dtype.kind == "f":
        if not (np.isfinite(arr) & (arr == np.round(arr))).all():
            raise BadInput(f"{what}: labels are not whole numbers", "labels are class indices 0..K-1")
    elif arr.dtype.kind not in "iub":
        raise BadInput(f"{what}: labels are {arr.dtype} values", "labels are class indices 0..K-1")
    return torch.from_numpy(arr.astype(np.int64))


@dataclass
class MemoryTask(TaskData):
    """A :class:`TaskData` over splits held in memory (what :class:`Data` builds)."""

    _mem: dict = field(default_factory=dict, repr=False)

    @property
    def splits(self) -> list[str]:
        return [s for s in SPLITS if s in self._mem]

    @property
    def is_grey(self) -> bool:
        x = next(iter(self._mem.values()))[0]
        return x.shape[1] == 1 or bool(torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2]))

    def labels(self, split: str) -> np.ndarray:
        self._check_split(split)
        return self._mem[split][1].numpy()

    def tensors(self, split: str = "test", size: int | None = None, limit: int | None = None, seed: int = 0,
                indices: np.ndarray | None = None):
        self._check_split(split)
        idx = self.select(split, limit, seed) if indices is None else np.asarray(indices)
        x, y = self._mem[split]
        idx_t = torch.from_numpy(np.asarray(idx, dtype=np.int64))
        x = to_channels(x[idx_t], 3)
        if size is not None:
            x = resize_batch(x, size)
        return x, y[idx_t]

    def sha256(self, split: str) -> str:
        x, y = self._mem[split]
        h = hashlib.sha256()
        h.update(str(tuple(x.shape)).encode())
        h.update(x.numpy().tobytes())
        h.update(y.numpy().tobytes())
        return h.hexdigest()

    def image_size(self, split: str = "test") -> tuple[int, int]:
        return tuple(self._mem[split][0].shape[-2:])

    def data_info(self, split: str, n: int | None = None, sha256: bool = True) -> DataInfo:
        return DataInfo(name=self.full_name, split=split, n=self.count(split) if n is None else n,
                        sha256=self.sha256(split) if sha256 else None, view=None, path="<memory>")


class Data:
    """The medical images an audit is measured on: ``Data(test=(x, y), val=..., train=..., classes=...)``.

    Each split is an ``(x, y)`` pair of tensors or arrays (uint8 0-255 or float in [0, 1]; NCHW or NHWC;
    1 or 3 channels) or a map-style torch ``Dataset`` of ``(image, label)``. ``train`` gives zeta's
    reference norm (else pass ``eps=``); ``val`` is where v is chosen (else a seeded slice of train).
    :func:`load_data` wraps data-root tasks, npz files and image folders in the same type."""

    def __init__(self, test, val=None, train=None, *, classes=None, name: str | None = None):
        mem = {"test": as_split(test, "test")}
        for split, value in (("val", val), ("train", train)):
            if value is not None:
                mem[split] = as_split(value, split)
        n_cls = max(int(y.max()) for _, y in mem.values()) + 1
        if classes is None:
            classes = [str(i) for i in range(max(n_cls, 2))]
        classes = [str(c) for c in classes]
        for split, (_, y) in mem.items():
            if int(y.min()) < 0 or int(y.max()) >= len(classes):
                raise BadInput(f"{split}: labels range {int(y.min())}..{int(y.max())} but classes names "
                               f"{len(classes)} classes", "pass classes= in label order (label i = classes[i])")
        self.task: TaskData = MemoryTask(name=name or "data", path=Path("<memory>"), card=DatasetCard(
            label_names=classes), kind="memory", _mem=mem)

    @classmethod
    def _wrap(cls, task: TaskData) -> Data:
        self = cls.__new__(cls)
        self.task = task
        return self

    @property
    def name(self) -> str:
        return self.task.full_name

    @property
    def classes(self) -> list[str]:
        return self.task.label_names

    @property
    def splits(self) -> list[str]:
        return self.task.splits

    def tensors(self, split: str = "test", size: int | None = None, limit: int | None = None, seed: int = 0):
        """A split as (float32 (N, 3, S, S) in [0, 1], int64 labels): ``size`` resizes, ``limit`` draws a
        seeded subset; what robaudit itself feeds a model (before its channel and mean/std step)."""
        return self.task.tensors(split, size=size, limit=limit, seed=seed)

    def describe(self, sample: int = 64) -> dict:
        """Classes, counts per split and class, stored size, channels and value range (what ``robaudit data
        show`` prints): the facts an audit assumes about the data, read from ``sample`` images per split."""
        out = {"name": self.name, "kind": self.task.kind, "classes": self.classes, "grey": bool(self.task.is_grey),
               "channels": 1 if self.task.is_grey else 3, "splits": {}}
        for split in self.splits:
            y = self.task.labels(split)
            x, _ = self.task.tensors(split, limit=min(sample, len(y)), seed=0)
            size = self.task.image_size(split) if hasattr(self.task, "image_size") else tuple(x.shape[-2:])
            out["splits"][split] = {
                "n": int(len(y)), "per_class": dict(zip(self.classes, np.bincount(y, minlength=len(self.classes))
                                                        .tolist(), strict=True)),
                "size": list(size), "min": round(float(x.min()), 4), "max": round(float(x.max()), 4),
                "mean": round(float(x.mean()), 4)}
        return out

    def __repr__(self) -> str:
        counts = ", ".join(f"{s}={self.task.count(s)}" for s in self.splits)
        return f"Data({self.name!r}, classes={self.classes}, {counts})"


def load_data(task_or_path: str | Path, size: int | None = None) -> Data:
    """A data-root task (``skin``, ``retina:referable``), an embedded task, an npz file or an image folder."""
    return Data._wrap(load_task(task_or_path, size=size))
