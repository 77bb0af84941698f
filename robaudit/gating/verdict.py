"""A gate's verdict: every check of a policy, and the exit code CI reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from robaudit.gating.checks import Check
from robaudit.gating.policy import Policy

EXIT_PASS, EXIT_FAIL, EXIT_BAD_INPUT = 0, 1, 2


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
