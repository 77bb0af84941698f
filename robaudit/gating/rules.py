"""Gate rules: which cells a rule reads (:class:`Selector`) and one class per rule kind.

A rule owns its reading of a cell: ``applies(cell)`` says whether the cell has what the rule needs,
``check(...)`` measures it against the limit. :meth:`GateRule.evaluate` does the rest for every rule
(selection, a rule that matches nothing, the check's selector text). A new rule kind is one class
here, added to :data:`RULES`.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

from robaudit.core.fmt import pct
from robaudit.core.results import Rate, Result
from robaudit.core.specs import NORM_ALIASES
from robaudit.core.stats import proportion_ci
from robaudit.gating.checks import Check
from robaudit.grading import Assessment, cell_label, severity_rank, source_kind

Bound = Literal["upper", "value", "lower"]
StrSel = Union[str, list[str], None]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), populate_by_name=True)


def _listify(v: Any) -> list | None:
    return None if v is None else (list(v) if isinstance(v, (list, tuple)) else [v])


def _glob(pattern: str, value: str | None) -> bool:
    return value is not None and fnmatch.fnmatchcase(value.lower(), pattern.lower())


class Selector(_Strict):
    """Which cells a rule applies to; every given field must match (an empty selector matches all)."""

    model: StrSel = None
    arch: StrSel = None
    init: StrSel = None
    transfer: StrSel = None
    data: StrSel = None
    split: StrSel = None
    kind: Literal["uap", "per-sample"] | None = None
    source: StrSel = None
    source_kind: Literal["natural", "task", "other"] | None = None
    norm: Literal["linf", "l2"] | list[Literal["linf", "l2"]] | None = None
    zeta: float | list[float] | None = None
    method: StrSel = None
    threat_model: StrSel = Field(default=None, description="white-box natural, zero-knowledge surrogate, "
                                 "training images (globs)")
    access: StrSel = Field(default=None, description="white-box or query (what the attacker reached)")
    delivery: StrSel = Field(default=None, description="input, stored or jpeg=Q (where v enters; globs: jpeg=*)")
    targeted: bool | None = None
    target: int | str | list[int | str] | None = None
    pooled: bool | None = Field(default=None, description="true: only rows pooled over training replicates; "
                                "false: only single-model cells")

    @field_validator("norm", mode="before")
    @classmethod
    def _norm(cls, v: Any) -> Any:
        if isinstance(v, (str, int)):
            return NORM_ALIASES.get(str(v).lower(), v)
        if isinstance(v, list):
            return [NORM_ALIASES.get(str(x).lower(), x) for x in v]
        return v

    def matches(self, cell: Result) -> bool:
        a, m = cell.attack, cell.model
        for name, value in (("model", m.name), ("arch", m.arch), ("init", m.init), ("transfer", m.transfer),
                            ("data", cell.data.name), ("split", cell.data.split), ("source", a.source),
                            ("method", a.method), ("threat_model", a.threat_model),
                            ("access", a.access or "white-box"), ("delivery", a.delivery or "input")):
            pats = _listify(getattr(self, name))
            if pats is not None and not any(_glob(str(p), value) for p in pats):
                return False
        if self.kind is not None and a.kind != self.kind:
            return False
        if self.pooled is not None and (cell.pooled is not None) != self.pooled:
            return False
        if self.source_kind is not None and source_kind(cell) != self.source_kind:
            return False
        if self.norm is not None and a.norm not in _listify(self.norm):
            return False
        if self.zeta is not None and (a.zeta is None or not any(
                math.isclose(a.zeta, z, rel_tol=1e-6, abs_tol=1e-12) for z in _listify(self.zeta))):
            return False
        if self.targeted is not None and a.targeted != self.targeted:
            return False
        if self.target is not None:
            names = {a.target_name} if a.target_name else set()
            if a.target is not None and 0 <= a.target < len(m.classes):
                names.add(m.classes[a.target])
            ok = False
            for t in _listify(self.target):
                if isinstance(t, int) and not isinstance(t, bool):
                    ok |= a.target == t
                else:
                    ok |= any(_glob(str(t), n) for n in names) or (str(t).isdigit() and a.target == int(t))
            if not (a.targeted and ok):
                return False
        return True

    def describe(self) -> str:
        items = self.model_dump(exclude_none=True)
        return ", ".join(f"{k}={v}" for k, v in items.items()) or "all cells"


def _bound(rate: Rate, bound: str) -> float:
    return {"upper": rate.ci[1], "lower": rate.ci[0], "value": rate.value}[bound]


_BOUND_TEXT = {"upper": "upper bound", "lower": "lower bound", "value": "value"}


def _rate_text(rate: Rate) -> str:
    return f"value {pct(rate.value)}, {rate.confidence:.0%} CI [{pct(rate.ci[0])}, {pct(rate.ci[1])}], n={rate.n}"


def _limit(rule: GateRule, subject: str, name: str, measured: float, limit: float, op: str, detail: str = "",
           fmt=pct) -> Check:
    ok = measured <= limit + 1e-12 if op == "<=" else measured >= limit - 1e-12
    sign = op if ok else {"<=": ">", ">=": "<"}[op]
    msg = f"{name} {fmt(measured)} {sign} {'max' if op == '<=' else 'min'} {fmt(limit)}"
    if detail:
        msg += f" ({detail})"
    return Check(rule.id, rule.kind, subject, "pass" if ok else "fail", msg, measured, limit, op, rule.description)


@dataclass
class Context:
    """What a rule may read beyond its cell: the cell's grade (severity rule, the document's p family),
    and a per-rule memory (one clean-accuracy check per model and split)."""

    assessment: Callable[[int], Assessment]
    seen: set = field(default_factory=set)


class GateRule(_Strict):
    """Fields every rule has; subclasses add ``kind``, their limit, and ``applies`` / ``check``."""

    id: str | None = Field(default=None, description="name of the rule in reports (default: kind-N)")
    description: str | None = None
    select: Selector = Field(default_factory=Selector)
    optional: bool = Field(default=False, description="skip, rather than error, when no cell matches")

    def applies(self, cell: Result) -> bool:
        """Whether a selected cell has what this rule reads (default: UAP cells with metrics)."""
        return (self.select.kind is not None or cell.attack.kind == "uap") and cell.metrics is not None

    def check(self, i: int, cell: Result, ctx: Context) -> Check | None:
        raise NotImplementedError

    def evaluate(self, cells: list[Result], ctx: Context) -> list[Check]:
        """Checks of every selected cell the rule applies to; an error (or skip, if optional) when none."""
        selected = [i for i, c in enumerate(cells) if self.select.matches(c)]
        sel = self.select.describe()
        idx = [i for i in selected if self.applies(cells[i])]
        if not idx:
            why = (f"selects no cell of the result ({sel})" if not selected else
                   f"matches {len(selected)} cell(s) ({sel}) but none has the data it needs")
            status = "skipped" if self.optional else "error"
            return [Check(self.id, self.kind, sel, status, f"rule {self.id!r} {why}", description=self.description,
                          selector=sel)]
        checks = [ch for i in idx if (ch := self.check(i, cells[i], ctx)) is not None]
        for ch in checks:
            ch.selector = sel
        return checks

    def error(self, cell: Result, message: str) -> Check:
        return Check(self.id, self.kind, cell_label(cell), "error", message, description=self.description)


class MaxFoolingRate(GateRule):
    """The fooling rate of each matched UAP cell is at most ``max`` (on ``bound``); targeted cells are
    included only when the selector names ``targeted``."""

    kind: Literal["max_fooling_rate"]
    max: float = Field(ge=0, le=1)
    bound: Bound = "upper"

    def applies(self, cell: Result) -> bool:
        return super().applies(cell) and not (self.select.targeted is None and cell.attack.targeted)

    def check(self, i: int, cell: Result, ctx: Context) -> Check:
        r = cell.metrics.fooling_rate
        return _limit(self, cell_label(cell), f"fooling rate {_BOUND_TEXT[self.bound]}", _bound(r, self.bound),
                      self.max, "<=", _rate_text(r))


class MaxTargetedSuccess(GateRule):
    """The targeted success of each matched targeted cell is at most ``max``; with ``over_clean`` the
    clean rate of the target class is subtracted first (images already predicted as the target)."""

    kind: Literal["max_targeted_success"]
    max: float = Field(ge=0, le=1)
    bound: Bound = "upper"
    over_clean: bool = False

    def applies(self, cell: Result) -> bool:
        return super().applies(cell) and cell.attack.targeted and cell.metrics.targeted_success_rate is not None

    def check(self, i: int, cell: Result, ctx: Context) -> Check:
        r = cell.metrics.targeted_success_rate
        v = _bound(r, self.bound) - (r.clean_rate if self.over_clean else 0.0)
        name = f"targeted success {_BOUND_TEXT[self.bound]}" + (" over the clean rate" if self.over_clean else "")
        return _limit(self, cell_label(cell), name, v, self.max, "<=",
                      f"{_rate_text(r)}, clean rate of the target {pct(r.clean_rate)}")


class MaxControlRatio(GateRule):
    """UAP rate (on ``bound``) divided by the random control's mean rate is at most ``max``; the control
    rate is floored at one image (1/n) so a zero control does not divide by zero."""

    kind: Literal["max_control_ratio"]
    max: float = Field(gt=0)
    bound: Bound = "upper"

    def applies(self, cell: Result) -> bool:
        return super().applies(cell) and cell.control is not None

    def check(self, i: int, cell: Result, ctx: Context) -> Check:
        r, ctrl = cell.primary_rate(), cell.control_rate()
        if ctrl is None:
            return self.error(cell, f"cell {cell_label(cell)} has no targeted control rate")
        ratio = _bound(r, self.bound) / max(ctrl.value, 1.0 / max(r.n, 1))
        what = "targeted success" if r is cell.metrics.targeted_success_rate else "fooling rate"
        return _limit(self, cell_label(cell), f"{what} {_BOUND_TEXT[self.bound]} / random control", ratio, self.max,
                      "<=", f"{pct(_bound(r, self.bound))} vs control {pct(ctrl.value)} over {cell.control.draws} "
                      "draws", fmt=lambda x: f"{x:.2f}x")


class MinCleanAccuracy(GateRule):
    """Clean accuracy of each matched model and data split is at least ``min``; the default bound is the
    lower end of a Wilson interval over the evaluated images."""

    kind: Literal["min_clean_accuracy"]
    min: float = Field(ge=0, le=1)
    bound: Bound = "lower"

    def applies(self, cell: Result) -> bool:
        return cell.metrics is not None

    def check(self, i: int, cell: Result, ctx: Context) -> Check | None:
        key = (cell.model.name, cell.data.name, cell.data.split)
        if key in ctx.seen:
            return None
        ctx.seen.add(key)
        n = cell.metrics.fooling_rate.n or cell.data.n
        acc = cell.metrics.clean_accuracy
        lo, hi = proportion_ci(round(acc * n), n)
        v = {"lower": lo, "upper": hi, "value": acc}[self.bound]
        return _limit(self, f"{cell.model.name} on {cell.data.name}/{cell.data.split}",
                      f"clean accuracy {_BOUND_TEXT[self.bound]}", v, self.min, ">=",
                      f"value {pct(acc)}, 95% Wilson CI [{pct(lo)}, {pct(hi)}], n={n}")


class MaxPerSampleSuccess(GateRule):
    """Per-sample attack success at epsilon ``eps`` is at most ``max``."""

    kind: Literal["max_per_sample_success"]
    eps: float = Field(gt=0)
    max: float = Field(ge=0, le=1)
    bound: Bound = "upper"

    def applies(self, cell: Result) -> bool:
        return cell.attack.kind == "per-sample" and bool(cell.per_eps)

    def check(self, i: int, cell: Result, ctx: Context) -> Check:
        label = cell_label(cell)
        row = next((e for e in cell.per_eps if math.isclose(e.eps, self.eps, rel_tol=1e-6, abs_tol=1e-12)), None)
        if row is None:
            have = ", ".join(f"{e.eps:.6g}" for e in cell.per_eps)
            return self.error(cell, f"cell {label} has no epsilon {self.eps:g} (it has {have})")
        r = row.success_rate
        return _limit(self, label, f"per-sample success at eps={self.eps:g} {_BOUND_TEXT[self.bound]}",
                      _bound(r, self.bound), self.max, "<=", _rate_text(r))


class MaxSeverity(GateRule):
    """No matched UAP cell is graded worse than ``max`` by the severity rule (robaudit.grading)."""

    kind: Literal["max_severity"]
    max: Literal["none", "low", "moderate", "high", "critical"]

    def applies(self, cell: Result) -> bool:
        return cell.attack.kind == "uap" and cell.metrics is not None

    def check(self, i: int, cell: Result, ctx: Context) -> Check:
        a = ctx.assessment(i)
        ok = severity_rank(a.severity) <= severity_rank(self.max)
        return Check(self.id, self.kind, cell_label(cell), "pass" if ok else "fail",
                     f"severity {a.severity} {'<=' if ok else '>'} max {self.max} ({a.reason})",
                     float(severity_rank(a.severity)), self.max, "<=", self.description)


class RequireCells(GateRule):
    """The result has at least ``min_count`` cells matching ``select`` (a failure, not an error)."""

    kind: Literal["require_cells"]
    min_count: int = Field(default=1, ge=1)

    def evaluate(self, cells: list[Result], ctx: Context) -> list[Check]:
        sel = self.select.describe()
        n = sum(self.select.matches(c) for c in cells)
        ok = n >= self.min_count
        msg = f"{n} cell(s) match {sel}; {'need' if not ok else 'required'} at least {self.min_count}"
        return [Check(self.id, self.kind, f"cells matching {sel}", "pass" if ok else "fail", msg, float(n),
                      float(self.min_count), ">=", self.description)]


def hardened_pairs(cells: list[Result], select: Selector, targeted: bool | None = None) -> list[tuple[Result, Result]]:
    """(original, hardened) UAP cells of the same attack on the same images (``robaudit harden`` or an audit
    recipe with ``harden = true``); a pair is selected when ``select`` matches either cell."""
    from robaudit.models.zoo import hardened_name  # lazily: the gate itself needs no model code

    def key(c: Result) -> tuple:
        a, d = c.attack, c.data
        return (d.name, d.split, d.n, d.sha256, a.source, a.norm, round(a.zeta or 0.0, 6), a.method, a.target,
                a.surrogate, a.seed)

    uap = [c for c in cells if c.attack.kind == "uap" and c.metrics is not None
           and (targeted is not None or not c.attack.targeted)]
    by_key = {(c.model.name, key(c)): c for c in uap}
    out = []
    for o in uap:
        h_name = hardened_name(o.model.name)
        h = by_key.get((h_name, key(o))) if h_name != o.model.name else None
        if h is not None and (select.matches(o) or select.matches(h)):
            out.append((o, h))
    return out


def balanced_accuracy(cell: Result) -> float | None:
    """Mean over classes (with images) of the clean accuracy: a one-class model scores 1/K, however skewed."""
    accs = [c.clean_accuracy for c in cell.metrics.per_class if c.n and c.clean_accuracy is not None]
    return sum(accs) / len(accs) if accs else None


class _PairRule(GateRule):
    """A rule over (original, hardened) cell pairs; an error (or skip, if optional) when no pair matches."""

    def pairs(self, cells: list[Result]) -> list[tuple[Result, Result]]:
        return hardened_pairs(cells, self.select, self.select.targeted)

    def evaluate(self, cells: list[Result], ctx: Context) -> list[Check]:
        sel = self.select.describe()
        pairs = self.pairs(cells)
        if not pairs:
            status = "skipped" if self.optional else "error"
            return [Check(self.id, self.kind, sel, status, f"rule {self.id!r} finds no original/hardened cell pair "
                          f"({sel}); gate the document 'robaudit harden' wrote", description=self.description,
                          selector=sel)]
        checks = [ch for o, h in pairs if (ch := self.check_pair(o, h, ctx)) is not None]
        for ch in checks:
            ch.selector = sel
        return checks

    def check_pair(self, original: Result, hardened: Result, ctx: Context) -> Check | None:
        raise NotImplementedError


class MinUAPReduction(_PairRule):
    """Hardening lowered each matched UAP cell's fooling rate (targeted success for targeted cells, when the
    selector names ``targeted``) by at least ``min`` absolute points, both UAPs built against their own model
    on the same images. ``bound = "lower"``: the lower end of Newcombe's interval for the difference, which
    ignores the pairing and so is conservative for paired images."""

    kind: Literal["min_uap_reduction"]
    min: float = Field(ge=-1, le=1, description="absolute points of fooling rate, 0.1 = 10 points")
    bound: Literal["value", "lower"] = "value"

    def check_pair(self, original: Result, hardened: Result, ctx: Context) -> Check:
        rb, ra = original.primary_rate(), hardened.primary_rate()
        v = rb.value - ra.value
        if self.bound == "lower":
            from statsmodels.stats.proportion import confint_proportions_2indep

            v = float(confint_proportions_2indep(rb.k, rb.n, ra.k, ra.n, method="newcomb")[0])
        return _limit(self, f"{cell_label(original)} -> {hardened.model.name}",
                      f"UAP rate reduction {_BOUND_TEXT[self.bound]}", v, self.min, ">=",
                      f"before {pct(rb.value)} (n={rb.n}), after {pct(ra.value)} (n={ra.n})")


class MaxAccuracyDrop(_PairRule):
    """Hardening cost at most ``max`` of balanced accuracy (``metric = "clean"``: plain accuracy) on the
    evaluated images; a hardened model at chance balanced accuracy (collapsed to one class) always fails."""

    kind: Literal["max_accuracy_drop"]
    max: float = Field(0.03, ge=0, le=1)
    metric: Literal["balanced", "clean"] = "balanced"

    def pairs(self, cells: list[Result]) -> list[tuple[Result, Result]]:
        seen, out = set(), []
        for o, h in hardened_pairs(cells, self.select, True):
            k = (o.model.name, h.model.name, o.data.name, o.data.split, o.data.n, o.attack.seed)
            if k not in seen:
                seen.add(k)
                out.append((o, h))
        return out

    def check_pair(self, original: Result, hardened: Result, ctx: Context) -> Check:
        if self.metric == "clean":
            b, a = original.metrics.clean_accuracy, hardened.metrics.clean_accuracy
        else:
            b, a = balanced_accuracy(original), balanced_accuracy(hardened)
        subject = f"{hardened.model.name} vs {original.model.name} on {original.data.name}/{original.data.split}"
        if b is None or a is None:
            return self.error(hardened, f"{subject}: no per-class accuracy to compare")
        k = len(hardened.model.classes) or 2
        check = _limit(self, subject, f"{self.metric} accuracy drop", b - a, self.max, "<=",
                       f"before {pct(b)}, after {pct(a)}, n={original.data.n}")
        if a <= 1.0 / k + 0.05:
            check.status = "fail"
            check.message += f"; the hardened model is at chance ({pct(a)} balanced accuracy): it collapsed"
        return check


class MaxMissedDiseaseRate(GateRule):
    """The missed-disease rate of each matched UAP cell (of the critical class's images the model detects clean,
    the share x + v turns into another class) is at most ``max`` on ``bound``; targeted cells are included (a
    perturbation toward a benign class is the clinically worst direction). Needs a critical class (dataset card
    ``critical_class`` or ``--critical-class``): cells without one are an error, not a pass."""

    kind: Literal["max_missed_disease_rate"]
    max: float = Field(ge=0, le=1)
    bound: Bound = "upper"

    def applies(self, cell: Result) -> bool:
        return super().applies(cell) and cell.harm is not None and cell.harm.critical is not None

    def check(self, i: int, cell: Result, ctx: Context) -> Check:
        c = cell.harm.critical
        r = c.missed_disease
        ctrl = f", median control draw {pct(c.control_missed_disease)}" if c.control_missed_disease is not None else ""
        return _limit(self, cell_label(cell), f"missed {c.name} rate {_BOUND_TEXT[self.bound]}",
                      _bound(r, self.bound), self.max, "<=", f"{_rate_text(r)} of correctly detected {c.name}{ctrl}")


class MaxSensitivityDrop(GateRule):
    """The sensitivity (recall) of class ``class`` (default: the critical class) falls by at most ``max`` absolute
    points from clean images to x + v in each matched UAP cell. ``bound = "upper"``: the upper end of Newcombe's
    interval for the drop, which ignores the pairing and so is conservative for paired images."""

    kind: Literal["max_sensitivity_drop"]
    max: float = Field(ge=0, le=1, description="absolute points of sensitivity, 0.1 = 10 points")
    class_name: str | None = Field(default=None, alias="class", description="class name or index (default: the "
                                   "critical class)")
    bound: Literal["value", "upper"] = "value"

    def applies(self, cell: Result) -> bool:
        return super().applies(cell) and cell.harm is not None and (self.class_name is not None or
                                                                     cell.harm.critical is not None)

    def check(self, i: int, cell: Result, ctx: Context) -> Check:
        rows = cell.harm.classes
        want = self.class_name if self.class_name is not None else cell.harm.critical.name
        row = next((r for r in rows if r.name == want or (want.isdigit() and r.index == int(want))), None)
        if row is None:
            return self.error(cell, f"cell {cell_label(cell)} has no class {want!r} (it has "
                              f"{', '.join(r.name for r in rows)})")
        b, a = row.sensitivity_clean, row.sensitivity_adv
        v = b.value - a.value
        if self.bound == "upper":
            from statsmodels.stats.proportion import confint_proportions_2indep

            v = float(confint_proportions_2indep(b.k, b.n, a.k, a.n, method="newcomb")[1])
        p = f", paired exact McNemar p = {row.sensitivity_p:.2g}" if row.sensitivity_p is not None else ""
        return _limit(self, cell_label(cell), f"{row.name} sensitivity drop {_BOUND_TEXT[self.bound]}", v, self.max,
                      "<=", f"clean {pct(b.value)} -> {pct(a.value)} under the UAP, n={b.n}{p}")


#: every rule kind; a policy's ``[[rule]]`` tables are parsed into these by their ``kind``
RULES = (MaxFoolingRate, MaxTargetedSuccess, MaxControlRatio, MinCleanAccuracy, MaxPerSampleSuccess, MaxSeverity,
         RequireCells, MinUAPReduction, MaxAccuracyDrop, MaxMissedDiseaseRate, MaxSensitivityDrop)
RULE_KINDS = tuple(r.model_fields["kind"].annotation.__args__[0] for r in RULES)
