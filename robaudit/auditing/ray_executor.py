"""Audit cells as Ray tasks: ``robaudit audit --executor ray [--address ADDR]`` (``pip install 'robaudit[ray]'``).

Each cell runs :func:`robaudit.auditing.cells.run_cell` inside a Ray task, so it writes the same
``cells/<hash>/`` folder (result.json, uap.npy, predictions.npz, or error.json) as the local
executor, and ``--resume`` picks up whatever finished, whichever executor or machine ran it. A cell
whose spec runs on CUDA asks Ray for one GPU (``device = "auto"`` too, when the cluster has GPUs)
and uses the GPU Ray assigns; other cells ask for one CPU, plus one per decoding worker.

Workers need robaudit installed, and on a multi-node cluster the audit folder, the model store
(``ROBAUDIT_HOME``) and the data root must be on a file system every node mounts at the same path:
the driver passes those paths and its working directory to each task. Ctrl-C cancels the running
cells (each saves its partial perturbation, as locally) and keeps every finished one.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from robaudit.auditing.cells import Cell, record_error, run_cell
from robaudit.core import locations
from robaudit.core.console import progress, warn
from robaudit.core.errors import BadInput, RuntimeFailure

#: environment variables a cell task inherits from the driver (paths and offline switches)
PASSED_ENV = ("ROBAUDIT_HOME", "ROBAUDIT_DATA", "ROBAUDIT_REPORTS", "HF_HUB_OFFLINE", "HF_HOME", "TORCH_HOME",
              "MPLBACKEND")


#: seconds a cancelled cell gets to save its partial perturbation before the driver gives up on it
CANCEL_GRACE_S = 30


def import_ray():
    """The ``ray`` module, or a one-line BadInput saying how to install it."""
    try:
        import ray
    except ImportError:
        raise BadInput("--executor ray needs Ray, which is not installed", "pip install 'robaudit[ray]'") from None
    return ray


def cell_resources(spec, cluster_gpus: float) -> dict:
    """Ray resources of one cell: one GPU for a CUDA cell, else none; one CPU plus its decoding workers."""
    device = (spec.device or "auto").lower()
    gpu = device.startswith("cuda") or (device == "auto" and cluster_gpus > 0)
    return {"num_cpus": 1 + spec.workers, "num_gpus": 1 if gpu else 0}


def driver_env() -> dict:
    """What a cell task needs from the driver: its working directory and the robaudit paths it resolved."""
    env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
    env["ROBAUDIT_HOME"] = str(locations.home().resolve())
    root = locations.data_root(required=False)  # honours --data-root
    if root is not None:
        env["ROBAUDIT_DATA"] = str(root.resolve())
    return {"cwd": os.getcwd(), "env": env}


def run_cell_task(cell: Cell, context: dict):
    """Body of a Ray task: run one cell where the driver would, return ``(result, error)``."""
    os.environ.update(context["env"])
    locations.set_data_root(context["env"].get("ROBAUDIT_DATA"))
    os.chdir(context["cwd"])
    threads = int(float(os.environ.get("OMP_NUM_THREADS", "0") or 0))  # Ray sets it to the task's CPUs
    if threads > 0:
        torch.set_num_threads(threads)
    if cell.spec.device.lower().startswith("cuda"):  # 'cuda:3' on the driver = the one GPU Ray gave us here
        cell.spec = cell.spec.model_copy(update={"device": "cuda"})
    run_cell(cell)
    return cell.result, cell.error


def train_model_task(name: str, config, device: str, context: dict) -> str:
    """Body of a Ray task: train one zoo model (one replicate) into the shared store; returns its sha256."""
    from robaudit.models.train import train_model

    os.environ.update(context["env"])
    locations.set_data_root(context["env"].get("ROBAUDIT_DATA"))
    os.chdir(context["cwd"])
    threads = int(float(os.environ.get("OMP_NUM_THREADS", "0") or 0))
    if threads > 0:
        torch.set_num_threads(threads)
    return train_model(name, config, device="cuda" if device.lower().startswith("cuda") else device,
                       quiet=True).weights_sha256


def train_models_ray(jobs: list[tuple[str, object]], device: str = "auto", address: str | None = None,
                     quiet: bool = False) -> None:
    """Train ``(name, TrainConfig)`` jobs as parallel Ray tasks (training replicates are independent runs).

    Each replicate is seeded by its name, so the weights are those a local ``robaudit train`` gives; an
    interrupted task resumes from its last finished epoch on the next run. The store must be on a file
    system every node mounts (see the module docstring)."""
    ray = import_ray()
    if not jobs:
        return
    started = not ray.is_initialized()
    if started:
        _init(ray, address, quiet)
    try:
        gpus = float(ray.cluster_resources().get("GPU", 0))
        gpu = device.lower().startswith("cuda") or (device.lower() == "auto" and gpus > 0)
        task = ray.remote(train_model_task)
        context = driver_env()
        pending = {task.options(name=f"robaudit-train-{name}", num_cpus=1, num_gpus=1 if gpu else 0)
                   .remote(name, cfg, device, context): name for name, cfg in jobs}
        with progress(disable=quiet) as prog:
            bar = prog.add_task(f"train {len(jobs)} model(s) on Ray", total=len(jobs), status="")
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                name = pending.pop(done[0])
                try:
                    ray.get(done[0])
                except ray.exceptions.RayError as exc:  # a training failure is the audit's failure: exit 3
                    raise RuntimeFailure(f"training {name} on Ray failed: "
                                         f"{(str(exc).strip().splitlines() or [''])[-1][:300]}",
                                         f"run 'robaudit train {name}' to see the error") from None
                prog.update(bar, advance=1, status=name)
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref)
        raise
    finally:
        if started:
            ray.shutdown()


def _init(ray, address: str | None, quiet: bool) -> None:
    local = {"include_dashboard": False} if address is None else {}  # a fresh local cluster: no dashboard
    try:
        ray.init(address=address, log_to_driver=not quiet,
                 logging_level=logging.ERROR if quiet else logging.WARNING, **local)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise BadInput(f"cannot connect to the Ray cluster at {address!r}: {exc}",
                       "start one with 'ray start --head', or drop --address for a local one") from None


def run_cells_ray(cells: list[Cell], address: str | None = None, quiet: bool = False) -> list:
    """Run ``cells`` (:class:`~robaudit.auditing.cells.Cell`) as Ray tasks; fill each ``result`` or ``error`` in place.

    Uses an already initialised Ray as it is; otherwise joins the cluster at ``address`` ('auto',
    'ray://head:10001', ...) or, with none, starts a local one, and shuts it down at the end.
    """
    ray = import_ray()
    if not cells:
        return cells
    started = not ray.is_initialized()
    if started:
        _init(ray, address, quiet)
    pending: dict = {}
    try:
        gpus = float(ray.cluster_resources().get("GPU", 0))
        task = ray.remote(run_cell_task)
        context = driver_env()
        for cell in cells:
            cell.dir = Path(cell.dir).resolve()
            res = cell_resources(cell.spec, gpus)
            if res["num_gpus"] and not gpus:
                warn(f"cell {cell.key} asks for a GPU but the Ray cluster has none yet; it waits for one")
            pending[task.options(name=f"robaudit-cell-{cell.key[:8]}", **res).remote(cell, context)] = cell
        with progress(disable=quiet) as prog:
            bar = prog.add_task(f"audit on Ray ({len(cells)} cells)", total=len(cells), status="")
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                cell = pending.pop(done[0])
                try:
                    cell.result, cell.error = ray.get(done[0])
                except ray.exceptions.RayError as exc:  # the task died (worker crash, OOM kill, node lost)
                    cell.error = _task_error(cell, exc)
                if cell.error:
                    warn(f"cell {cell.key} failed: {cell.error}")
                prog.advance(bar)
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref)  # a KeyboardInterrupt inside each running cell: it saves its partial UAP
        ray.wait(list(pending), num_returns=len(pending), timeout=CANCEL_GRACE_S)
        raise
    finally:
        if started:
            ray.shutdown()
    return cells


def _task_error(cell, exc) -> str:
    """Record a task that died without reaching run_cell's own error handling, as run_cell would."""
    first = (str(exc).strip().splitlines() or [""])[-1][:500]
    error = f"{type(exc).__name__}: {first}"
    try:
        record_error(cell, error)
    except OSError:
        cell.error = error
    return error
