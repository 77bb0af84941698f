"""Report figures (matplotlib, Agg, no pyplot state): each returns a :class:`Plot` or None when its data
is absent. Images are PNG bytes for inlining as ``data:`` URIs; artifacts are read only from inside the
run folder and only when they really are images or ``.npy`` arrays."""

from __future__ import annotations

import base64
import io
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from robaudit.core.errors import BadInput
from robaudit.core.files import read_npy
from robaudit.core.results import Result
from robaudit.eval.artifacts import amplified
from robaudit.grading import cell_label, source_kind
from robaudit.reporting.build import Report

MAX_SERIES = 10
MAX_ARTIFACT_BYTES = 25 * 1024 * 1024
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
           "#bcbd22", "#7f7f7f")


@dataclass(frozen=True)
class Plot:
    """One figure: a stable id, a title, a caption and the image bytes."""

    id: str
    title: str
    caption: str
    png: bytes
    mime: str = "image/png"

    @property
    def data_uri(self) -> str:
        return f"data:{self.mime};base64,{base64.b64encode(self.png).decode('ascii')}"


def _text(s: Any, limit: int = 32) -> str:
    """Plain text for matplotlib: no mathtext (``$``), bounded length."""
    s = str(s).replace("\n", " ")
    if len(s) > limit:
        s = s[: limit - 1] + "\u2026"
    return s.replace("$", r"\$")


def _figure(w: float = 7.0, h: float = 3.6, ncols: int = 1):
    fig = Figure(figsize=(w, h), dpi=110, layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _pct_axis(ax, top: float = 1.0) -> None:
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_ylim(0, top)
    ax.grid(axis="y", alpha=0.3)


def _yerr(rate) -> tuple[float, float]:
    """Error-bar lengths below and above a rate's value (never negative)."""
    return max(0.0, rate.value - rate.ci[0]), max(0.0, rate.ci[1] - rate.value)


# ----------------------------------------------------------------------------------- rate vs zeta


def rate_vs_zeta(report: Report) -> Plot | None:
    """Non-targeted fooling rate vs zeta, one line per (model, source, method), per norm, with the
    random-control interval as a band."""
    cells = [c for c in report.cells if c.attack.kind == "uap" and not c.attack.targeted
             and c.attack.zeta is not None and c.metrics is not None]
    if not cells:
        return None
    norms = sorted({c.attack.norm for c in cells})
    fig, axes = _figure(4.2 * len(norms) + 1.6, 3.6, ncols=len(norms))
    for ax, norm in zip(axes, norms, strict=True):
        series: dict[tuple, list[Result]] = defaultdict(list)
        controls: dict[str, list[Result]] = defaultdict(list)
        for c in cells:
            if c.attack.norm == norm:
                series[(c.model.name, c.attack.source or "?", c.attack.method)].append(c)
                if c.control is not None:
                    controls[c.model.name].append(c)
        for j, (key, group) in enumerate(sorted(series.items())[:MAX_SERIES]):
            group.sort(key=lambda c: c.attack.zeta)
            x = [c.attack.zeta * 100 for c in group]
            y = [c.metrics.fooling_rate.value for c in group]
            lo = [_yerr(c.metrics.fooling_rate)[0] for c in group]
            hi = [_yerr(c.metrics.fooling_rate)[1] for c in group]
            label = _text(" / ".join(key) if len(series) > 1 else f"UAP ({key[1]})", 48)
            ax.errorbar(x, y, yerr=[lo, hi], marker="o", capsize=3, color=_COLORS[j % len(_COLORS)], label=label)
        for j, (model, group) in enumerate(sorted(controls.items())[:MAX_SERIES]):
            by_zeta: dict[float, Result] = {}
            for c in group:
                by_zeta.setdefault(round(c.attack.zeta, 9), c)
            zs = sorted(by_zeta)
            lo = [by_zeta[z].control.fooling_rate.ci[0] for z in zs]
            hi = [by_zeta[z].control.fooling_rate.ci[1] for z in zs]
            mean = [by_zeta[z].control.fooling_rate.value for z in zs]
            x = [z * 100 for z in zs]
            label = _text("random control" + (f" ({model})" if len(controls) > 1 else ""), 48)
            if len(zs) > 1:
                ax.fill_between(x, lo, hi, color="0.6", alpha=0.25 + 0.1 * j, label=label)
                ax.plot(x, mean, color="0.45", lw=1, ls="--")
            else:
                yerr = [[max(0.0, mean[0] - lo[0])], [max(0.0, hi[0] - mean[0])]]
                ax.errorbar(x, mean, yerr=yerr, marker="s", color="0.45", capsize=6, ls="none", label=label)
        zetas = sorted({round(c.attack.zeta * 100, 6) for c in cells if c.attack.norm == norm})
        ax.set_xticks(zetas, [f"{z:g}" for z in zetas])
        if len(zetas) == 1:
            ax.set_xlim(zetas[0] * 0.5, zetas[0] * 1.5)
        ax.set_title(f"{'L2' if norm == 'l2' else 'Linf'} norm")
        ax.set_xlabel("zeta (% of the mean image norm)")
        ax.set_ylabel("fooling rate")
        _pct_axis(ax)
        ax.legend(fontsize=7, loc="upper left")
    return Plot("rate-vs-zeta", "Fooling rate vs perturbation size",
                "Each point is one UAP with its confidence interval; the grey band is the interval of the "
                "random control at the same norm (repeated draws).", _png(fig))


# ------------------------------------------------------------------------------------- trajectory
def trajectory(report: Report) -> Plot | None:
    """Selection and test success vs source images seen, one panel per UAP cell that recorded a trajectory
    (at most four), with the random control's interval as a band: the published figure's shape."""
    cells = [c for c in report.cells if c.attack.kind == "uap" and c.attack.selection is not None
             and c.attack.selection.trajectory][:4]
    if not cells:
        return None
    fig, axes = _figure(3.4 * len(cells) + 0.8, 3.4, ncols=len(cells))
    for ax, c in zip(axes, cells, strict=True):
        sel = c.attack.selection
        pts = sel.trajectory
        x = [p.images for p in pts]
        ax.plot(x, [p.selection_rate for p in pts], marker=".", color=_COLORS[0],
                label=_text(f"selection ({sel.split}, n={sel.n})", 40))
        if all(p.test_rate is not None for p in pts):
            ax.plot(x, [p.test_rate for p in pts], marker=".", color=_COLORS[1], label="reported split")
        ax.axvline(sel.best_at, color="0.3", lw=0.8, ls=":", label="chosen v")
        ctrl = c.control_rate()
        if ctrl is not None:
            ax.axhspan(ctrl.ci[0], ctrl.ci[1], color="0.6", alpha=0.3, label="random control")
        ax.set_title(_text(cell_label(c), 44), fontsize=8)
        ax.set_xlabel("source images seen")
        ax.set_ylabel("targeted success" if c.attack.targeted else "fooling rate")
        _pct_axis(ax)
        ax.legend(fontsize=6, loc="lower right")
    return Plot("trajectory", "Attack strength vs the attacker's photo budget",
                "The fooling rate of v on the selection images (held out from the build; for a zero-knowledge "
                "attacker, held-out photos on the surrogate) and on the reported split, at each check of the "
                "build; the dotted line marks the v that was kept, the band the random control.", _png(fig))


# -------------------------------------------------------------------------------- init / transfer


def _config_label(c: Result) -> str:
    return f"{c.model.init}" + (f" / {c.model.transfer}" if c.model.transfer else "")


def init_comparison(report: Report) -> Plot | None:
    """ImageNet vs random initialisation (and transfer configurations) on otherwise matched cells."""
    groups: dict[tuple, dict[str, Result]] = defaultdict(dict)
    pooled = [c for c in report.cells if c.pooled is not None]  # with replicates, compare the pooled rows
    for c in pooled or report.cells:
        if c.attack.kind != "uap" or c.metrics is None:
            continue
        a = c.attack
        key = (c.model.arch, c.data.name, a.source, a.norm, a.zeta, a.method, a.targeted, a.target)
        groups[key].setdefault(_config_label(c), c)
    pairs = {k: v for k, v in groups.items() if len(v) > 1}
    if not pairs:
        return None
    keys = sorted(pairs, key=str)[:MAX_SERIES]
    configs = sorted({lab for k in keys for lab in pairs[k]})
    fig, (ax,) = _figure(max(5.0, 1.3 * len(keys) + 3), 3.8)
    width = 0.8 / len(configs)
    for j, lab in enumerate(configs):
        xs, ys, err = [], [], [[], []]
        for i, k in enumerate(keys):
            c = pairs[k].get(lab)
            if c is None:
                continue
            rate = c.primary_rate()
            xs.append(i + (j - (len(configs) - 1) / 2) * width)
            ys.append(rate.value)
            err[0].append(_yerr(rate)[0])
            err[1].append(_yerr(rate)[1])
        ax.bar(xs, ys, width, yerr=err, capsize=3, color=_COLORS[j % len(_COLORS)], label=_text(lab, 40))
    ticks = []
    for k in keys:
        arch, _, source, norm, zeta, _, targeted, target = k
        z = f" {zeta * 100:g}%" if zeta is not None else ""
        ticks.append(_text(arch, 24) + "\n" + _text(f"{source} {norm}{z}" + (f" ->{target}" if targeted else ""), 32))
    ax.set_xticks(range(len(keys)), ticks, fontsize=7)
    ax.set_ylabel("attack success")
    _pct_axis(ax)
    ax.legend(fontsize=7, title="init / transfer", title_fontsize=7)
    return Plot("init-comparison", "ImageNet vs random initialisation",
                "Matched UAP cells (same architecture, data, source, norm and size) for each initialisation "
                "and transfer configuration; bars show the rate with its confidence interval.", _png(fig))


# ------------------------------------------------------------------------------- replicate spread
def replicate_spread(report: Report) -> Plot | None:
    """A dot per training replicate beside the pooled rate and its t-interval, with the pooled control."""
    rows = [c for c in report.cells if c.pooled is not None and c.metrics is not None][:MAX_SERIES * 3]
    if not rows:
        return None
    fig, (ax,) = _figure(7.5, max(2.4, 0.42 * len(rows) + 1.2))
    for i, c in enumerate(rows):
        rate, ctrl = c.primary_rate(), c.control_rate()
        ax.errorbar([rate.value], [i], xerr=[[rate.value - rate.ci[0]], [rate.ci[1] - rate.value]], fmt="D",
                    color=_COLORS[0], capsize=4, ms=6, label="pooled (t-interval)" if i == 0 else None)
        ax.scatter(c.pooled.rates, [i + 0.18] * len(c.pooled.rates), s=22, color=_COLORS[1], zorder=3,
                   label="one replicate" if i == 0 else None)
        if ctrl is not None:
            ax.errorbar([ctrl.value], [i - 0.18], xerr=[[ctrl.value - ctrl.ci[0]], [ctrl.ci[1] - ctrl.value]],
                        fmt="o", mfc="white", color="0.45", capsize=3, ms=5,
                        label="random control (pooled)" if i == 0 else None)
    ax.set_yticks(range(len(rows)), [_text(cell_label(c).replace(" / pooled over", "\npooled over"), 70)
                                     for c in rows], fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel("attack success")
    ax.set_xlim(0, 1)
    ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax.legend(fontsize=7, loc="lower right")
    return Plot("replicate-spread", "Spread over training replicates",
                "Each row pools one configuration over its training replicates: a dot per replicate, the pooled "
                "rate with its t-interval over replicates (diamond), and the random control pooled the same way "
                "(open circle). The verdict reads the pooled rows.", _png(fig))


# ------------------------------------------------------------------------------- targeted per class


def targeted_per_class(report: Report) -> Plot | None:
    """Targeted success per target class, with the clean rate of that class and the control."""
    cells = [c for c in report.cells if c.attack.kind == "uap" and c.attack.targeted and c.metrics is not None
             and c.metrics.targeted_success_rate is not None and c.attack.target is not None]
    if not cells:
        return None
    groups: dict[tuple, dict[int, Result]] = defaultdict(dict)
    for c in cells:
        a = c.attack
        groups[(c.model.name, a.source or "?", a.norm, a.zeta, a.method)].setdefault(a.target, c)
    keys = sorted(groups, key=str)[:4]
    classes = sorted({t for k in keys for t in groups[k]})
    names = {}
    for c in cells:
        cls = c.model.classes
        names[c.attack.target] = c.attack.target_name or (cls[c.attack.target] if c.attack.target < len(cls)
                                                          else str(c.attack.target))
    fig, (ax,) = _figure(max(5.5, 0.9 * len(classes) * max(1, len(keys)) + 2), 3.9)
    width = 0.8 / len(keys)
    for j, k in enumerate(keys):
        xs, ys, err, clean, ctrl = [], [], [[], []], [], []
        for i, t in enumerate(classes):
            c = groups[k].get(t)
            if c is None:
                continue
            r = c.metrics.targeted_success_rate
            x = i + (j - (len(keys) - 1) / 2) * width
            xs.append(x)
            ys.append(r.value)
            err[0].append(_yerr(r)[0])
            err[1].append(_yerr(r)[1])
            clean.append(r.clean_rate)
            ct = c.control.targeted_success_rate if c.control else None
            ctrl.append(ct.value if ct else math.nan)
        zeta = f" {k[3] * 100:g}%" if k[3] is not None else ""
        ax.bar(xs, ys, width, yerr=err, capsize=3, color=_COLORS[j % len(_COLORS)],
               label=_text(f"{k[0]} / {k[1]} {k[2]}{zeta}", 48))
        ax.scatter(xs, clean, marker="_", s=300, color="black", zorder=3,
                   label="clean rate of the target" if j == 0 else None)
        if any(not math.isnan(v) for v in ctrl):
            ax.scatter(xs, ctrl, marker="x", color="0.4", zorder=3, label="random control" if j == 0 else None)
    ax.set_xticks(range(len(classes)), [_text(names.get(t, t), 18) for t in classes], rotation=30, ha="right",
                  fontsize=7)
    ax.set_ylabel("targeted success")
    _pct_axis(ax)
    ax.legend(fontsize=7)
    return Plot("targeted-per-class", "Targeted success per class",
                "Fraction of all test images predicted as the target class after the targeted UAP; the black "
                "tick is the fraction already predicted as that class without attack.", _png(fig))


# ---------------------------------------------------------------------------------- transfer matrix


def parse_matrix(obj: Any) -> tuple[list[str], list[str], list[list[float]], str] | None:
    """Read a transfer matrix in the one shape the audit writes (:func:`robaudit.auditing.transfer_matrices`):
    ``{"rows": [...], "cols": [...], "values": [[...]], "metric": ...}``, a value a number or ``null``
    (not run). Returns ``(rows, cols, values, metric)``, or None for anything else, so a report leaves
    the heatmap out rather than guess."""
    if not isinstance(obj, dict):
        return None
    rows, cols, values = obj.get("rows"), obj.get("cols"), obj.get("values")
    if not (isinstance(rows, list) and isinstance(cols, list) and isinstance(values, list)):
        return None
    if len(values) != len(rows) or any(not isinstance(r, list) or len(r) != len(cols) for r in values):
        return None

    def num(v):
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan

    metric = str(obj.get("metric", "fooling rate"))
    return [str(r) for r in rows], [str(c) for c in cols], [[num(v) for v in r] for r in values], metric


def transfer_heatmap(report: Report) -> Plot | None:
    """Heatmap of the audit's transfer matrix (UAP built on the row, evaluated on the column)."""
    parsed = parse_matrix(report.transfer) if report.transfer else None
    if parsed is None:
        return None

    rows, cols, vals, metric = parsed
    arr = np.array(vals, dtype=float)
    fig, (ax,) = _figure(min(9.0, max(4.0, 0.7 * len(cols) + 2.6)), min(8.0, max(2.8, 0.45 * len(rows) + 1.8)))
    im = ax.imshow(np.ma.masked_invalid(arr), cmap="Reds", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(cols)), [_text(c, 24) for c in cols], rotation=30, ha="right", fontsize=7)
    ax.set_yticks(range(len(rows)), [_text(r, 24) for r in rows], fontsize=7)
    if arr.size <= 144:
        for i in range(arr.shape[0]):
            for j in range(arr.shape[1]):
                if not math.isnan(arr[i, j]):
                    ax.text(j, i, f"{arr[i, j]:.0%}", ha="center", va="center", fontsize=7,
                            color="white" if arr[i, j] > 0.6 else "black")
    ax.set_xlabel("evaluated on")
    ax.set_ylabel("UAP built on")
    fig.colorbar(im, ax=ax, label=_text(metric, 40))
    return Plot("transfer", "Transfer matrix",
                f"{metric.capitalize()} of a UAP built on the row's model or source when added to the column's "
                "test images; blank cells were not run.", _png(fig))


# ----------------------------------------------------------------------------------------- confusion


def confusion(report: Report, index: int | None = None) -> Plot | None:
    """Clean vs adversarial predictions for one cell (the headline by default): the prediction flow
    matrix, and per-class clean vs adversarial accuracy where recorded."""
    idx = index if index is not None else report.headline
    candidates = ([idx] if idx is not None else []) + list(range(len(report.cells)))
    cell = next((report.cells[i] for i in candidates if report.cells[i].metrics is not None
                 and (report.cells[i].metrics.confusion or report.cells[i].metrics.per_class)), None)
    if cell is None:
        return None

    m = cell.metrics
    panels = int(bool(m.confusion)) + int(any(p.clean_accuracy is not None for p in m.per_class))
    if panels == 0:
        return None
    fig, axes = _figure(5.2 * panels + 0.6, 4.4, ncols=panels)
    names = [_text(n, 16) for n in cell.model.classes]
    k = 0
    if m.confusion:
        ax = axes[k]
        k += 1
        arr = np.array(m.confusion, dtype=float)
        rows = arr.sum(axis=1, keepdims=True)
        frac = np.divide(arr, rows, out=np.zeros_like(arr), where=rows > 0)
        im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
        labels = names if len(names) == arr.shape[0] else [str(i) for i in range(arr.shape[0])]
        ax.set_xticks(range(arr.shape[1]), labels[: arr.shape[1]], rotation=40, ha="right", fontsize=7)
        ax.set_yticks(range(arr.shape[0]), labels, fontsize=7)
        if arr.shape[0] <= 12:
            for i in range(arr.shape[0]):
                for j in range(arr.shape[1]):
                    if arr[i, j]:
                        ax.text(j, i, f"{int(arr[i, j])}", ha="center", va="center", fontsize=6,
                                color="white" if frac[i, j] > 0.6 else "black")
        ax.set_xlabel("prediction with the perturbation")
        ax.set_ylabel("clean prediction")
        ax.set_title("prediction flow (counts; colour = row share)", fontsize=8)
        fig.colorbar(im, ax=ax, shrink=0.8)
    per = [p for p in m.per_class if p.clean_accuracy is not None]
    if per:
        ax = axes[k]
        x = np.arange(len(per))
        ax.bar(x - 0.2, [p.clean_accuracy for p in per], 0.4, label="clean", color="#1f77b4")
        ax.bar(x + 0.2, [p.adv_accuracy if p.adv_accuracy is not None else math.nan for p in per], 0.4,
               label="with perturbation", color="#d62728")
        ax.set_xticks(x, [_text(f"{p.name} (n={p.n})", 22) for p in per], rotation=40, ha="right", fontsize=7)
        ax.set_ylabel("accuracy (true label)")
        _pct_axis(ax)
        ax.legend(fontsize=7)
        ax.set_title("per-class accuracy", fontsize=8)
    return Plot("confusion", "Clean vs adversarial predictions",
                f"Cell {cell_label(cell)}. Left: how clean predictions move under the perturbation (diagonal = "
                "unchanged). Right: accuracy against the true label per class, before and after.", _png(fig))


# ------------------------------------------------------------------------------ robust accuracy vs eps


def robust_accuracy(report: Report) -> Plot | None:
    """Per-sample attacks: robust accuracy vs epsilon, with confidence bands."""
    cells = [c for c in report.cells if c.attack.kind == "per-sample" and c.per_eps]
    if not cells:
        return None
    fig, (ax,) = _figure(6.0, 3.6)
    for j, c in enumerate(cells[:MAX_SERIES]):
        rows = sorted(c.per_eps, key=lambda r: r.eps)
        x = [r.eps for r in rows]
        y = [r.robust_accuracy.value for r in rows]
        color = _COLORS[j % len(_COLORS)]
        ax.plot(x, y, marker="o", color=color,
                label=_text(f"{c.model.name} / {c.attack.method} {c.attack.norm}", 48))
        ax.fill_between(x, [r.robust_accuracy.ci[0] for r in rows], [r.robust_accuracy.ci[1] for r in rows],
                        color=color, alpha=0.15)
        if c.metrics is not None:
            ax.axhline(c.metrics.clean_accuracy, color=color, ls=":", lw=1)
    ax.set_xlabel(f"epsilon ({cells[0].attack.eps_scale})")
    ax.set_ylabel("robust accuracy")
    _pct_axis(ax)
    ax.legend(fontsize=7)
    return Plot("robust-accuracy", "Robust accuracy vs epsilon (per-sample attacks)",
                "Accuracy when an attacker perturbs each image separately within epsilon; dotted lines are the "
                "clean accuracy.", _png(fig))


# ------------------------------------------------------------------------------------------ artifacts


def _inside(base: Path, name: str) -> Path | None:
    """``base / name`` if it is a regular file inside ``base`` (no traversal out of the run folder)."""
    try:
        base_r = base.resolve()
        p = (base / name).resolve()
    except (OSError, RuntimeError, ValueError):
        return None
    if not p.is_relative_to(base_r) or not p.is_file() or p.stat().st_size > MAX_ARTIFACT_BYTES:
        return None
    return p


def find_artifact(report: Report, cell: Result, suffix: str, default: str | None = None) -> Path | None:
    """The cell's artifact whose file name ends with ``suffix`` (e.g. ``uap.npy``), inside the run folder;
    else ``default`` next to the result when the report has a single cell."""
    if report.run_dir is None:
        return None
    for name in sorted(cell.artifacts.values()):
        if str(name).lower().endswith(suffix):
            p = _inside(report.run_dir, str(name))
            if p is not None:
                return p
    if default and len(report.cells) == 1:
        return _inside(report.run_dir, default)
    return None


def image_artifact(path: Path | None) -> Plot | None:
    """An existing PNG/JPEG artifact, checked by its magic bytes, as an inline image."""
    if path is None:
        return None
    data = path.read_bytes()
    if data.startswith(PNG_MAGIC):
        mime = "image/png"
    elif data.startswith(JPEG_MAGIC):
        mime = "image/jpeg"
    else:
        return None
    return Plot(path.stem, path.name, "", data, mime)


def perturbation(report: Report, cell: Result) -> Plot | None:
    """The UAP itself, amplified so that its largest component spans the display range, and its
    per-pixel magnitude. Read from ``uap.npy`` (never pickled objects); falls back to ``uap.png``."""

    path = find_artifact(report, cell, ".npy", "uap.npy")
    if path is None:
        p = image_artifact(find_artifact(report, cell, "uap.png", "uap.png"))
        if p is None:
            return None
        return Plot("perturbation", "The perturbation", "The perturbation image written by the run.", p.png, p.mime)
    try:
        v = read_npy(path, "perturbation")
    except BadInput:  # a report never fails on a broken artifact: it leaves the picture out
        return None
    v = np.asarray(v, dtype=np.float64).squeeze()
    if v.ndim == 3 and v.shape[0] in (1, 3) and v.shape[-1] not in (1, 3):
        v = np.moveaxis(v, 0, -1)
    elif v.ndim == 3 and v.shape[0] in (1, 3) and v.shape[0] < v.shape[-1]:
        v = np.moveaxis(v, 0, -1)
    if v.ndim == 2:
        v = v[..., None]
    if v.ndim != 3 or v.shape[-1] not in (1, 3) or not np.isfinite(v).all():
        return None
    shown, gain = amplified(v)
    peak = float(np.abs(v).max())
    mag = np.sqrt((v ** 2).sum(axis=-1))
    fig, axes = _figure(7.0, 3.4, ncols=2)
    axes[0].imshow(shown[..., 0] if shown.shape[-1] == 1 else shown, cmap="gray" if shown.shape[-1] == 1 else None,
                   vmin=0, vmax=1, interpolation="nearest")
    axes[0].set_title(f"amplified x{gain:.3g} (grey = 0)", fontsize=8)
    im = axes[1].imshow(mag, cmap="magma", interpolation="nearest")
    axes[1].set_title("per-pixel magnitude", fontsize=8)
    fig.colorbar(im, ax=axes[1], shrink=0.8)
    for ax in axes:
        ax.set_axis_off()
    l2 = float(np.sqrt((v ** 2).sum()))
    return Plot("perturbation", "The perturbation",
                f"{path.name}: shape {tuple(v.shape)}, L2 norm {l2:.4g}, Linf norm {peak:.4g} (units of "
                f"{cell.attack.eps_scale}). Shown amplified x{gain:.3g} so it is visible; the attack adds it at "
                "its true, much smaller size.", _png(fig))


def make_plots(report: Report) -> list[Plot]:
    """Every figure whose data exists, in report order."""
    plots = [replicate_spread(report), trajectory(report), rate_vs_zeta(report), init_comparison(report),
             targeted_per_class(report),
             transfer_heatmap(report), confusion(report), robust_accuracy(report)]
    return [p for p in plots if p is not None]


def source_note(cell: Result) -> str:
    """A short description of where a UAP's input images came from."""
    return {"natural": "natural photos", "task": "the task's own images"}.get(source_kind(cell), "other source")
