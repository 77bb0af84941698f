"""The images a UAP is built from, as the engine takes them: a tensor, a chunk stream, or an augmented stream.

A photo source (``imagenet``, ``natural``, a folder) is drawn by default as an augmented stream of
``budget`` views (:mod:`robaudit.data.stream`); ``--no-augment`` or reference mode keep plain passes
over the photos. A zero-knowledge build holds some photos out of the stream to choose v on.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from robaudit.core.console import warn
from robaudit.core.specs import STREAM_CHUNK, UAPSpec
from robaudit.data import TaskData, load_source
from robaudit.data.images import resize_batch, to_channels
from robaudit.data.sources import ImageSource
from robaudit.data.stream import AugmentedStream

#: photos held out of a zero-knowledge build to choose v on (a tenth of the source, 16..200)
HOLDOUT = (0.1, 16, 200)


@dataclass
class UAPSource:
    """What ``build_uap`` iterates (a tensor or re-iterable chunks), its size and description; ``held_out``
    are photos kept apart from the build (float tensor) when a zero-knowledge build asks for them."""

    images: object
    n: int
    description: str
    budget: int | None = None
    held_out: torch.Tensor | None = None


def uap_source(spec: UAPSpec, task: TaskData, size: int, budget: int | None, hold_out: bool = False) -> UAPSource:
    """The spec's source at ``size`` px: training images, an augmented photo stream, or plain photos."""
    if spec.source == "train":
        x, _ = task.tensors("train", size=size, limit=spec.source_limit, seed=spec.seed)
        return UAPSource(x, len(x), f"train split of {task.full_name}")
    grey = task.is_grey if spec.grayscale_source is None else spec.grayscale_source
    src = load_source(spec.source, limit=spec.source_limit, seed=spec.seed, grayscale=grey)
    held = None
    if hold_out:
        src, held_src = _split_off(src, spec.seed)
        held = held_src.tensor(size)
    if budget is not None:
        stream = AugmentedStream(src, size, budget, seed=spec.seed, chunk_size=min(spec.chunk_size, STREAM_CHUNK),
                                 workers=spec.workers)
        return UAPSource(stream, budget, stream.describe(), budget, held)
    if len(src) <= spec.chunk_size:
        x = src.tensor(size)
        if src.skipped:
            warn(f"skipped {src.skipped} undecodable source image(s)")
        return UAPSource(x, len(x), src.describe(), None, held)
    return UAPSource(Chunks(src, size, spec), len(src), src.describe(), None, held)


def tensor_source(photos: torch.Tensor, size: int) -> UAPSource:
    """Photos handed over as a tensor (library): (N, C, H, W) in [0, 1], resized to ``size``, passes over them."""
    from robaudit.data.memory import as_split

    x, _ = as_split((photos, torch.zeros(len(photos), dtype=torch.long)), "source")
    x = resize_batch(to_channels(x, 3), size)
    return UAPSource(x, len(x), f"{len(x)} photos given as a tensor ({tuple(photos.shape[-2:])} px -> {size} px)")


def in_channels(images, channels: int):
    """The source at the model's channel count: a tensor converted, a chunk stream wrapped (3 = unchanged)."""
    if channels == 3:
        return images
    if isinstance(images, torch.Tensor):
        return to_channels(images, channels)
    return ChannelStream(images, channels)


class ChannelStream:
    """A re-iterable chunk stream whose chunks are converted to ``channels`` (greyscale models)."""

    def __init__(self, inner, channels: int):
        self.inner, self.channels = inner, channels

    def __iter__(self):
        return (to_channels(x, self.channels) for x in self.inner)

    def __len__(self):
        return len(self.inner)

    def __getattr__(self, name):  # counts and descriptions of the inner stream (skipped photos, views drawn)
        return getattr(self.inner, name)

    def shard(self, rank: int, world: int) -> ChannelStream:
        return ChannelStream(self.inner.shard(rank, world), self.channels)


def _split_off(src: ImageSource, seed: int) -> tuple[ImageSource, ImageSource]:
    """(build photos, held-out photos): a seeded tenth of the source (16..200 images) held out, whole
    photos at a time (the crops of one bundled photo never sit on both sides)."""
    frac, lo, hi = HOLDOUT
    k = min(int(min(hi, max(lo, round(frac * len(src))))), len(src) // 2)
    groups: dict[str, list[int]] = {}
    for i, it in enumerate(src.items):
        groups.setdefault(str(it[0] if isinstance(it, tuple) else it).split("#")[0], []).append(i)
    keys = list(groups)
    held: list[int] = []
    for j in np.random.default_rng([seed, 7]).permutation(len(keys)):
        if len(held) >= k:
            break
        held += groups[keys[j]]
    held_set = set(held)
    kept = [i for i in range(len(src.items)) if i not in held_set]
    return (replace(src, items=[src.items[i] for i in kept]),
            replace(src, items=[src.items[i] for i in sorted(held)], name=f"{src.name} (held out)"))


class Chunks:
    """Re-iterable chunk stream over a large source (one pass per UAP iteration)."""

    def __init__(self, src, size: int, spec: UAPSpec):
        self.src, self.size, self.spec = src, size, spec

    def __iter__(self):
        return self.src.chunks(self.size, chunk_size=self.spec.chunk_size, workers=self.spec.workers)

    def __len__(self):
        return len(self.src)

    def shard(self, rank: int, world: int) -> Chunks:
        """A torchrun rank's share: every world-th image, chunks of chunk_size / world (the same global chunks)."""
        src = replace(self.src, items=self.src.items[rank::world])
        spec = self.spec.model_copy(update={"chunk_size": max(1, self.spec.chunk_size // world)})
        return Chunks(src, self.size, spec)
