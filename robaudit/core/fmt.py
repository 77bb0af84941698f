"""Numbers and text as people read them: percentages, intervals, p-values, Markdown-safe strings.

Reports, console summaries and gate messages share these, so one number reads the same everywhere.
"""

from __future__ import annotations

import math
import re

ICONS = {"critical": "\U0001f7e5", "high": "\U0001f534", "moderate": "\U0001f7e0", "low": "\U0001f7e1",
         "none": "\U0001f7e2", "info": "\u26aa", "pass": "\u2705", "fail": "\u274c", "error": "\u26a0\ufe0f"}
_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+!|~])")


def md(value: object) -> str:
    """Text safe inside Markdown (and a table cell): HTML and Markdown specials escaped, one line."""
    s = "" if value is None else str(value)
    s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    s = _SPECIAL.sub(r"\\\1", s)
    return " ".join(s.split())


def fence(text: str, lang: str = "") -> str:
    """A fenced code block that ``text`` cannot close early."""
    runs = [len(m) for m in re.findall(r"`+", text)]
    ticks = "`" * max(3, max(runs, default=0) + 1)
    return f"{ticks}{lang}\n{text}\n{ticks}"


def pct(x: float | None, digits: int = 1, missing: str = "n/a") -> str:
    """0.836 -> '83.6%'; None or NaN -> ``missing``."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return missing
    return f"{x * 100:.{digits}f}%"


def ci_text(pair, digits: int = 1) -> str:
    """(0.80, 0.87) -> '[80.0%, 87.0%]'; no interval -> ''."""
    if not pair:
        return ""
    return f"[{pct(pair[0], digits)}, {pct(pair[1], digits)}]"


def pval(p: float | None) -> str:
    """A p-value in three significant digits, '<1e-6' below that."""
    if p is None:
        return "n/a"
    return "<1e-6" if p < 1e-6 else f"{p:.3g}"
