"""Provenance recorded in every result and card: versions, the environment, the command, the time."""

from __future__ import annotations

import os
import platform
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import timm
import torch

from robaudit import __version__


def now_iso() -> str:
    """The current UTC time, ISO 8601 to the second (``created`` of results, audits and cards)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def run_stamp() -> str:
    """Local time as ``YYYYmmdd-HHMMSS``, the first part of default output folder names."""
    return datetime.now().strftime("%Y%m%d-%H%M%S")


def versions() -> dict[str, str]:
    """Library versions that change numbers (recorded in model cards)."""

    return {"robaudit": __version__, "torch": torch.__version__, "timm": timm.__version__,
            "python": platform.python_version()}


def training_conditions(device) -> dict[str, object]:
    """What decides trained weights bit for bit besides the seed and the data: library versions, the number of
    torch threads (reduction order in the CPU kernels), the CPU instruction set torch dispatches to, the device.
    The same seed under other conditions trains other weights (measured: another CPU, 69% vs 77% accuracy)."""

    dev = getattr(device, "type", str(device))
    out: dict[str, object] = {"torch": torch.__version__, "timm": timm.__version__, "torch_threads":
                              torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                              "device": dev}
    if dev == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def condition_changes(recorded: dict, current: dict) -> list[str]:
    """The training conditions that differ between a stored model's card and now, as ``key: then -> now``
    (nothing when the card predates the record)."""

    return [f"{k} {recorded[k]} -> {current.get(k)}" for k in recorded if str(recorded[k]) != str(current.get(k))]


def environment(device) -> dict:
    """Where a result was computed: the training conditions (versions, torch threads, CPU instruction set, device
    and GPU name) plus robaudit, Python, NumPy and the platform."""

    return {"robaudit": __version__, "python": platform.python_version(), **training_conditions(device),
            "numpy": np.__version__, "platform": platform.platform(), "device": str(device)}


def command_line() -> str:
    """The robaudit command line being run ('' when called as a library)."""
    argv = sys.argv[1:] if sys.argv and Path(sys.argv[0]).name in ("robaudit", "__main__.py") else None
    return "robaudit " + shlex.join(argv) if argv else ""


def reports_root() -> Path:
    """Where default output folders go: ``$ROBAUDIT_REPORTS`` or ``reports/``."""
    return Path(os.environ.get("ROBAUDIT_REPORTS", "reports"))
