"""Natural-image sources for UAPs: ``imagenet`` (data root), ``natural`` (photos inside wheels), folders.

A source is a list of image files (or in-memory photos) decoded lazily in chunks, so a 100k-image
ImageNet folder streams through the UAP loop without being held in memory.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from robaudit.core import locations
from robaudit.core.errors import BadInput, unknown_name
from robaudit.data.images import DecodeError, is_image_file, photo_transform, read_image

NATURAL_SOURCES = ("imagenet", "natural")

#: photographs of everyday scenes shipped inside installed wheels (medical images there are excluded)
BUNDLED_PHOTOS = {
    "skimage": ("data", ["astronaut.png", "brick.png", "camera.png", "chelsea.png", "coffee.png", "coins.png",
                         "grass.png", "gravel.png", "hubble_deep_field.jpg", "moon.png", "motorcycle_left.png",
                         "motorcycle_right.png", "rocket.jpg", "clock_motion.png", "color.png"]),
    "sklearn.datasets": ("images", ["china.jpg", "flower.jpg"]),
    "matplotlib": ("mpl-data/sample_data", ["grace_hopper.jpg", "Minduka_Present_Blue_Pack.png"]),
}
#: medical images that also ship in those wheels: never part of a natural source
BUNDLED_MEDICAL = {"skimage": ["retina.jpg", "ihc.png", "cell.png", "microaneurysms.png", "phantom.png"]}


@dataclass
class ImageSource:
    """A reproducible list of natural images, decoded to [0,1] tensors on demand."""

    name: str
    items: list = field(default_factory=list)  # Paths, or (label, uint8 array) pairs for in-memory photos
    grayscale: bool = False
    skipped: int = 0
    origin: str = ""

    def __len__(self) -> int:
        return len(self.items)

    def describe(self) -> str:
        return f"{self.name} ({len(self)} images{', greyscale' if self.grayscale else ''}; {self.origin})"

    def sha256(self) -> str:
        h = hashlib.sha256()
        for it in self.items:
            h.update(str(it if isinstance(it, Path) else it[0]).encode())
        return h.hexdigest()

    def _decode(self, item, transform):
        from PIL import Image

        arr = read_image(item) if isinstance(item, Path) else item[1]
        return transform(Image.fromarray(arr))

    def chunks(self, size: int, chunk_size: int = 1000, strict: bool = False,
               workers: int = 0) -> Iterator:
        """Yield float32 (n,3,size,size) tensors of at most ``chunk_size`` images.

        Undecodable files are skipped and counted in ``self.skipped`` (or raise with ``strict``).
        ``workers > 0`` decodes in DataLoader worker processes (keeps a GPU busy).
        """

        transform = photo_transform(size, self.grayscale)
        yielded = 0
        chunks = self._chunks_workers(size, chunk_size, strict, workers, transform) if workers > 0 else \
            self._chunks_here(chunk_size, strict, transform)
        for x in chunks:
            yielded += len(x)
            yield x
        if not yielded and self.items:  # one bad photo of 100k is skipped; a source of only bad ones is bad input
            raise BadInput(f"source {self.name!r} has no decodable images ({len(self.items)} tried, all failed)",
                           "check the files (truncated, not images, or larger than PIL's pixel limit)")

    def _chunks_here(self, chunk_size: int, strict: bool, transform):
        batch = []
        for item in self.items:
            try:
                batch.append(self._decode(item, transform))
            except DecodeError as exc:
                if strict:
                    raise BadInput(f"cannot decode source image {exc}", "remove it or drop --strict") from None
                self.skipped += 1
                continue
            if len(batch) == chunk_size:
                yield torch.stack(batch)
                batch = []
        if batch:
            yield torch.stack(batch)

    def _chunks_workers(self, size, chunk_size, strict, workers, transform):

        ds = _DecodeDataset(self, transform)
        loader = DataLoader(ds, batch_size=chunk_size, num_workers=workers, collate_fn=collate_decoded,
                            pin_memory=torch.cuda.is_available())
        for x, bad in loader:
            if bad and strict:
                raise BadInput(f"cannot decode {bad} source image(s)", "remove them or drop --strict")
            self.skipped += bad
            if len(x):
                yield x

    def tensor(self, size: int, strict: bool = False):
        """All images as one tensor (small sources only)."""

        parts = list(self.chunks(size, chunk_size=256, strict=strict))
        if not parts:
            raise BadInput(f"source {self.name!r} has no decodable images", "check the folder's files")
        return torch.cat(parts)


class _DecodeDataset:
    def __init__(self, source: ImageSource, transform):
        self.source, self.transform = source, transform

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        try:
            return self.source._decode(self.source.items[i], self.transform)
        except DecodeError:
            return None


def collate_decoded(batch):
    """A DataLoader batch of decoded images, the undecodable ones (None) dropped: (tensor, how many dropped)."""
    ok = [b for b in batch if b is not None]
    return (torch.stack(ok) if ok else torch.zeros(0)), len(batch) - len(ok)


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p))


def bundled_photos() -> list[tuple[str, np.ndarray]]:
    """Natural photos shipped inside installed wheels (scikit-image, scikit-learn, matplotlib) + LFW faces."""

    out: list[tuple[str, np.ndarray]] = []
    for pkg, (sub, names) in BUNDLED_PHOTOS.items():
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            continue
        base = Path(list(spec.submodule_search_locations)[0]) / sub
        for n in names:
            p = base / n
            if p.is_file():
                try:
                    out.append((f"{pkg}:{n}", read_image(p)))
                except DecodeError:
                    continue
    spec = importlib.util.find_spec("skimage")
    if spec and spec.submodule_search_locations:
        lfw = Path(list(spec.submodule_search_locations)[0]) / "data" / "lfw_subset.npy"
        if lfw.is_file():  # 200 greyscale face photos (25x25 floats in [0,1])
            faces = (np.load(lfw) * 255).round().astype(np.uint8)
            out += [(f"skimage:lfw_subset[{i}]", np.repeat(f[..., None], 3, -1)) for i, f in enumerate(faces)]
    return out


def natural_crops(photos: list[tuple[str, np.ndarray]], per_photo: int, seed: int) -> list[tuple[str, np.ndarray]]:
    """Deterministic random square crops (scale 0.3-1) of larger photos, to widen a tiny photo set."""
    rng = np.random.default_rng(seed)
    out = []
    for name, img in photos:
        out.append((name, img))
        h, w = img.shape[:2]
        if min(h, w) < 128:
            continue
        for k in range(per_photo - 1):
            s = int(min(h, w) * rng.uniform(0.3, 1.0))
            y, x = rng.integers(0, h - s + 1), rng.integers(0, w - s + 1)
            out.append((f"{name}#crop{k}", np.ascontiguousarray(img[y:y + s, x:x + s])))
    return out


def load_source(name: str | Path, limit: int | None = None, seed: int = 0, grayscale: bool = False,
                data_root: Path | None = None, crops_per_photo: int = 16) -> ImageSource:
    """Resolve a natural-image source by name (``imagenet``, ``natural``) or folder path."""
    text = str(name)
    if text == "imagenet":
        root = data_root or locations.data_root()
        folder = root / "imagenet"
        if not folder.is_dir():
            raise BadInput(f"no imagenet/ folder in the data root {root}",
                           "put ImageNet images under <data root>/imagenet/ or use --source natural")
        src = ImageSource("imagenet", _image_files(folder), grayscale, origin=str(folder))
    elif text == "natural":
        photos = bundled_photos()
        if not photos:
            raise BadInput("no bundled photos found", "install scikit-image (pip install scikit-image)")
        src = ImageSource("natural", natural_crops(photos, crops_per_photo, seed), grayscale,
                          origin="photos bundled in scikit-image, scikit-learn and matplotlib wheels")
    else:
        folder = Path(text).expanduser()
        if not folder.exists():
            raise unknown_name("source", text, list(NATURAL_SOURCES) + ["train"],
                               "a source is imagenet, natural, train, or an existing folder of images")
        if not folder.is_dir():
            raise BadInput(f"source {text!r} is a file, not a folder of images", "pass a folder of JPEG/PNG files")
        src = ImageSource(folder.name, _image_files(folder), grayscale, origin=str(folder))
    if not src.items:
        raise BadInput(f"source {text!r} contains no images", "add JPEG/PNG files (searched recursively)")
    if limit is not None:
        if limit <= 0:
            raise BadInput(f"--source-limit must be positive, got {limit}")
        if limit < len(src.items):
            idx = np.sort(np.random.default_rng(seed).permutation(len(src.items))[:limit])
            src.items = [src.items[i] for i in idx]
    return src
