"""An attacker's photo budget: a seeded, unbounded stream of augmented views of a photo source.

The published attacker drew 100,000 natural photos; a few hundred photos, re-read pass after pass,
let a UAP overfit them (source fooling near 100 %, medical fooling falling). This stream cycles
through the source's photos in a fresh seeded order each epoch and gives every draw its own
random-resized crop and flip (torchvision's RandomResizedCrop rule, v2 functional ops), until
``budget`` images have been drawn.

Image ``i`` of the stream depends only on ``(seed, i)``, so the stream is identical for a seed
whatever the worker count, and a torchrun rank can take every ``world``-th image. Photos are decoded
in DataLoader worker processes when ``workers > 0``; memory stays flat in the budget (one chunk at a
time). A photo that cannot be decoded is skipped and counted (``skipped``), never fatal.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as F

from robaudit.core.errors import BadInput
from robaudit.data.images import DecodeError, read_image
from robaudit.data.sources import ImageSource, collate_decoded

#: decoded photos kept in memory per process (a few hundred photos re-drawn for a budget of thousands are
#: decoded once; a 100k-photo source keeps the first that fit)
CACHE_BYTES = 512 * 2**20

#: random-resized-crop scale range: from a quarter of the photo to all of it (ImageNet training uses 0.08-1;
#: a UAP must work on whole-image statistics, so very small crops are left out)
CROP_SCALE = (0.25, 1.0)


RATIO = (3 / 4, 4 / 3)


def crop_params(h: int, w: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random-resized crop: torchvision's RandomResizedCrop rule (10 tries of
    area in CROP_SCALE and log-uniform aspect in RATIO, else the central crop), drawn from ``rng``."""
    area = h * w
    for _ in range(10):
        target = area * rng.uniform(*CROP_SCALE)
        ratio = float(np.exp(rng.uniform(np.log(RATIO[0]), np.log(RATIO[1]))))
        cw, ch = int(round((target * ratio) ** 0.5)), int(round((target / ratio) ** 0.5))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    side = min(h, w)
    return (h - side) // 2, (w - side) // 2, side, side


def augmented_view(arr: np.ndarray, size: int, rng: np.random.Generator, grayscale: bool = False) -> torch.Tensor:
    """A photo (H, W, 3 uint8) -> a random-resized ``size`` crop, maybe flipped, float [0, 1] (3, size, size).

    Parameters come from ``rng`` (seeded per draw); the pixels go through torchvision v2's functional API
    on a PIL image (PIL's resampling: about 1 ms a photo, ten times the tensor path on one CPU thread)."""
    top, left, h, w = crop_params(arr.shape[0], arr.shape[1], rng)
    img = F.resized_crop(Image.fromarray(arr), top, left, h, w, [size, size], antialias=True)
    if rng.random() < 0.5:
        img = F.horizontal_flip(img)
    if grayscale:
        img = F.rgb_to_grayscale(img, num_output_channels=3)
    return F.to_dtype(F.to_image(img.convert("RGB")), torch.float32, scale=True)


class _Views(Dataset):
    """Draw ``i`` of the stream: photo ``order(epoch)[i % n]`` under the transform seeded by ``(seed, i)``."""

    def __init__(self, source: ImageSource, size: int, indices: np.ndarray, seed: int):
        self.source, self.indices, self.seed, self.size = source, indices, seed, size
        self._orders: dict[int, np.ndarray] = {}
        self._cache: dict[int, np.ndarray] = {}
        self._cached_bytes = 0

    def __len__(self) -> int:
        return len(self.indices)

    def photo(self, i: int) -> int:
        n = len(self.source.items)
        epoch, pos = divmod(int(i), n)
        if epoch not in self._orders:
            self._orders[epoch] = np.random.default_rng([self.seed, epoch]).permutation(n)
        return int(self._orders[epoch][pos])

    def __getitem__(self, k: int):
        i = int(self.indices[k])
        j = self.photo(i)
        arr = self._cache.get(j)
        if arr is None:
            item = self.source.items[j]
            try:
                arr = read_image(item) if not isinstance(item, tuple) else item[1]
            except DecodeError:
                return None
            if self._cached_bytes + arr.nbytes <= CACHE_BYTES:
                self._cache[j] = arr
                self._cached_bytes += arr.nbytes
        return augmented_view(arr, self.size, np.random.default_rng([self.seed, i, 1]), self.source.grayscale)


@dataclass
class AugmentedStream:
    """``budget`` augmented views of ``source`` at ``size`` px, in chunks of ``chunk_size`` (re-iterable)."""

    source: ImageSource
    size: int
    budget: int
    seed: int = 0
    chunk_size: int = 1000
    workers: int = 0
    rank: int = 0
    world: int = 1
    skipped: int = 0

    def __post_init__(self):
        if self.budget < 1:
            raise BadInput(f"--budget must be >= 1, got {self.budget}")
        if not self.source.items:
            raise BadInput(f"source {self.source.name!r} has no images to stream")

    def __len__(self) -> int:
        return len(range(self.rank, self.budget, self.world))

    def describe(self) -> str:
        return (f"{self.budget} augmented views (random-resized crops, flips; seed {self.seed}) of "
                f"{self.source.describe()}")

    def shard(self, rank: int, world: int) -> AugmentedStream:
        """A torchrun rank's share: every ``world``-th draw, in chunks of chunk_size / world."""
        return AugmentedStream(self.source, self.size, self.budget, self.seed, max(1, self.chunk_size // world),
                               self.workers, rank, world)

    def __iter__(self) -> Iterator[torch.Tensor]:
        views = _Views(self.source, self.size, np.arange(self.rank, self.budget, self.world), self.seed)
        loader = DataLoader(views, batch_size=self.chunk_size, num_workers=self.workers, collate_fn=collate_decoded,
                            pin_memory=torch.cuda.is_available() and self.workers > 0)
        delivered = 0
        for x, bad in loader:
            self.skipped += bad
            if len(x):
                delivered += len(x)
                yield x
        if not delivered and self.skipped:
            raise BadInput(f"source {self.source.name!r} has no decodable images ({self.skipped} draws failed)",
                           "check the folder's files")
