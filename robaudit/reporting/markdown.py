"""The Markdown report: a compact summary for a pull-request comment or ``$GITHUB_STEP_SUMMARY``.

Every string that comes from a result (class names, paths, commands) goes through :func:`md` or a code
fence longer than any backtick run inside it, so it cannot inject markup or links."""

from __future__ import annotations

from robaudit.core.fmt import ICONS, fence, md
from robaudit.reporting.build import Report
from robaudit.reporting.html import context, jinja_env

MAX_ROWS = 15


def render_markdown(report: Report, max_rows: int = MAX_ROWS) -> str:
    """The report as compact GitHub-flavoured Markdown."""

    env = jinja_env(autoescape=False)
    env.filters.update(md=md, fence=fence)
    ctx = context(report, with_plots=False)
    return env.get_template("report.md.j2").render(**ctx, icons=ICONS, max_rows=max_rows).rstrip() + "\n"
