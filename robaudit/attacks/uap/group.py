"""The process group a UAP is built over: one process (:class:`LocalGroup`) or several (:class:`DistributedGroup`).

The method loops never ask whether a run is distributed: they call the group (shuffled mini-batches,
sums over ranks, the global chunk size) and a :class:`LocalGroup` answers for one process.

Several processes (``torchrun --nproc_per_node=N -m robaudit.cli uap ...``): every rank reads the
launcher's ``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK``, joins the process group (NCCL on GPUs, one GPU
per rank; gloo on CPU) and streams its shard of the source: every ``world``-th image, in chunks of
``chunk_size / world``, so that the ranks' k-th chunks together are the k-th chunk of a single
process. Within a chunk all ranks draw the same permutation of the *global* chunk (the generator is
seeded alike), so global mini-batch k holds exactly the images a single process would put in it;
each rank computes on its own members of it (a slice of random size, possibly empty) and the
method's update is summed over ranks (FGSM: the gradient signs and the count of unfooled images;
SGD: the gradient of v; DeepFool: the per-image steps, gathered and applied in the global order).
Every rank then applies the same step, so all hold the same ``v``, and the run equals one process
with the same ``batch_size`` (the *total* mini-batch) on the same data, up to float summation
order. Reference mode (one image at a time) is sequential by definition and refused. A
``should_stop`` callback given to ``build_uap`` must answer alike on every rank.

Only rank 0 writes files and prints. The test-split evaluation is small next to the source (a few
forward passes over the test images against tens of thousands of source images with backward
passes): every rank evaluates the identical ``v`` on the identical images and rank 0 writes it; this
costs no wall time and no communication.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor

from robaudit.core.errors import BadInput


def check_chunk(x: Tensor) -> Tensor:
    """A source chunk as the loops need it: float (N, C, H, W) in [0, 1], NCHW-contiguous (BadInput otherwise)."""
    if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point():
        raise BadInput("a UAP source must be float tensors (N, C, H, W) in [0, 1]",
                       f"got {type(x).__name__} {tuple(getattr(x, 'shape', ()))} {getattr(x, 'dtype', '')}")
    if len(x) and (float(x.min()) < 0 or float(x.max()) > 1):
        raise BadInput("UAP source images must be in [0, 1]", "scale uint8 images by 1/255")
    return x.contiguous()  # a channels-last view would change the conv kernels, hence the numerics


class LocalGroup:
    """One process: shuffled mini-batches of the chunk, and collectives that return their input."""

    rank, world, is_main = 0, 1, True

    def info(self) -> dict:
        return {}

    def batches(self, run, x: Tensor, y: Tensor) -> Iterator[tuple[Tensor, Tensor]]:
        order = torch.randperm(len(x), generator=run.generator)
        for i in range(0, len(x), run.cfg.batch_size):
            idx = order[i:i + run.cfg.batch_size]
            yield x[idx].to(run.device, torch.float32), run.labels(y[idx]).to(run.device)

    def chunks(self, source: Iterable[Tensor]) -> Iterable[Tensor]:
        return source

    def global_size(self, n_local: int) -> int:
        """Images in the global chunk (here: this process's)."""
        return n_local

    def batch_count(self, n_local: int) -> int:
        """Images in the current global mini-batch."""
        return n_local

    def all_sum(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        return tensors

    def sum_count(self, value) -> float:
        return float(value)

    def batch_mean(self, t: Tensor) -> Tensor:
        """Mean of per-image values over the global mini-batch."""
        return t.mean()

    def chunk_rate(self, success: Tensor) -> tuple[int, int, float]:
        """(hits, images, rate) of per-image success over the global chunk."""
        return int(success.sum()), len(success), float(success.float().mean()) if len(success) else 0.0

    def broadcast(self, t: Tensor) -> Tensor:
        return t

    def gather_ordered(self, rows: Tensor, local_index: Tensor) -> Tensor:
        """Rows computed for the images ``local_index`` of the mini-batch, from every rank, in global order."""
        return rows


# ---- the process group ----------------------------------------------------------------------------
@dataclass
class DistributedGroup:
    """This process's place in a distributed UAP run, and the collectives the method loops need.

    ``device`` is where collectives run: the rank's GPU (NCCL) or the CPU (gloo). ``batch_n`` and
    ``positions`` describe the current global mini-batch: its size over all ranks, and where this
    rank's images sit in it (set by :meth:`batches`).
    """

    rank: int
    world: int
    local_rank: int
    backend: str
    device: torch.device
    batch_n: int = 0
    positions: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def global_size(self, n_local: int) -> int:
        return self.layout(n_local)[0]

    def batch_count(self, n_local: int) -> int:
        """One call per global mini-batch: count it whole."""
        return self.batch_n

    def batch_mean(self, t: Tensor) -> Tensor:
        return t.sum() / self.batch_n

    def chunk_rate(self, success: Tensor) -> tuple[int, int, float]:
        h, n = self.sum_count(int(success.sum())), self.sum_count(len(success))
        return int(h), int(n), h / n if n else 0.0

    def info(self) -> dict:
        """Recorded in the result's environment."""
        return {"world_size": self.world, "backend": self.backend,
                "batch": "batch_size is the total mini-batch over all ranks"}

    # collectives ---------------------------------------------------------------------------------
    def all_sum(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        """Sum every tensor over the ranks in one collective; returns them in their own dtype and device."""
        flat = torch.cat([t.detach().reshape(-1).to(self.device, torch.float32) for t in tensors])
        dist.all_reduce(flat)
        out, at = [], 0
        for t in tensors:
            out.append(flat[at:at + t.numel()].reshape(t.shape).to(t.device, t.dtype))
            at += t.numel()
        return tuple(out)

    def sum_count(self, value) -> float:
        """A scalar count summed over the ranks (float64: exact for any realistic image count)."""
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t.item())

    def broadcast(self, t: Tensor) -> Tensor:
        """Rank 0's value of ``t`` on every rank (the starting v: a resumed partial may exist on rank 0 only)."""
        buf = t.detach().to(self.device, copy=True).contiguous()
        dist.broadcast(buf, src=0)
        return buf.to(t.device, t.dtype)

    def _all_gather_sizes(self, n: int) -> Tensor:
        sizes = torch.zeros(self.world, dtype=torch.float64, device=self.device)
        sizes[self.rank] = n
        dist.all_reduce(sizes)
        return sizes.long().cpu()

    def gather_ordered(self, rows: Tensor, local_index: Tensor) -> Tensor:
        """Every rank's ``rows`` (k, ...) concatenated and sorted by their images' global positions."""
        positions = self.positions[local_index.cpu()]
        sizes = self._all_gather_sizes(len(rows))
        m = int(sizes.max())
        if m == 0:
            return rows
        pad = torch.zeros((m, *rows.shape[1:]), dtype=torch.float32, device=self.device)
        pad[:len(rows)] = rows.detach().to(self.device, torch.float32)
        pos = torch.full((m,), -1, dtype=torch.float64, device=self.device)
        pos[:len(rows)] = positions.to(self.device, torch.float64)
        rows_all = [torch.empty_like(pad) for _ in range(self.world)]
        pos_all = [torch.empty_like(pos) for _ in range(self.world)]
        dist.all_gather(rows_all, pad)
        dist.all_gather(pos_all, pos)
        rows_cat, pos_cat = torch.cat(rows_all), torch.cat(pos_all)
        keep = pos_cat >= 0
        order = torch.argsort(pos_cat[keep], stable=True)
        return rows_cat[keep][order].to(rows.device, rows.dtype)

    # data ----------------------------------------------------------------------------------------
    def layout(self, n_local: int) -> tuple[int, Tensor, Tensor]:
        """The global chunk made of every rank's local chunk, interleaved: global image g belongs to rank
        ``owner[g]`` at local index ``local[g]``. With the strided shards of :func:`shard` this is the
        single-process chunk, image for image. Returns (global size, owner, local)."""
        sizes = self._all_gather_sizes(n_local)
        m = int(sizes.max()) if len(sizes) else 0
        ranks = torch.arange(self.world).repeat(m)
        local = torch.arange(m).repeat_interleave(self.world)
        keep = local < sizes[ranks]
        return int(sizes.sum()), ranks[keep], local[keep]

    def batches(self, run, x: Tensor, y: Tensor) -> Iterator[tuple[Tensor, Tensor]]:
        """This rank's members of each global shuffled mini-batch."""
        n, owner, local = self.layout(len(x))
        order = torch.randperm(n, generator=run.generator)
        for i in range(0, n, run.cfg.batch_size):
            g = order[i:i + run.cfg.batch_size]
            mine = (owner[g] == self.rank).nonzero().flatten()
            idx = local[g[mine]]
            self.batch_n, self.positions = len(g), mine
            yield x[idx].to(run.device, torch.float32), run.labels(y[idx]).to(run.device)

    def chunks(self, source: Iterable[Tensor]) -> Iterator[Tensor]:
        """Step the ranks' chunk streams together: one chunk per rank per round (an empty one for a rank
        whose shard ran out) until every shard is done. A bad chunk on any rank stops all ranks."""
        it = iter(source)
        while True:
            x = next(it, None)
            problem = None
            if x is not None:
                try:
                    x = check_chunk(x)
                except BadInput as exc:
                    problem = exc
            shape = list(x.shape[1:]) if x is not None and problem is None else [0, 0, 0]
            state = torch.tensor([x is not None, problem is not None, *shape], dtype=torch.float64,
                                 device=self.device)
            dist.all_reduce(state, op=dist.ReduceOp.MAX)
            if problem is not None:
                raise problem
            if state[1] > 0:
                raise BadInput("another rank's source chunk is invalid", "see that rank's error")
            if state[0] == 0:
                return
            yield x if x is not None else torch.zeros((0, *state[2:].long().tolist()))


def init_from_env(device: str = "auto", backend: str | None = None, timeout_s: float = 1800) -> DistributedGroup | None:
    """Join the process group a launcher (``torchrun``) describes in the environment; None for one process.

    NCCL with one GPU per rank (``LOCAL_RANK``) when CUDA is used, else gloo. Idempotent: a group
    already initialised (by this function or the caller) is reused.
    """
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return None
    if not dist.is_available():
        raise BadInput("WORLD_SIZE > 1 but this torch build has no torch.distributed", "run one process")
    local_rank = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))
    name = (device or "auto").lower()
    cuda = torch.cuda.is_available() and (name == "auto" or name.startswith("cuda"))
    if cuda:
        if local_rank >= torch.cuda.device_count():
            raise BadInput(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s) on this node",
                           "launch at most one process per GPU (--nproc_per_node)")
        torch.cuda.set_device(local_rank)  # 'cuda' below means this rank's GPU
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend or ("nccl" if cuda else "gloo"), timeout=timedelta(seconds=timeout_s))
        except (ValueError, RuntimeError) as exc:
            raise BadInput(f"cannot join the process group: {exc}",
                           "launch with torchrun, which sets MASTER_ADDR, MASTER_PORT, RANK and WORLD_SIZE") from None
        atexit.register(_destroy)
    return current_group()


def current_group() -> DistributedGroup | None:
    """The initialised torch.distributed group as a :class:`DistributedGroup`; None if absent or of one process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() <= 1:
        return None
    backend = str(dist.get_backend())
    local_rank = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    dev = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    return DistributedGroup(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank, backend=backend,
                 device=dev)


def is_main() -> bool:
    """True on rank 0 of a distributed run, and in a plain single process."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(source, group: DistributedGroup):
    """This rank's share of a UAP source: every ``world``-th image of a tensor; an object with a
    ``shard(rank, world)`` method (the runner's streamed sources) shards itself; any other iterable of
    chunks is decoded whole and strided chunk by chunk (correct, but every rank decodes everything)."""
    if isinstance(source, Tensor):
        return source[group.rank::group.world].contiguous()
    if hasattr(source, "shard"):
        return source.shard(group.rank, group.world)
    return _Strided(source, group.rank, group.world)


class _Strided:
    def __init__(self, source, rank: int, world: int):
        self.source, self.rank, self.world = source, rank, world

    def __iter__(self):
        for x in self.source:
            yield x[self.rank::self.world].contiguous()
