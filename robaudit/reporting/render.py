"""Writing a report: HTML (self-contained), Markdown, JSON, or PDF through headless Chromium."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from robaudit.core.errors import BadInput
from robaudit.core.results import Result
from robaudit.grading import AuditInput
from robaudit.reporting.build import Report, build_report, report_json
from robaudit.reporting.html import render_html
from robaudit.reporting.markdown import render_markdown
from robaudit.reporting.pdf import html_to_pdf, require_chromium

FORMATS = ("html", "md", "pdf", "json")
SUFFIX = {"html": ".html", "md": ".md", "pdf": ".pdf", "json": ".json"}


def check_formats(formats: Sequence[str]) -> list[str]:
    """Canonical format names (md for markdown), deduplicated; BadInput for unknown ones."""
    out = []
    for f in formats:
        f = {"markdown": "md", "htm": "html"}.get(f.lower(), f.lower())
        if f not in FORMATS:
            raise BadInput(f"unknown report format {f!r}", f"choose from {', '.join(FORMATS)}")
        if f not in out:
            out.append(f)
    return out


def render(report: Report, fmt: str) -> str:
    """The report as text in ``fmt`` (html, md or json; PDF is a file, see :func:`write_reports`)."""
    (fmt,) = check_formats([fmt])
    if fmt == "html":
        return render_html(report)
    if fmt == "md":
        return render_markdown(report)
    if fmt == "json":
        return json.dumps(report_json(report), indent=2, default=str) + "\n"
    raise BadInput("a PDF report is a file, not text", "use write_reports(..., formats=('pdf',))")


def write_report(report: Report, fmt: str, path: str | Path) -> Path:
    """Write one format to ``path`` (PDF goes through headless Chromium)."""
    (fmt,) = check_formats([fmt])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "pdf":
        require_chromium()
        return html_to_pdf(render(report, "html"), path)
    path.write_text(render(report, fmt), encoding="utf-8")
    return path


def write_reports(results: Result | Sequence[Result] | AuditInput | Report, out_dir: str | Path,
                  formats: Sequence[str] = ("html", "md"), *, basename: str = "report",
                  run_dir: str | Path | None = None, tables: dict | None = None, transfer: dict | None = None,
                  title: str | None = None) -> dict[str, Path]:
    """Write ``<out_dir>/<basename>.<ext>`` for each format; returns ``{format: path}``.

    ``run_dir`` is where the cells' artifacts (``uap.npy``, ``examples.png``) live; it defaults to
    ``out_dir``, which is what the ``uap`` and ``audit`` commands want.
    """
    fmts = check_formats(formats)
    if "pdf" in fmts:
        require_chromium()
    out = Path(out_dir)
    if isinstance(results, Report):
        report = results
    else:
        report = build_report(results, tables=tables, transfer=transfer, title=title,
                              run_dir=run_dir if run_dir is not None else out)
    written: dict[str, Path] = {}
    html_text: str | None = None
    for fmt in fmts:
        path = out / f"{basename}{SUFFIX[fmt]}"
        out.mkdir(parents=True, exist_ok=True)
        if fmt in ("html", "pdf"):
            if html_text is None:
                html_text = render(report, "html")
            if fmt == "html":
                path.write_text(html_text, encoding="utf-8")
            else:
                html_to_pdf(html_text, path)
        else:
            path.write_text(render(report, fmt), encoding="utf-8")
        written[fmt] = path
    return written
