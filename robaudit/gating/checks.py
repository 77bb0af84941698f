"""What a gate rule produces: one :class:`Check` per rule and cell."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal


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
