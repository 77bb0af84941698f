"""Device-parametrised checks of robaudit's CUDA paths: on ``cuda`` every path must give the CPU's answer.

``pytest -m cuda`` selects the CUDA half (skipped without a GPU; ``benchmarks/gpu/run.sh`` runs it) and
``-m "device and not cuda"`` the CPU half, which runs in CI: the same code paths, where a fixed seed must
repeat its own CPU result. Self-contained (no conftest fixture, no data root): run.sh runs this file with
``--noconftest`` on a machine that has only the repository and its virtualenv. The model is a resnet10t
trained here for 2 epochs at 32 px on the embedded ``pneumonia-mini`` task (a real decision boundary, in
seconds on 2 CPU cores).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch

from robaudit.attacks.uap import build_uap  # also registers the UAP methods
from robaudit.attacks.uap.registry import lookup, method_names
from robaudit.core.errors import BadInput

CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not CUDA, reason="no CUDA")])]
pytestmark = pytest.mark.device

NAME, SIZE = "pneumonia-mini_resnet10t_random", 32
#: one UAP cell, small enough for CI; every device runs exactly this spec (plus norm, zeta, method, target)
RUN = dict(model=NAME, source="train", source_limit=64, eval_limit=160, max_iter=2, batch_size=32, controls=2, seed=0)
#: candidate zetas; the first where the compared runs must be identical (see _zeta). Larger ones put this
#: fragile model where same-norm uniform noise alone fools half the images (a degenerate comparison).
ZETAS = (0.04, 0.02, 0.06)
#: largest allowed difference between a device's rate and the CPU's (fraction of the images)
TOL = 0.03
PERSAMPLE_N = 48


def _batched(name: str) -> bool:
    try:
        lookup(name, "batched")
        return True
    except BadInput:
        return False


METHODS = [m for m in method_names() if _batched(m)]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A private model store (ROBAUDIT_HOME) holding NAME; one torch thread (tiny models: threads cost more)."""
    from robaudit.models.train import TrainConfig, train_model

    saved = {k: os.environ.get(k) for k in ("ROBAUDIT_HOME", "HF_HUB_OFFLINE")}
    os.environ.update(ROBAUDIT_HOME=str(tmp_path_factory.mktemp("device-home")), HF_HUB_OFFLINE="1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    train_model(NAME, TrainConfig(epochs=2, image_size=SIZE, batch_size=64), device="cpu", quiet=True, resume=False)
    yield NAME
    torch.set_num_threads(threads)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _run(device: str, **kw):
    from robaudit.core.specs import make_spec
    from robaudit.eval.run import run_uap

    return run_uap(make_spec(**(RUN | kw | {"device": device})), quiet=True).result


@pytest.fixture(scope="module")
def on_cpu(store):
    """``on_cpu(**spec)``: the CPU result of RUN with ``spec`` (computed once per module)."""
    cache: dict = {}

    def get(**kw):
        key = tuple(sorted(kw.items()))
        if key not in cache:
            cache[key] = _run("cpu", **kw)
        return cache[key]

    return get


def _margin(ref) -> float:
    """How far the CPU result's grade is from flipping: points between its lower bound and the control's upper
    bound, and between its pessimistic effect and the nearest severity threshold (0 when only p decides)."""
    from robaudit.grading import THRESHOLDS, assess

    a = assess(ref)
    gap = a.ci[0] - a.control_ci[1]
    if not a.beyond_control:
        return -gap if gap < 0 else 0.0
    return min(gap, *(abs(a.effect_lower - t) for _, t in THRESHOLDS))


def _zeta(on_cpu, exact: bool, **kw) -> float:
    """ZETAS[0] where the compared runs must be identical (the CPU half); else the candidate whose CPU grade is
    farthest from a boundary, where the grade is worth comparing (see _same_verdict)."""
    if exact:
        return ZETAS[0]
    return max(ZETAS, key=lambda z: _margin(on_cpu(**kw, zeta=z)))


def _same_verdict(ref, got, device: str) -> None:
    """Computed on ``device``, rates within TOL of the CPU's, and the CPU's severity grade.

    The grade must match wherever the CPU grade is more than TOL from flipping (``_margin``); nearer, a rate
    difference the test allows could flip it by itself, and the rate check is the test. On the CPU (identical
    runs) it must always match.
    """
    from robaudit.grading import assess

    assert got.attack.device.startswith(device)
    a, b = assess(ref), assess(got)
    if device == "cpu" or _margin(ref) > TOL:
        assert b.severity == a.severity, (f"{device}: {b.severity} ({b.reason}) vs cpu: {a.severity} "
                                          f"({a.reason}); cpu margin {_margin(ref):.3f}")
    assert abs(b.value - a.value) <= TOL, f"{a.measure} {b.value:.3f} on {device} vs {a.value:.3f} on cpu"
    fr, fr_ref = got.metrics.fooling_rate.value, ref.metrics.fooling_rate.value
    assert abs(fr - fr_ref) <= TOL, f"fooling rate {fr:.3f} on {device} vs {fr_ref:.3f} on cpu"


def _cell(method: str, norm: str, targeted: bool = False) -> dict:
    return dict(method=method, norm=norm, target="normal" if targeted else None)


@pytest.mark.parametrize("targeted", [False, True], ids=["untargeted", "targeted"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("device", DEVICES)
def test_uap_method_gives_the_cpu_verdict(device, method, norm, targeted, on_cpu):
    """Every batched UAP method, run end to end (run_uap) on the device: the CPU's verdict, rates within 3 points.

    Not bit-identical: FGSM and sign-SGD steps are gradient *signs*, and DeepFool's stop rule a comparison,
    so the float rounding of another device's kernels (cuDNN, TF32 convolutions) flips some pixels' steps
    and moves a few images across the decision boundary; 3 percentage points of the test images allow
    that, not a wrong device path (a lost step, a stale v, a wrong label), which moves rates far more.
    On the CPU the same seed must reproduce the same numbers.
    """
    kw = _cell(method, norm, targeted)
    kw["zeta"] = _zeta(on_cpu, device == "cpu", **kw)
    _same_verdict(on_cpu(**kw), _run(device, **kw), device)


@pytest.mark.parametrize("device", DEVICES)
def test_amp_bfloat16_keeps_the_float32_verdict(device, on_cpu):
    """--amp builds under bfloat16 autocast (channels-last on CUDA); judged in float32 its fooling rate lies in
    the float32 CPU rate's 95% interval (bfloat16 moves more than rounding), with the CPU's grade where that
    grade is more than TOL from flipping."""
    from robaudit.grading import assess

    kw = _cell("fgsm", "linf")
    kw["zeta"] = _zeta(on_cpu, False, **kw)
    ref, got = on_cpu(**kw), _run(device, amp=True, **kw)
    assert got.attack.device.startswith(device)
    assert any("bfloat16" in n for n in got.notes)
    if _margin(ref) > TOL:
        assert assess(got).severity == assess(ref).severity, f"cpu margin {_margin(ref):.3f}"
    lo, hi = ref.metrics.fooling_rate.ci
    assert lo <= got.metrics.fooling_rate.value <= hi


def _persample(device: str, backend: str):
    from robaudit.attacks.persample import run_attack
    from robaudit.data import load_task
    from robaudit.models import load_model

    lm = load_model(NAME, device=device)
    x, y = load_task("pneumonia-mini").tensors("test", size=SIZE, limit=PERSAMPLE_N, seed=0)
    return run_attack(lm.module, x, y, attack="pgd", eps=[0.01], norm="linf", backend=backend, steps=5,
                      batch_size=PERSAMPLE_N)


@pytest.fixture(scope="module")
def persample_cpu(store):
    cache: dict = {}

    def get(backend: str):
        if backend not in cache:
            cache[backend] = _persample("cpu", backend)
        return cache[backend]

    return get


@pytest.mark.parametrize("backend", ["torchattacks", "foolbox", "art"])
@pytest.mark.parametrize("device", DEVICES)
def test_persample_backend_runs_on_the_device(device, backend, persample_cpu):
    """PGD-5 (L-inf 0.01) through each backend on the device: the CPU's robust accuracy within 2 images."""
    ref, got = persample_cpu(backend), _persample(device, backend)
    assert got.attack.device.startswith(device) and got.attack.backend == backend
    ra, ra_ref = got.per_eps[0].robust_accuracy.value, ref.per_eps[0].robust_accuracy.value
    assert abs(ra - ra_ref) <= 2 / PERSAMPLE_N + 1e-9, f"robust accuracy {ra:.3f} on {device} vs {ra_ref:.3f}"


@pytest.mark.parametrize("device", DEVICES)
def test_ray_executor_runs_a_cell_on_the_device(device, on_cpu, tmp_path):
    """One audit cell as a Ray task on a local cluster (a CUDA cell asks Ray for the GPU): the CPU's verdict.
    The cluster is declared with its GPU, so that a GPU Ray cannot see fails instead of waiting for one."""
    ray = pytest.importorskip("ray")
    from robaudit.auditing.cells import make_cell
    from robaudit.auditing.ray_executor import run_cells_ray
    from robaudit.core.specs import make_spec

    kw = _cell("fgsm", "l2")
    kw["zeta"] = _zeta(on_cpu, device == "cpu", **kw)
    cell = make_cell(make_spec(**(RUN | kw | {"device": device})), tmp_path)
    ray.init(num_cpus=2, num_gpus=int(device == "cuda"), include_dashboard=False, log_to_driver=False)
    try:
        run_cells_ray([cell], quiet=True)
    finally:
        ray.shutdown()
    assert cell.error is None and (cell.dir / "result.json").is_file()
    _same_verdict(on_cpu(**kw), cell.result, device)


@pytest.mark.parametrize("device", DEVICES)
def test_cli_under_torchrun_on_the_device(device, on_cpu, tmp_path):
    """``torchrun --nproc_per_node=1 -m robaudit.cli uap --device D``: the CPU's verdict. A world of one runs
    without a process group (init_from_env returns None); the next test drives the group's collectives."""
    from robaudit.core.results import Result

    kw = _cell("sgd", "l2")
    kw["zeta"] = _zeta(on_cpu, device == "cpu", **kw)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    flags = {"--model": NAME, "--source": "train", "--source-limit": RUN["source_limit"],
             "--eval-limit": RUN["eval_limit"], "--max-iter": RUN["max_iter"], "--batch-size": RUN["batch_size"],
             "--controls": RUN["controls"], "--seed": RUN["seed"], "--method": "sgd", "--norm": "l2",
             "--zeta": kw["zeta"], "--device": device, "--out": tmp_path / "run"}
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", f"--master_port={port}",
           "--master_addr=127.0.0.1", "-m", "robaudit.cli", "uap", *(str(a) for kv in flags.items() for a in kv),
           "--json", "--no-report"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = Result.model_validate_json(proc.stdout)
    assert "distributed" not in got.environment
    _same_verdict(on_cpu(**kw), got, device)


@pytest.mark.parametrize("device", DEVICES)
def test_process_group_collectives_on_the_device(device, store, monkeypatch):
    """The distributed path of every method (all_sum, broadcast, gather_ordered: NCCL on CUDA, gloo on CPU) as
    the one rank of a process group: its UAP equals the local build. A world of one joins no group in the
    product (one GPU needs none), so this test joins it and hands build_uap a one-rank DistributedGroup."""
    import torch.distributed as dist

    from robaudit.attacks.uap import build as build_mod
    from robaudit.attacks.uap.group import DistributedGroup
    from robaudit.data import load_task
    from robaudit.models import load_model

    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    backend = "nccl" if device == "cuda" else "gloo"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        dev = torch.device("cuda", torch.cuda.current_device()) if device == "cuda" else torch.device("cpu")
        group = DistributedGroup(rank=0, world=1, local_rank=0, backend=dist.get_backend(), device=dev)
        monkeypatch.setattr(build_mod, "current_group", lambda: group)
        model = load_model(NAME, device=device).module
        x, _ = load_task("pneumonia-mini").tensors("train", size=SIZE, limit=48, seed=0)
        for m in METHODS:
            kw = dict(method=m, norm="linf", eps=0.03, max_iter=2, batch_size=16, seed=0)
            a, b = build_uap(model, x, distributed=True, **kw), build_uap(model, x, **kw)
            assert a.v.abs().max() > 0 and a.images_seen == b.images_seen, m
            diff = float((a.v - b.v).abs().max())
            assert diff <= 1e-5, f"{m}: |v(group) - v(local)| = {diff:.2e}"
        assert dist.get_backend() == backend
    finally:
        dist.destroy_process_group()
