"""The images a UAP is built from, as the engine takes them: one tensor, or a re-iterable chunk stream."""

from __future__ import annotations

from dataclasses import replace

from robaudit.console import warn
from robaudit.data import TaskData, load_source
from robaudit.specs import UAPSpec


def uap_source(spec: UAPSpec, task: TaskData, size: int):
    """(a tensor or a chunk stream, number of images, description) for the spec's source."""
    if spec.source == "train":
        x, _ = task.tensors("train", size=size, limit=spec.source_limit, seed=spec.seed)
        return x, len(x), f"train split of {task.full_name}"
    grey = task.is_grey if spec.grayscale_source is None else spec.grayscale_source
    src = load_source(spec.source, limit=spec.source_limit, seed=spec.seed, grayscale=grey)
    if len(src) <= spec.chunk_size:
        x = src.tensor(size)
        if src.skipped:
            warn(f"skipped {src.skipped} undecodable source image(s)")
        return x, len(x), src.describe()
    return Chunks(src, size, spec), len(src), src.describe()


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
