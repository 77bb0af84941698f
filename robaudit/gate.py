"""The CI gate: a TOML policy of rules over a result or an audit -> a verdict -> an exit code.

Exit codes: 0 every rule passed, 1 a rule failed, 2 bad input (an unreadable result, an invalid
policy, or a rule whose selector matches no cell of the result, unless the rule is ``optional``).

Rules bound rates on their *upper* confidence bound by default (``bound = "upper"``; minimums use
the lower bound), so a small test set cannot pass by luck. Each rule has a ``select`` table matching
cells on ``attack`` fields (kind, source, source_kind, norm, zeta, method, targeted, target) and on
the model (``model`` = ``model.name``, arch, init, transfer) and data (data, split). Strings are
shell-style globs, lists mean any of, zeta matches to a relative 1e-6. See docs/policy.example.toml.
"""

from __future__ import annotations

import fnmatch
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from robaudit.errors import BadInput
from robaudit.report import SEVERITIES, AuditInput, as_input, build_report, cell_label, severity_rank, source_kind
from robaudit.results import Rate, Result

EXIT_PASS, EXIT_FAIL, EXIT_BAD_INPUT = 0, 1, 2
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
    targeted: bool | None = None
    target: int | str | list[int | str] | None = None

    @field_validator("norm", mode="before")
    @classmethod
    def _norm(cls, v: Any) -> Any:
        canon = {"linf": "linf", "l-inf": "linf", "inf": "linf", "l_inf": "linf", "l2": "l2", "2": "l2"}
        if isinstance(v, (str, int)):
            return canon.get(str(v).lower(), v)
        if isinstance(v, list):
            return [canon.get(str(x).lower(), x) for x in v]
        return v

    def matches(self, cell: Result) -> bool:
        a, m = cell.attack, cell.model
        for name, value in (("model", m.name), ("arch", m.arch), ("init", m.init), ("transfer", m.transfer),
                            ("data", cell.data.name), ("split", cell.data.split), ("source", a.source),
                            ("method", a.method)):
            pats = _listify(getattr(self, name))
            if pats is not None and not any(_glob(str(p), value) for p in pats):
                return False
        if self.kind is not None and a.kind != self.kind:
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


class _Rule(_Strict):
    id: str | None = Field(default=None, description="name of the rule in reports (default: kind-N)")
    description: str | None = None
    select: Selector = Field(default_factory=Selector)
    optional: bool = Field(default=False, description="skip, rather than error, when no cell matches")


class MaxFoolingRate(_Rule):
    """The fooling rate of each matched UAP cell is at most ``max`` (on ``bound``); targeted cells are
    included only when the selector names ``targeted``."""

    kind: Literal["max_fooling_rate"]
    max: float = Field(ge=0, le=1)
    bound: Bound = "upper"


class MaxTargetedSuccess(_Rule):
    """The targeted success of each matched targeted cell is at most ``max``; with ``over_clean`` the
    clean rate of the target class is subtracted first (images already predicted as the target)."""

    kind: Literal["max_targeted_success"]
    max: float = Field(ge=0, le=1)
    bound: Bound = "upper"
    over_clean: bool = False


class MaxControlRatio(_Rule):
    """UAP rate (on ``bound``) divided by the random control's mean rate is at most ``max``; the control
    rate is floored at one image (1/n) so a zero control does not divide by zero."""

    kind: Literal["max_control_ratio"]
    max: float = Field(gt=0)
    bound: Bound = "upper"


class MinCleanAccuracy(_Rule):
    """Clean accuracy of each matched model and data split is at least ``min``; the default bound is the
    lower end of a Wilson interval over the evaluated images."""

    kind: Literal["min_clean_accuracy"]
    min: float = Field(ge=0, le=1)
    bound: Bound = "lower"


class MaxPerSampleSuccess(_Rule):
    """Per-sample attack success at epsilon ``eps`` is at most ``max``."""

    kind: Literal["max_per_sample_success"]
    eps: float = Field(gt=0)
    max: float = Field(ge=0, le=1)
    bound: Bound = "upper"


class MaxSeverity(_Rule):
    """No matched UAP cell is graded worse than ``max`` by the report's severity rule."""

    kind: Literal["max_severity"]
    max: Literal["none", "low", "moderate", "high", "critical"]


class RequireCells(_Rule):
    """The result has at least ``min_count`` cells matching ``select`` (a failure, not an error)."""

    kind: Literal["require_cells"]
    min_count: int = Field(default=1, ge=1)


Rule = Annotated[Union[MaxFoolingRate, MaxTargetedSuccess, MaxControlRatio, MinCleanAccuracy, MaxPerSampleSuccess,
                       MaxSeverity, RequireCells], Field(discriminator="kind")]
RULE_KINDS = ("max_fooling_rate", "max_targeted_success", "max_control_ratio", "min_clean_accuracy",
              "max_per_sample_success", "max_severity", "require_cells")


class Policy(_Strict):
    """A gate policy: ``[[rule]]`` tables in TOML."""

    version: Literal[1] = 1
    name: str = "robaudit policy"
    description: str | None = None
    rules: list[Rule] = Field(alias="rule", min_length=1)

    @model_validator(mode="after")
    def _ids(self) -> Policy:
        seen: set[str] = set()
        for i, r in enumerate(self.rules, 1):
            if r.id is None:
                r.id = f"{r.kind}-{i}"
            if r.id in seen:
                raise ValueError(f"duplicate rule id {r.id!r}")
            seen.add(r.id)
        return self


def _format_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    loc = list(first["loc"])
    parts = []
    if loc[:1] == ["rule"] and len(loc) > 1 and isinstance(loc[1], int):
        parts.append(f"rule {loc[1] + 1}")
        loc = loc[2:]
        if loc and loc[0] in RULE_KINDS:
            parts[-1] += f" ({loc.pop(0)})"
    if loc:
        parts.append(".".join(str(x) for x in loc))
    msg = first["msg"]
    if first["type"] == "union_tag_invalid":
        msg = f"unknown rule kind; choose one of: {', '.join(RULE_KINDS)}"
    elif first["type"] == "union_tag_not_found":
        msg = f"missing 'kind'; choose one of: {', '.join(RULE_KINDS)}"
    elif first["loc"] == ("rule",) and first["type"] in ("missing", "too_short"):
        return "the policy has no rules (add one or more rule tables, see the example)"
    return ": ".join(parts + [msg]) if parts else msg


def parse_policy(data: dict[str, Any], where: str = "policy") -> Policy:
    """Validate a policy dict (BadInput with a one-line reason)."""
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        raise BadInput(f"{where}: {_format_error(exc)}", "see docs/policy.example.toml") from None


def load_policy(path: str | Path) -> Policy:
    """Read and validate a TOML policy file (BadInput with a one-line reason on failure)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    p = Path(path)
    if not p.is_file():
        raise BadInput(f"policy file {str(p)!r} does not exist", "see docs/policy.example.toml")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"policy file {str(p)!r} cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise BadInput(f"policy file {str(p)!r} is not valid TOML: {exc}") from None
    return parse_policy(data, f"policy {str(p)!r}")


# ---------------------------------------------------------------------------------------- evaluation


@dataclass
class Check:
    """One rule applied to one cell (or, for require_cells, to the whole result)."""

    rule: str
    kind: str
    subject: str
    status: Literal["pass", "fail", "error", "skipped"]
    message: str
    measured: float | None = None
    threshold: float | str | None = None
    op: str = ""
    description: str | None = None
    selector: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("rule", "kind", "subject", "status", "measured", "threshold", "op",
                                               "message", "description", "selector")}


@dataclass
class GateResult:
    """Every check of a policy against a result, and the verdict."""

    policy: Policy
    checks: list[Check] = field(default_factory=list)
    source: str | None = None

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]

    @property
    def errors(self) -> list[Check]:
        return [c for c in self.checks if c.status == "error"]

    @property
    def verdict(self) -> str:
        return "error" if self.errors else ("fail" if self.failed else "pass")

    def exit_code(self, exit_zero: bool = False) -> int:
        """0 pass, 1 a rule failed (0 with ``exit_zero``), 2 a rule could not be evaluated."""
        if self.errors:
            return EXIT_BAD_INPUT
        if self.failed and not exit_zero:
            return EXIT_FAIL
        return EXIT_PASS

    def counts(self) -> dict[str, int]:
        return {s: sum(c.status == s for c in self.checks) for s in ("pass", "fail", "error", "skipped")}

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "robaudit-gate", "policy": self.policy.name, "source": self.source, "verdict": self.verdict,
                "counts": self.counts(), "checks": [c.to_dict() for c in self.checks]}


def _bound(rate: Rate, bound: str) -> float:
    return {"upper": rate.ci[1], "lower": rate.ci[0], "value": rate.value}[bound]


_BOUND_TEXT = {"upper": "upper bound", "lower": "lower bound", "value": "value"}


def _pct(x: float) -> str:
    return f"{x * 100:.1f}%"


def _rate_text(rate: Rate) -> str:
    return f"value {_pct(rate.value)}, {rate.confidence:.0%} CI [{_pct(rate.ci[0])}, {_pct(rate.ci[1])}], n={rate.n}"


def _limit(rule: _Rule, subject: str, name: str, measured: float, limit: float, op: str, detail: str = "",
           fmt=_pct) -> Check:
    ok = measured <= limit + 1e-12 if op == "<=" else measured >= limit - 1e-12
    sign = op if ok else {"<=": ">", ">=": "<"}[op]
    msg = f"{name} {fmt(measured)} {sign} {'max' if op == '<=' else 'min'} {fmt(limit)}"
    if detail:
        msg += f" ({detail})"
    return Check(rule.id, rule.kind, subject, "pass" if ok else "fail", msg, measured, limit, op, rule.description)


def _eval_rule(rule: _Rule, cells: list[Result], report) -> list[Check]:
    selected = [i for i, c in enumerate(cells) if rule.select.matches(c)]
    sel = rule.select.describe()
    if isinstance(rule, RequireCells):
        n = len(selected)
        ok = n >= rule.min_count
        msg = f"{n} cell(s) match {sel}; {'need' if not ok else 'required'} at least {rule.min_count}"
        return [Check(rule.id, rule.kind, f"cells matching {sel}", "pass" if ok else "fail", msg, float(n),
                      float(rule.min_count), ">=", rule.description)]

    def applicable(c: Result) -> bool:
        a = c.attack
        if isinstance(rule, MaxPerSampleSuccess):
            return a.kind == "per-sample" and bool(c.per_eps)
        if isinstance(rule, MinCleanAccuracy):
            return c.metrics is not None
        if isinstance(rule, MaxSeverity):
            return a.kind == "uap" and c.metrics is not None
        if rule.select.kind is None and a.kind != "uap":
            return False
        if isinstance(rule, MaxTargetedSuccess):
            return a.targeted and c.metrics is not None and c.metrics.targeted_success_rate is not None
        if isinstance(rule, MaxControlRatio):
            return c.metrics is not None and c.control is not None
        if isinstance(rule, MaxFoolingRate) and rule.select.targeted is None and a.targeted:
            return False
        return c.metrics is not None

    idx = [i for i in selected if applicable(cells[i])]
    if not idx:
        why = (f"selects no cell of the result ({sel})" if not selected else
               f"matches {len(selected)} cell(s) ({sel}) but none has the data it needs")
        status = "skipped" if rule.optional else "error"
        return [Check(rule.id, rule.kind, sel, status, f"rule {rule.id!r} {why}", description=rule.description,
                      selector=sel)]
    checks: list[Check] = []
    seen: set[tuple] = set()
    for i in idx:
        c = cells[i]
        label = cell_label(c)
        b = getattr(rule, "bound", "value")
        if isinstance(rule, MaxFoolingRate):
            r = c.metrics.fooling_rate
            checks.append(_limit(rule, label, f"fooling rate {_BOUND_TEXT[b]}", _bound(r, b), rule.max, "<=",
                                 _rate_text(r)))
        elif isinstance(rule, MaxTargetedSuccess):
            r = c.metrics.targeted_success_rate
            v = _bound(r, b) - (r.clean_rate if rule.over_clean else 0.0)
            name = f"targeted success {_BOUND_TEXT[b]}" + (" over the clean rate" if rule.over_clean else "")
            checks.append(_limit(rule, label, name, v, rule.max, "<=",
                                 f"{_rate_text(r)}, clean rate of the target {_pct(r.clean_rate)}"))
        elif isinstance(rule, MaxControlRatio):
            targeted = c.attack.targeted and c.metrics.targeted_success_rate is not None
            r = c.metrics.targeted_success_rate if targeted else c.metrics.fooling_rate
            ctrl = c.control.targeted_success_rate if targeted else c.control.fooling_rate
            if ctrl is None:
                checks.append(Check(rule.id, rule.kind, label, "error", f"cell {label} has no targeted control rate",
                                    description=rule.description, selector=sel))
                continue
            floor = 1.0 / max(r.n, 1)
            ratio = _bound(r, b) / max(ctrl.value, floor)
            what = "targeted success" if targeted else "fooling rate"
            checks.append(_limit(rule, label, f"{what} {_BOUND_TEXT[b]} / random control", ratio, rule.max, "<=",
                                 f"{_pct(_bound(r, b))} vs control {_pct(ctrl.value)} over {c.control.draws} draws",
                                 fmt=lambda x: f"{x:.2f}x"))
        elif isinstance(rule, MinCleanAccuracy):
            key = (c.model.name, c.data.name, c.data.split)
            if key in seen:
                continue
            seen.add(key)
            from robaudit.eval.stats import proportion_ci

            n = c.metrics.fooling_rate.n or c.data.n
            acc = c.metrics.clean_accuracy
            lo, hi = proportion_ci(round(acc * n), n)
            v = {"lower": lo, "upper": hi, "value": acc}[b]
            checks.append(_limit(rule, f"{c.model.name} on {c.data.name}/{c.data.split}",
                                 f"clean accuracy {_BOUND_TEXT[b]}", v, rule.min, ">=",
                                 f"value {_pct(acc)}, 95% Wilson CI [{_pct(lo)}, {_pct(hi)}], n={n}"))
        elif isinstance(rule, MaxPerSampleSuccess):
            row = next((e for e in c.per_eps if math.isclose(e.eps, rule.eps, rel_tol=1e-6, abs_tol=1e-12)), None)
            if row is None:
                have = ", ".join(f"{e.eps:.6g}" for e in c.per_eps)
                checks.append(Check(rule.id, rule.kind, label, "error", f"cell {label} has no epsilon {rule.eps:g} "
                                    f"(it has {have})", description=rule.description, selector=sel))
                continue
            r = row.success_rate
            checks.append(_limit(rule, label, f"per-sample success at eps={rule.eps:g} {_BOUND_TEXT[b]}",
                                 _bound(r, b), rule.max, "<=", _rate_text(r)))
        elif isinstance(rule, MaxSeverity):
            a = report.assessments[i]
            ok = severity_rank(a.severity) <= severity_rank(rule.max)
            checks.append(Check(rule.id, rule.kind, label, "pass" if ok else "fail",
                                f"severity {a.severity} {'<=' if ok else '>'} max {rule.max} ({a.reason})",
                                float(severity_rank(a.severity)), rule.max, "<=", rule.description))
    for ch in checks:
        ch.selector = sel
    return checks


def evaluate(policy: Policy, results: Result | Sequence[Result] | AuditInput) -> GateResult:
    """Apply every rule of ``policy`` to the result cells."""
    ai = as_input(results)
    if not ai.cells:
        raise BadInput("the result has no cells to gate")
    report = build_report(ai) if any(isinstance(r, MaxSeverity) for r in policy.rules) else None
    out = GateResult(policy=policy, source=str(ai.path) if ai.path else None)
    for rule in policy.rules:
        out.checks.extend(_eval_rule(rule, ai.cells, report))
    return out


# ------------------------------------------------------------------------------------------- outputs


def junit_cases(result: GateResult):
    """One JUnit test case per check."""
    from robaudit.report.junit import Case

    status = {"pass": "passed", "fail": "failed", "error": "error", "skipped": "skipped"}
    cases = []
    for c in result.checks:
        detail = "\n".join(x for x in (c.message, f"rule: {c.rule} ({c.kind})", f"select: {c.selector}",
                                        c.description or "") if x)
        props = {"rule": c.rule, "kind": c.kind}
        if c.measured is not None:
            props["measured"] = f"{c.measured:.6g}"
        if c.threshold is not None:
            props["threshold"] = c.threshold if isinstance(c.threshold, str) else f"{c.threshold:.6g}"
            props["comparison"] = c.op
        cases.append(Case(name=c.subject, classname=f"robaudit.gate.{c.rule}", status=status[c.status],
                          message=c.message, detail=detail, properties=props))
    return cases


def write_junit(result: GateResult, path: str | Path) -> Path:
    from robaudit import __version__
    from robaudit.report.junit import write_junit as _write

    return _write(path, f"robaudit gate: {result.policy.name}", junit_cases(result),
                  {"verdict": result.verdict, "source": result.source or "", "robaudit_version": __version__})


def summary_markdown(result: GateResult) -> str:
    """The verdict as Markdown (for ``$GITHUB_STEP_SUMMARY`` or a pull-request comment)."""
    from robaudit.report.markdown import ICONS, md

    n = result.counts()
    lines = [f"## {ICONS[result.verdict]} robaudit gate: {result.verdict.upper()} ({md(result.policy.name)})", "",
             f"{n['pass']} passed, {n['fail']} failed, {n['error']} error(s), {n['skipped']} skipped"
             + (f" · result `{md(Path(result.source).name)}`" if result.source else ""), "",
             "| | rule | subject | measured | limit |", "|---|---|---|---|---|"]
    order = {"fail": 0, "error": 1, "pass": 2, "skipped": 3}
    for c in sorted(result.checks, key=lambda c: order[c.status]):
        icon = ICONS.get(c.status, "\u2796")
        lines.append(f"| {icon} | {md(c.rule)} | {md(c.subject)} | {md(c.message)} | "
                     f"{md(c.op)} {md(_fmt_threshold(c))} |")
    return "\n".join(lines) + "\n"


def _fmt_threshold(c: Check) -> str:
    if c.threshold is None:
        return ""
    if isinstance(c.threshold, str):
        return c.threshold
    if c.kind == "max_control_ratio":
        return f"{c.threshold:.2f}x"
    if c.kind == "require_cells":
        return f"{c.threshold:.0f}"
    return _pct(c.threshold)


def print_table(result: GateResult, console=None) -> None:
    """A rich table of the checks and the verdict, on stderr."""
    from rich.markup import escape
    from rich.table import Table

    from robaudit.console import err

    console = console or err
    style = {"pass": "green", "fail": "bold red", "error": "bold yellow", "skipped": "dim"}
    table = Table(title=f"robaudit gate: {escape(result.policy.name)}", title_justify="left")
    for col in ("status", "rule", "subject", "result"):
        table.add_column(col, overflow="fold")
    for c in result.checks:
        table.add_row(f"[{style[c.status]}]{c.status}[/]", escape(c.rule), escape(c.subject), escape(c.message))
    console.print(table)
    n = result.counts()
    console.print(f"[{style.get(result.verdict, 'bold')}]{result.verdict.upper()}[/]: {n['pass']} passed, "
                  f"{n['fail']} failed, {n['error']} error(s), {n['skipped']} skipped")


def gate(result_path: str | Path, policy_path: str | Path, *, junit_xml: str | Path | None = None,
         summary_md: str | Path | None = None) -> GateResult:
    """Load a result and a policy, evaluate, and write the JUnit XML and Markdown summary if asked.

    ``summary_md`` is appended to when it is ``$GITHUB_STEP_SUMMARY`` (so earlier steps' summaries stay),
    and overwritten otherwise."""
    from robaudit.report import is_step_summary, load_input

    policy = load_policy(policy_path)
    ai = load_input(result_path)
    res = evaluate(policy, ai)
    if junit_xml:
        write_junit(res, junit_xml)
    if summary_md:
        p = Path(summary_md)
        p.parent.mkdir(parents=True, exist_ok=True)
        with p.open("a" if is_step_summary(p) else "w", encoding="utf-8") as fh:
            fh.write(summary_markdown(res))
    return res


__all__ = ["EXIT_BAD_INPUT", "EXIT_FAIL", "EXIT_PASS", "Check", "GateResult", "Policy", "RULE_KINDS", "SEVERITIES",
           "Selector", "evaluate", "gate", "load_policy", "parse_policy", "print_table", "summary_markdown",
           "write_junit"]
