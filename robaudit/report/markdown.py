"""The Markdown report: a compact summary for a pull-request comment or ``$GITHUB_STEP_SUMMARY``.

Every string that comes from a result (class names, paths, commands) goes through :func:`md` or a code
fence longer than any backtick run inside it, so it cannot inject markup or links."""

from __future__ import annotations

import re

from robaudit.report import Report

MAX_ROWS = 15
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


def render_markdown(report: Report, max_rows: int = MAX_ROWS) -> str:
    """The report as compact GitHub-flavoured Markdown."""
    from robaudit.report.html import context, environment

    env = environment(autoescape=False)
    env.filters.update(md=md, fence=fence)
    ctx = context(report, with_plots=False)
    return env.get_template("report.md.j2").render(**ctx, icons=ICONS, max_rows=max_rows).rstrip() + "\n"
