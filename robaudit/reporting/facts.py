"""Facts of a document a reviewer's summary needs before the report is graded: the harm figure a summary leads
with, model and data identity, and the bill of materials (software, hashes, seeds, run time). Read from the
cells alone, so the report's JSON (build) and its pages (review, html) share one reading."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from robaudit.core.fmt import ci_text, pct
from robaudit.core.results import Result

#: software a reviewer's bill of materials names (environment keys of a result)
BOM_KEYS = ("robaudit", "python", "torch", "torchvision", "timm", "adversarial-robustness-toolbox", "foolbox",
            "torchattacks", "numpy", "scipy", "statsmodels", "platform", "device", "gpu", "torch_threads")


def fmt_value(x: Any) -> str:
    """A setting as text (floats in 4 significant digits, lists comma-joined, booleans yes/no)."""
    if x is None:
        return ""
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:.4g}"
    if isinstance(x, (list, tuple)):
        return ", ".join(fmt_value(v) for v in x)
    return str(x)


def _unique(items):
    seen, out = set(), []
    for key, item in items:
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out


def harm_line(result: Result) -> str | None:
    """The harm figure a summary leads with: the critical class's missed-disease rate, or None."""
    h = result.harm.critical if result.harm is not None else None
    if h is None:
        return None
    r = h.missed_disease
    ctrl = f" (random control {pct(h.control_missed_disease)})" if h.control_missed_disease is not None else ""
    return (f"missed {h.name}: {pct(r.value)} {ci_text(r.ci)} of {r.n} correctly detected {h.name} images turned "
            f"into another class{ctrl}")


def model_identity(cells: Sequence[Result]) -> list[dict[str, Any]]:
    """Each audited model once: name, arch, sha256, format, preprocessing and where each value came from."""
    out = []
    for m in _unique([(c.model.name + (c.model.sha256 or ""), c.model) for c in cells]):
        pre = getattr(m, "preprocessing", None) or {}
        src = pre.get("source") if isinstance(pre.get("source"), dict) else {}
        fields = {"mean": m.mean, "std": m.std, "input_size": m.input_size, "channels": m.channels}
        fields |= {k: v for k, v in pre.items() if k not in ("source", "classes")}
        items = [f"{k} {fmt_value(v)}" + (f" ({src[k]})" if k in src else "") for k, v in fields.items()
                 if v is not None]
        out.append({"name": m.name, "arch": m.arch, "init": m.init, "transfer": m.transfer or "",
                    "sha256": m.sha256 or "not recorded", "format": getattr(m, "format", None) or "not recorded",
                    "preprocessing": "; ".join(items) or "not recorded",
                    "classes": ", ".join(m.classes) + (f" ({src['classes']})" if "classes" in src else ""),
                    "onnx_parity": getattr(m, "onnx_parity", None)})
    return out


def data_identity(cells: Sequence[Result]) -> list[dict[str, Any]]:
    """Each evaluated image set once: sha256, split, images per class."""
    out = []
    for c in _unique([(f"{c.data.name}/{c.data.split}/{c.data.sha256}/{c.data.n}", c) for c in cells]):
        d, m = c.data, c.metrics
        counts = ", ".join(f"{k.name} {k.n}" for k in m.per_class) if m is not None and m.per_class else ""
        out.append({"name": d.name, "split": d.split, "n": d.n, "sha256": d.sha256 or "not recorded",
                    "counts": counts, "path": d.path or "", "view": d.view or ""})
    return out


def bill_of_materials(cells: Sequence[Result], meta: dict[str, Any]) -> dict[str, Any]:
    """Machine-readable: software versions, models and data by hash, seeds and run time, from the results."""
    software: dict[str, list[str]] = {}
    for c in cells:
        env = dict(c.environment)
        env.setdefault("robaudit", c.robaudit_version)
        for k in BOM_KEYS:
            if k in env and str(env[k]) not in software.setdefault(k, []):
                software[k].append(str(env[k]))
    seconds = [c.attack.seconds for c in cells if c.attack.seconds is not None]
    run_seconds = meta.get("seconds") if isinstance(meta.get("seconds"), (int, float)) else None
    return {
        "software": {k: v[0] if len(v) == 1 else v for k, v in software.items() if v},
        "models": [{"name": m["name"], "arch": m["arch"], "sha256": m["sha256"], "format": m["format"]}
                   for m in model_identity(cells)],
        "data": [{"name": d["name"], "split": d["split"], "n": d["n"], "sha256": d["sha256"]}
                 for d in data_identity(cells)],
        "seeds": sorted({c.attack.seed for c in cells if c.attack.seed is not None}),
        "attack_seconds": round(sum(seconds), 1) if seconds else None,
        "run_seconds": round(float(run_seconds), 1) if run_seconds is not None else None,
    }
