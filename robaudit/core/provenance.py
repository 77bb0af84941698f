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


def environment(device) -> dict:
    """Where a result was computed: versions, platform, device (and GPU name), torch threads."""

    env = {"robaudit": __version__, "python": platform.python_version(), "torch": torch.__version__,
           "timm": timm.__version__, "numpy": np.__version__, "platform": platform.platform(),
           "device": str(device), "torch_threads": torch.get_num_threads()}
    if getattr(device, "type", str(device)) == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def command_line() -> str:
    """The robaudit command line being run ('' when called as a library)."""
    argv = sys.argv[1:] if sys.argv and Path(sys.argv[0]).name in ("robaudit", "__main__.py") else None
    return "robaudit " + shlex.join(argv) if argv else ""


def reports_root() -> Path:
    """Where default output folders go: ``$ROBAUDIT_REPORTS`` or ``reports/``."""
    return Path(os.environ.get("ROBAUDIT_REPORTS", "reports"))
