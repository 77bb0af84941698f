"""Medical tasks: MedMNIST-layout npz files (+ dataset cards) and image folders, resolved by name or path."""

from __future__ import annotations

import hashlib
import re
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from robaudit.core import locations
from robaudit.core.errors import BadInput, unknown_name
from robaudit.core.results import DataInfo
from robaudit.data import embedded
from robaudit.data.cards import MEDMNIST, TASK_FLAGS, DatasetCard, medmnist_card
from robaudit.data.images import (
    DecodeError,
    image_header,
    is_image_file,
    read_image,
    resize_batch,
    to_channels,
    to_float_tensor,
)

SPLITS = ("train", "val", "test")
_NPZ_SIZE = re.compile(r"^(?P<stem>.+?)_(?P<size>\d+)$")
GREY_HINTS = ("x-ray", "xray", "ct", "mri", "radiograph", "ultrasound")
#: image-folder files whose headers are read for size and channels (then a stride through the rest)
HEADER_SAMPLE = 500


@dataclass
class TaskData:
    """One labelled medical dataset with train/val/test splits and its card.

    ``view`` selects a label view from the card (e.g. ``referable`` for DR grades >= 2).
    Images are returned as float32 (N,3,S,S) tensors in [0,1] by :meth:`tensors`.
    """

    name: str
    path: Path
    card: DatasetCard
    view: str | None = None
    kind: str = "npz"
    embedded: bool = False  # shipped inside the package (robaudit.data.embedded), not from the data root
    _arrays: dict = field(default_factory=dict, repr=False)
    _folder: dict = field(default_factory=dict, repr=False)

    # ---- identity -------------------------------------------------------------------------
    @property
    def label_names(self) -> list[str]:
        if self.view:
            return list(self.card.binary_view.label_names)
        return list(self.card.label_names)

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    @property
    def full_name(self) -> str:
        return f"{self.name}:{self.view}" if self.view else self.name

    @property
    def modality(self) -> str | None:
        return self.card.modality

    @property
    def is_grey(self) -> bool:
        """Whether the task's images are greyscale (grey npz, or a grey modality on the card)."""
        if self.kind == "npz":
            return self._raw("train")[0].ndim == 3
        if self.kind == "folder" and self._folder_headers[1]:
            return True
        return any(h in (self.card.modality or "").lower() for h in GREY_HINTS)

    @cached_property
    def _folder_headers(self) -> tuple[tuple[int, int] | None, bool]:
        """(most common stored size, whether every image is single-channel) of an image folder, from file
        headers (a folder of grey PNGs is a grey task: its photo sources are greyscaled too)."""
        sizes, grey = Counter(), True
        files = [p for s in self.splits for p, _ in self._folder[s]]
        for path in files[:HEADER_SAMPLE] + files[HEADER_SAMPLE:][::max(1, len(files) // HEADER_SAMPLE)]:
            head = image_header(path)
            if head is None:
                continue
            sizes[head[0]] += 1
            grey = grey and head[1]
        return (sizes.most_common(1)[0][0] if sizes else None), grey and bool(sizes)

    def image_size(self, split: str = "test") -> tuple[int, int] | None:
        """(height, width) the images are stored at (an image folder: the most common size)."""
        if self.kind == "npz":
            return tuple(int(d) for d in self._raw(split)[0].shape[1:3])
        return self._folder_headers[0] if self.kind == "folder" else None

    @property
    def splits(self) -> list[str]:
        if self.kind == "npz":
            return [s for s in SPLITS if f"{s}_images" in self._npz_keys]
        return [s for s in SPLITS if self._folder.get(s)]

    # ---- raw data -------------------------------------------------------------------------
    @cached_property
    def _npz_keys(self) -> set[str]:
        try:
            with _open_npz(self.path) as z:
                return set(z.files)
        except (OSError, ValueError) as exc:
            raise BadInput(f"{str(self.path)!r} is not a readable npz file: {exc}",
                           "re-download it ('robaudit data fetch') or point --data at a MedMNIST-layout npz") from None

    def _raw(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        self._check_split(split)
        if split not in self._arrays:
            try:
                with _open_npz(self.path) as z:
                    images, labels = z[f"{split}_images"], z[f"{split}_labels"]
            except (OSError, ValueError, KeyError) as exc:
                raise BadInput(f"{str(self.path)!r}: cannot read {split} split: {exc}",
                               "the file may be truncated; re-download it") from None
            labels = self._validate(split, images, labels)
            self._arrays[split] = (images, labels)
        return self._arrays[split]

    def _validate(self, split: str, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Check one split's arrays (the npz is user input) and return its labels as int64 (N,)."""
        where = f"{self.path.name} [{split}]"
        bad_channels = images.ndim == 4 and images.shape[-1] not in (1, 3)
        if images.dtype != np.uint8 or images.ndim not in (3, 4) or bad_channels or 0 in images.shape[1:]:
            raise BadInput(f"{where}: images have shape {images.shape} and dtype {images.dtype}; expected uint8 "
                           "(N,H,W) or (N,H,W,3)", "use the MedMNIST npz layout")
        if labels.size != images.shape[0] or labels.ndim > 2 or (labels.ndim == 2 and labels.shape[1] != 1):
            raise BadInput(f"{where}: {images.shape[0]} images but labels of shape {labels.shape}",
                           "labels must be (N,) or (N,1), one per image (multi-label tasks are not supported)")
        labels = int_labels(labels, where)
        n_cls = len(self.card.label_names)
        if labels.size and (labels.min() < 0 or labels.max() >= n_cls):
            raise BadInput(f"{where}: labels range {int(labels.min())}..{int(labels.max())} but the card names "
                           f"{n_cls} classes", "fix the dataset card's label_names")
        return labels

    def _check_split(self, split: str) -> None:
        if split not in self.splits:
            raise BadInput(f"task {self.full_name!r} has no {split!r} split",
                           f"available splits: {', '.join(self.splits) or 'none'}")

    def labels(self, split: str) -> np.ndarray:
        """Labels of a split (int64), in the selected view."""
        if self.kind == "npz":
            y = self._raw(split)[1]
        else:
            self._check_split(split)
            y = np.array([lab for _, lab in self._folder[split]], dtype=np.int64)
        if self.view:
            y = (y >= self.card.binary_view.positive_from_label).astype(np.int64)
        return y

    def count(self, split: str) -> int:
        return int(self.labels(split).size)

    def select(self, split: str, limit: int | None = None, seed: int = 0) -> np.ndarray:
        """Indices of a reproducible subset: all images, or ``limit`` drawn with ``seed`` (kept in order)."""
        n = self.count(split)
        if limit is None or limit >= n:
            return np.arange(n)
        if limit <= 0:
            raise BadInput(f"limit must be positive, got {limit}")
        return np.sort(np.random.default_rng(seed).permutation(n)[:limit])

    def tensors(self, split: str = "test", size: int | None = None, limit: int | None = None, seed: int = 0,
                indices: np.ndarray | None = None):
        """Images as float32 (N,3,S,S) in [0,1] and labels as int64 tensors."""

        if self.count(split) == 0:  # NumPy would warn and every rate would be 0/0
            raise BadInput(f"task {self.full_name!r} has an empty {split!r} split ({self.path})",
                           "add images to it, or pick another split")
        idx = self.select(split, limit, seed) if indices is None else np.asarray(indices)
        if self.kind == "npz":
            x = to_float_tensor(self._raw(split)[0][idx])
        else:
            x = self._folder_images(split, idx, size)
        if size is not None:
            x = resize_batch(x, size)
        return x, torch.from_numpy(self.labels(split)[idx])

    def _folder_images(self, split: str, idx: np.ndarray, size: int | None):

        target = size or 224
        out = []
        for i in idx:
            path = self._folder[split][i][0]
            try:
                img = read_image(path)
            except DecodeError as exc:
                raise BadInput(f"cannot decode image {exc}", "remove or replace the file") from None
            out.append(resize_batch(to_float_tensor(img[None]), target))
        return torch.cat(out) if out else torch.zeros(0, 3, target, target)

    def sha256(self, split: str) -> str:
        """sha256 of a split's images and labels (in the selected view)."""
        h = hashlib.sha256()
        if self.kind == "npz":
            images = self._raw(split)[0]
            h.update(str(images.shape).encode())
            h.update(np.ascontiguousarray(images).tobytes())
        else:
            for path, _ in self._folder[split]:
                h.update(path.read_bytes())
        h.update(self.labels(split).tobytes())
        return h.hexdigest()

    def data_info(self, split: str, n: int | None = None, sha256: bool = True):
        # an embedded task is named by its place in the package, not by this machine's install path
        where = f"robaudit:data/{self.path.parent.name}/{self.path.name}" if self.embedded else str(self.path)
        return DataInfo(name=self.full_name, split=split, n=self.count(split) if n is None else n,
                        sha256=self.sha256(split) if sha256 else None, view=self.view, path=where)

    def mean_norm(self, norm: str, size: int, split: str = "train", limit: int | None = 2000, seed: int = 0,
                  channels: int = 3) -> float:
        """Mean Lp norm of the task's images in [0,1] at the model input size and channel count (the published
        zeta reference, in the pixel space the perturbation lives in)."""
        x, _ = self.tensors(split, size=size, limit=limit, seed=seed)
        x = to_channels(x, channels)
        flat = x.flatten(1)
        v = flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)
        return float(v.mean())

    def summary(self) -> dict:
        counts = {s: self.count(s) for s in self.splits}
        return {"name": self.full_name, "path": str(self.path), "kind": self.kind, "modality": self.modality,
                "classes": self.label_names, "counts": counts, "views": [self.card.binary_view.name]
                if self.card.binary_view and not self.view else [], "embedded": self.embedded}


# ---- resolution -------------------------------------------------------------------------------
def _card_beside(npz: Path) -> DatasetCard | None:
    card = npz.with_suffix(".json")
    return DatasetCard.read(card) if card.is_file() else None


def _flag_of(npz: Path) -> tuple[str, int | None]:
    m = _NPZ_SIZE.match(npz.stem)
    return (m["stem"], int(m["size"])) if m else (npz.stem, None)


def _npz_task(npz: Path, name: str | None = None, view: str | None = None) -> TaskData:
    flag, _ = _flag_of(npz)
    card = _card_beside(npz) or medmnist_card(flag)
    if card is None:
        card = _card_from_labels(npz)
    task = TaskData(name=name or card.task or npz.stem, path=npz, card=card, kind="npz")
    return _with_view(task, view)


def _open_npz(path: Path):
    """``np.load`` of an npz archive without pickles; a file that is not a zip archive gets a plain BadInput
    (NumPy would try it as a pickle and talk about ``allow_pickle``)."""

    if path.is_file() and not zipfile.is_zipfile(path):
        raise BadInput(f"{str(path)!r} is not a readable npz file: not a zip archive",
                       "it may be truncated or another format; re-download it ('robaudit data fetch') or point "
                       "--data at a MedMNIST-layout npz")
    return np.load(path, allow_pickle=False)


def _card_from_labels(npz: Path) -> DatasetCard:
    """A minimal card for an npz without one: classes named by their integer labels."""
    try:
        with _open_npz(npz) as z:
            if "train_labels" not in z.files:
                raise BadInput(f"{str(npz)!r} has no train_labels; keys: {sorted(z.files)}",
                               "use the MedMNIST layout: {train,val,test}_{images,labels}")
            labels = int_labels(z["train_labels"], f"{npz.name} [train]")
    except (OSError, ValueError) as exc:
        raise BadInput(f"{str(npz)!r} is not a readable npz file: {exc}") from None
    if labels.size == 0:
        raise BadInput(f"{npz.name} [train]: no labels, so the classes are unknown",
                       "add a dataset card beside it (label_names) or fill the train split")
    if labels.min() < 0:
        raise BadInput(f"{npz.name} [train]: negative label {int(labels.min())}", "labels are class indices 0..K-1")
    n = int(labels.max()) + 1
    if n > 10_000:
        raise BadInput(f"{npz.name} [train]: label {n - 1} implies {n} classes", "labels are class indices 0..K-1")
    return DatasetCard(label_names=[str(i) for i in range(max(n, 2))])


def int_labels(labels: np.ndarray, where: str) -> np.ndarray:
    """Class labels as int64 (N,): integers, or floats that are whole numbers; anything else is BadInput
    (a cast would turn 'cat' into an error deep in NumPy and 0.5 silently into class 0)."""
    flat = np.asarray(labels).reshape(-1)
    if flat.dtype.kind in "iub":
        return flat.astype(np.int64)
    if flat.dtype.kind == "f":
        whole = np.isfinite(flat) & (flat == np.round(flat))
        if not whole.all():
            bad = flat[~whole][0]
            raise BadInput(f"{where}: label {float(bad)} is not a whole number", "labels are class indices 0..K-1")
        return flat.astype(np.int64)
    raise BadInput(f"{where}: labels are {flat.dtype} values, not integers", "labels are class indices 0..K-1")


def _with_view(task: TaskData, view: str | None) -> TaskData:
    if view:
        bv = task.card.binary_view
        if bv is None or bv.name != view:
            raise BadInput(f"task {task.name!r} has no label view {view!r}",
                           f"views: {bv.name if bv else 'none'} (set binary_view in the dataset card)")
        task.view = view
    return task


def _folder_task(root: Path, view: str | None = None) -> TaskData:
    """An ImageFolder task: ``root/{train,val,test}/<class>/*`` or ``root/<class>/*`` (split 70/10/20)."""
    split_dirs = {s: root / s for s in SPLITS if (root / s).is_dir()}
    if split_dirs:
        classes = sorted({d.name for s in split_dirs.values() for d in s.iterdir() if d.is_dir()})
        folder = {s: _class_files(d, classes) for s, d in split_dirs.items()}
    else:
        classes = sorted(d.name for d in root.iterdir() if d.is_dir())
        items = _class_files(root, classes)
        order = np.random.default_rng(0).permutation(len(items))
        n_tr, n_va = int(0.7 * len(items)), int(0.1 * len(items))
        folder = {"train": [items[i] for i in sorted(order[:n_tr])],
                  "val": [items[i] for i in sorted(order[n_tr:n_tr + n_va])],
                  "test": [items[i] for i in sorted(order[n_tr + n_va:])]}
    if len(classes) < 2:
        raise BadInput(f"image folder {str(root)!r} needs at least two class sub-folders, found {len(classes)}",
                       "lay it out as <root>/<class>/*.png or <root>/{train,val,test}/<class>/*.png")
    card_file = root / "card.json"
    card = DatasetCard.read(card_file) if card_file.is_file() else DatasetCard(label_names=classes)
    task = TaskData(name=root.name, path=root, card=card, kind="folder", _folder=folder)
    return _with_view(task, view)


def _class_files(root: Path, classes: list[str]) -> list[tuple[Path, int]]:
    out = []
    for i, c in enumerate(classes):
        d = root / c
        if d.is_dir():
            out += [(p, i) for p in sorted(d.rglob("*")) if p.is_file() and is_image_file(p)]
    return out


def _candidates(root: Path) -> dict[str, list[Path]]:
    """Names under which each npz in the data root can be asked for."""
    names: dict[str, list[Path]] = {}
    for npz in sorted(root.glob("*.npz")):
        flag, _ = _flag_of(npz)
        keys = {npz.stem, flag}
        card = _card_beside(npz)
        if card and card.task:
            keys.add(card.task)
        elif flag in MEDMNIST:
            keys.add(MEDMNIST[flag].task)
        for k in keys:
            names.setdefault(k, []).append(npz)
    return names


def _pick_size(paths: list[Path], size: int | None) -> Path:
    """Among ``<flag>_<size>.npz`` variants pick the smallest at or above ``size``, else the largest."""
    sized = sorted(paths, key=lambda p: _flag_of(p)[1] or 28)
    if size:
        for p in sized:
            if (_flag_of(p)[1] or 28) >= size:
                return p
    return sized[-1]


def _embedded_task(name: str, view: str | None = None) -> TaskData:
    task = _npz_task(embedded.task_path(name), view=view)
    task.embedded = True
    return task


def split_name(name: str) -> tuple[str, str | None]:
    """``'retina:referable'`` -> ('retina', 'referable')."""
    base, _, view = name.partition(":")
    return base, (view or None)


def load_task(name_or_path: str | Path, view: str | None = None, size: int | None = None,
              data_root: Path | None = None) -> TaskData:
    """Resolve a task by alias (``skin``, ``retina:referable``), MedMNIST flag, npz path or image folder."""
    text = str(name_or_path)
    base, name_view = split_name(text) if not Path(text).exists() else (text, None)
    view = view or name_view
    path = Path(base).expanduser()
    if path.suffix == ".npz" or path.exists():
        if path.is_file():
            return _npz_task(path, view=view)
        if path.is_dir():
            return _folder_task(path, view=view)
        raise BadInput(f"data file {str(path)!r} does not exist", "check the path, or pass a task name")
    # the embedded tasks need no data root; anything in the data root under the same name wins over them
    root = data_root or locations.data_root(required=not embedded.task_path(base))
    cands = _candidates(root) if root else {}
    if base in cands:
        npz = _pick_size(cands[base], size)
        return _npz_task(npz, view=view)
    folder = root / base if root else None
    if folder and folder.is_dir() and base != "imagenet":
        return _folder_task(folder, view=view)
    if embedded.task_path(base):
        return _embedded_task(base, view=view)
    flag = TASK_FLAGS.get(base, base)
    if flag in MEDMNIST or base in TASK_FLAGS:  # a known task whose file is not here: no "did you mean"
        raise BadInput(f"task {base!r} ({flag}.npz) is not in the data root {root}",
                       f"put {flag}.npz there, point ROBAUDIT_DATA / --data-root at the folder holding it, "
                       f"or run 'robaudit data fetch {flag}'")
    raise unknown_name("task", base, list(cands) + list(TASK_FLAGS) + embedded.names(), f"data root is {root}")


def list_tasks(data_root: Path | None = None) -> list[TaskData]:
    """Every task in the data root (one entry per npz file and per image folder), then the embedded tasks
    (``embedded=True``) whose name no data-root task already has; with no data root, the embedded tasks only."""
    root = data_root or locations.data_root(required=locations.configured_data_root() is not None)
    tasks = []
    if root is not None:
        for npz in sorted(root.glob("*.npz")):
            try:
                tasks.append(_npz_task(npz))
            except BadInput:
                continue
        for d in sorted(p for p in root.iterdir() if p.is_dir() and p.name not in ("imagenet", "provenance")):
            try:
                tasks.append(_folder_task(d))
            except BadInput:
                continue
    taken = {t.name for t in tasks}
    tasks += [_embedded_task(n) for n in embedded.names() if n not in taken and embedded.task_path(n)]
    return tasks
