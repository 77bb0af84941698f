"""Scaling one UAP: across processes with ``torch.distributed``, and on one device with mixed precision.

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

One device faster: :func:`fast_model` wraps a model for bfloat16 autocast (``--amp``; the
perturbation stays float32 and the reported metrics are measured in float32 on the unwrapped model)
with channels-last memory on CUDA, where tensor cores want it. :func:`suggest_batch_size` finds the
throughput knee on a GPU; the batch size changes the UAP (it is part of the cell hash), so it is a
suggestion to pass explicitly, never chosen silently.
"""

from __future__ import annotations

import atexit
import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta

import torch
from torch import Tensor, nn

from robaudit.errors import BadInput


# ---- the process group ----------------------------------------------------------------------------
@dataclass
class Group:
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

    def info(self) -> dict:
        """Recorded in the result's environment."""
        return {"world_size": self.world, "backend": self.backend,
                "batch": "batch_size is the total mini-batch over all ranks"}

    # collectives ---------------------------------------------------------------------------------
    def all_sum(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        """Sum every tensor over the ranks in one collective; returns them in their own dtype and device."""
        import torch.distributed as dist

        flat = torch.cat([t.detach().reshape(-1).to(self.device, torch.float32) for t in tensors])
        dist.all_reduce(flat)
        out, at = [], 0
        for t in tensors:
            out.append(flat[at:at + t.numel()].reshape(t.shape).to(t.device, t.dtype))
            at += t.numel()
        return tuple(out)

    def sum_count(self, value) -> float:
        """A scalar count summed over the ranks (float64: exact for any realistic image count)."""
        import torch.distributed as dist

        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t.item())

    def broadcast(self, t: Tensor) -> Tensor:
        """Rank 0's value of ``t`` on every rank (the starting v: a resumed partial may exist on rank 0 only)."""
        import torch.distributed as dist

        buf = t.detach().to(self.device, copy=True).contiguous()
        dist.broadcast(buf, src=0)
        return buf.to(t.device, t.dtype)

    def _all_gather_sizes(self, n: int) -> Tensor:
        import torch.distributed as dist

        sizes = torch.zeros(self.world, dtype=torch.float64, device=self.device)
        sizes[self.rank] = n
        dist.all_reduce(sizes)
        return sizes.long().cpu()

    def gather_ordered(self, rows: Tensor, positions: Tensor) -> Tensor:
        """Every rank's ``rows`` (k, ...) concatenated and sorted by their global ``positions`` (k,)."""
        import torch.distributed as dist

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
        """``UAPRun.batches`` for a rank: this rank's members of each global shuffled mini-batch."""
        n, owner, local = self.layout(len(x))
        order = torch.randperm(n, generator=run.generator)
        for i in range(0, n, run.batch_size):
            g = order[i:i + run.batch_size]
            mine = (owner[g] == self.rank).nonzero().flatten()
            idx = local[g[mine]]
            self.batch_n, self.positions = len(g), mine
            yield x[idx].to(run.device, torch.float32), run.labels(y[idx]).to(run.device)

    def chunks(self, source: Iterable[Tensor]) -> Iterator[Tensor]:
        """Step the ranks' chunk streams together: one chunk per rank per round (an empty one for a rank
        whose shard ran out) until every shard is done. A bad chunk on any rank stops all ranks."""
        import torch.distributed as dist

        from robaudit.attacks.uap import _check_chunk

        it = iter(source)
        while True:
            x = next(it, None)
            problem = None
            if x is not None:
                try:
                    x = _check_chunk(x)
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


def init_from_env(device: str = "auto", backend: str | None = None, timeout_s: float = 1800) -> Group | None:
    """Join the process group a launcher (``torchrun``) describes in the environment; None for one process.

    NCCL with one GPU per rank (``LOCAL_RANK``) when CUDA is used, else gloo. Idempotent: a group
    already initialised (by this function or the caller) is reused.
    """
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return None
    import torch.distributed as dist

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


def current_group() -> Group | None:
    """The initialised torch.distributed group as a :class:`Group`; None if absent or of one process."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() <= 1:
        return None
    backend = str(dist.get_backend())
    local_rank = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    dev = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    return Group(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank, backend=backend,
                 device=dev)


def is_main() -> bool:
    """True on rank 0 of a distributed run, and in a plain single process."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _destroy() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(source, group: Group):
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


# ---- one device, faster ---------------------------------------------------------------------------
def amp_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 where the device has it. float16 would need loss scaling for input gradients; refused."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise BadInput("--amp needs bfloat16, which this GPU lacks", "drop --amp (Ampere or newer GPUs have it)")
    if device.type not in ("cuda", "cpu"):
        raise BadInput(f"--amp is available on cuda and cpu, not {device.type}", "drop --amp")
    return torch.bfloat16


class Autocast(nn.Module):
    """``model`` under autocast; returns float32 logits."""

    def __init__(self, model: nn.Module, device_type: str, dtype: torch.dtype):
        super().__init__()
        self.model, self.device_type, self.dtype = model, device_type, dtype

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.model(x).float()


@contextmanager
def fast_model(model: nn.Module, device, amp: bool = False):
    """Yield ``model`` (amp off) or an :class:`Autocast` wrapper of it; on CUDA the weights are made
    channels-last for the duration and restored afterwards, so later float32 metrics are unchanged."""
    if not amp:
        yield model
        return
    from robaudit.models.normalize import channels_last_model

    device = torch.device(device)
    dtype = amp_dtype(device)
    with channels_last_model(model, enabled=device.type == "cuda") as net:
        yield Autocast(net, device.type, dtype).eval()


def grad_throughput(model: nn.Module, shape: tuple[int, int, int], batch_size: int, device, steps: int = 10,
                    warmup: int = 2) -> float:
    """Images per second of the model's own forward + backward to the input (the UAP loop's core)."""
    device = torch.device(device)
    x = torch.rand((batch_size, *shape), device=device)
    label = torch.zeros(batch_size, dtype=torch.long, device=device)

    def step():
        xa = x.clone().requires_grad_(True)
        loss = nn.functional.cross_entropy(model(xa), label)
        torch.autograd.grad(loss, xa)

    for _ in range(warmup):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return steps * batch_size / (time.perf_counter() - t0)


def suggest_batch_size(model: nn.Module, shape: tuple[int, int, int], device, candidates=(16, 32, 64, 128, 256, 512),
                       gain: float = 1.1) -> tuple[int, dict[int, float]]:
    """The smallest batch size past which throughput grows by less than ``gain`` x, and the images/s of
    each size tried (a size that runs out of GPU memory ends the search)."""
    device = torch.device(device)
    rates: dict[int, float] = {}
    for b in candidates:
        try:
            rates[b] = grad_throughput(model, shape, b, device, steps=5)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            break
    if not rates:
        raise BadInput(f"no batch size in {list(candidates)} fits on {device}")
    sizes = sorted(rates)
    best = sizes[0]
    for b in sizes[1:]:
        if rates[b] < gain * rates[best]:
            break
        best = b
    return best, rates


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
