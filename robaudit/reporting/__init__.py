"""Robustness reports: one result or an audit's cells -> severity, findings, HTML / Markdown / PDF / JSON.

The reading of each cell (severity rule, p-value family) lives in :mod:`robaudit.grading`, shared
with the gate; :mod:`~robaudit.reporting.build` grades a document into a :class:`Report`, and
:mod:`~robaudit.reporting.render` writes it (``html``, ``markdown``, ``pdf``, ``plots`` draw the parts).
"""

from robaudit.reporting.build import Report, build_report, report_json
from robaudit.reporting.render import FORMATS, SUFFIX, check_formats, render, write_report, write_reports
from robaudit.reporting.review import bundle_predictions

__all__ = ["FORMATS", "SUFFIX", "Report", "build_report", "bundle_predictions", "check_formats", "render",
           "report_json", "write_report", "write_reports"]


def _render_result(result, fmt: str) -> str:
    return render(build_report([result]), fmt)


def _register() -> None:
    """Give core's Result its to_html / to_markdown / _repr_html_ (core may not import this layer)."""
    from robaudit.core import results

    results.RENDERER = _render_result


_register()
