"""The data seen in the model's class order: labels matched to the head by class name, never by position."""

from __future__ import annotations

import numpy as np
import torch

from robaudit.core.errors import BadInput


def _unnamed(names: list[str]) -> bool:
    return all(str(c) == str(i) for i, c in enumerate(names))


def class_permutation(model_classes: list[str], data_classes: list[str], data_name: str) -> list[int] | None:
    """``perm`` with ``perm[data_label] = model_output`` when the data names the same classes in another order;
    None when the orders agree or the data's classes are unnamed (0..K-1: only the count can be checked).
    Names that do not match are bad input: a head read in the wrong order is the silent failure refused here."""
    if len(model_classes) != len(data_classes):
        raise BadInput(f"the model has {len(model_classes)} classes ({', '.join(model_classes)}) but data "
                       f"{data_name!r} has {len(data_classes)} ({', '.join(data_classes)})",
                       "pass the data the model was trained on, or --classes naming the head's outputs in order")
    if _unnamed(data_classes):
        return None
    lowered = [c.lower() for c in model_classes]
    data_lowered = [c.lower() for c in data_classes]
    if lowered == data_lowered:
        return None
    if sorted(lowered) != sorted(data_lowered):
        extra = [c for c in model_classes if c.lower() not in data_lowered]
        raise BadInput(f"class names differ: model {model_classes}, data {data_classes} (not in the data: "
                       f"{', '.join(extra)})", "pass --classes with the data's class names in the head's order")
    return [lowered.index(c) for c in data_lowered]


class ClassOrder:
    """``task`` with its labels renumbered to the model's output order (``perm[data_label]``): everything
    else (images, splits, sha256 of the stored data) is the task's own."""

    def __init__(self, task, perm: list[int], names: list[str]):
        self._task, self._perm, self._names = task, np.asarray(perm, dtype=np.int64), list(names)
        self.mapping = {task.label_names[i]: names[p] for i, p in enumerate(perm)}

    def __getattr__(self, name):
        return getattr(self._task, name)

    @property
    def label_names(self) -> list[str]:
        return list(self._names)

    @property
    def num_classes(self) -> int:
        return len(self._names)

    def labels(self, split: str) -> np.ndarray:
        return self._perm[self._task.labels(split)]

    def tensors(self, *args, **kwargs):
        x, y = self._task.tensors(*args, **kwargs)
        return x, torch.from_numpy(self._perm)[y]

    def summary(self) -> dict:
        return {**self._task.summary(), "classes": self.label_names, "class_mapping": self.mapping}


def in_model_order(task, model_classes: list[str]):
    """``task`` itself, or a :class:`ClassOrder` view whose labels follow the model's outputs by name."""
    perm = class_permutation(model_classes, task.label_names, task.full_name)
    if perm is None:
        return task
    return ClassOrder(task, perm, list(model_classes))
