"""The CI gate: a TOML policy of rules over a result or an audit -> a verdict -> an exit code.

Exit codes: 0 every rule passed, 1 a rule failed, 2 bad input (an unreadable result, an invalid
policy, or a rule whose selector matches no cell of the result, unless the rule is ``optional``).

Rules bound rates on their *upper* confidence bound by default (``bound = "upper"``; minimums use
the lower bound), so a small test set cannot pass by luck. Each rule has a ``select`` table matching
cells on ``attack`` fields (kind, source, source_kind, threat_model, access, delivery, norm, zeta, method,
targeted, target) and on
the model (``model`` = ``model.name``, arch, init, transfer) and data (data, split). Strings are
shell-style globs, lists mean any of, zeta matches to a relative 1e-6. See docs/policy.example.toml.
Rules read cells through :mod:`robaudit.grading`, as the report does (same severities, same p family).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from robaudit.core.errors import BadInput
from robaudit.core.files import is_step_summary, preflight_file, write_failure
from robaudit.core.results import Result
from robaudit.gating.checks import Check
from robaudit.gating.outputs import junit_cases, summary_markdown, write_junit
from robaudit.gating.policy import Policy, load_policy, parse_policy
from robaudit.gating.rules import RULE_KINDS, Context, Selector
from robaudit.gating.verdict import EXIT_BAD_INPUT, EXIT_FAIL, EXIT_PASS, GateResult
from robaudit.grading import AuditInput, adjusted_pvalues, as_input, assess, load_input


def evaluate(policy: Policy, results: Result | Sequence[Result] | AuditInput) -> GateResult:
    """Apply every rule of ``policy`` to the result cells."""
    ai = as_input(results)
    if not ai.cells:
        raise BadInput("the result has no cells to gate")
    stopped = [i for i, c in enumerate(ai.cells) if c.attack.interrupted]
    if stopped:  # its rates cover part of the work: a pass would certify numbers nobody finished measuring
        where = f" {str(ai.path)!r}" if ai.path else ""
        which = (f"the result{where} comes" if len(ai.cells) == 1 else
                 f"{len(stopped)} of {len(ai.cells)} cells of{where or ' the audit'} (first: cell {stopped[0]}) come")
        raise BadInput(f"{which} from an interrupted run, so the gate cannot judge it",
                       "re-run the same command to finish (it resumes), then gate the complete result")
    adjusted: list | None = None

    def assessment(i: int):
        nonlocal adjusted
        if adjusted is None:
            adjusted = adjusted_pvalues(ai)
        return assess(ai.cells[i], adjusted[i])

    out = GateResult(policy=policy, source=str(ai.path) if ai.path else None)
    for rule in policy.rules:
        out.checks.extend(rule.evaluate(ai.cells, Context(assessment)))
    return out


def gate(result_path: str | Path, policy_path: str | Path, *, junit_xml: str | Path | None = None,
         summary_md: str | Path | None = None) -> GateResult:
    """Load a result and a policy, evaluate, and write the JUnit XML and Markdown summary if asked.

    ``summary_md`` is appended to when it is ``$GITHUB_STEP_SUMMARY`` (so earlier steps' summaries stay),
    and overwritten otherwise."""
    for path, flag in ((junit_xml, "--junit-xml"), (summary_md, "--summary-md")):
        if path:  # before any work: a folder or an unwritable place is bad input, not a traceback at the end
            preflight_file(Path(path), flag)
    policy = load_policy(policy_path)
    res = evaluate(policy, load_input(result_path))
    if junit_xml:
        try:
            write_junit(res, junit_xml)
        except OSError as exc:
            raise write_failure(exc, Path(junit_xml), "--junit-xml") from None
    if summary_md:
        p = Path(summary_md)
        try:
            with p.open("a" if is_step_summary(p) else "w", encoding="utf-8") as fh:
                fh.write(summary_markdown(res))
        except OSError as exc:
            raise write_failure(exc, p, "--summary-md") from None
    return res


__all__ = ["EXIT_BAD_INPUT", "EXIT_FAIL", "EXIT_PASS", "RULE_KINDS", "Check", "GateResult", "Policy", "Selector",
           "evaluate", "gate", "junit_cases", "load_policy", "parse_policy", "summary_markdown", "write_junit"]
