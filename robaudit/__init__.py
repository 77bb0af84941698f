"""robaudit: adversarial-robustness audits of transfer-learned medical image classifiers.

``import robaudit as ra``: :class:`ra.Model` wraps any classifier with its preprocessing, :class:`ra.Data`
holds the medical images, :func:`ra.uap` runs the audit. Names load lazily (PEP 562), so importing a
submodule or the CLI does not import the whole stack. The contract is ``__all__``; see docs/api.md.
"""

from __future__ import annotations

__version__ = "0.9.0"

__all__ = ["BadInput", "Data", "Interrupted", "Model", "ModelCheck", "Result", "RobauditError", "RuntimeFailure",
           "UAPConfig", "UAPRun", "UnsafeCheckpoint", "__version__", "attack", "audit", "check", "gate", "load_data",
           "load_model", "load_result", "report", "uap"]

def __getattr__(name: str):
    if name in __all__:  # resolved at first use: every layer may import robaudit (for __version__) without a cycle
        import importlib

        return getattr(importlib.import_module("robaudit.api"), name)
    raise AttributeError(f"module 'robaudit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
