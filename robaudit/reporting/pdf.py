"""PDF reports: the HTML report printed by headless Chromium (no network, throwaway profile)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from robaudit.core.errors import BadInput, RuntimeFailure

#: where Debian's ``chromium`` package installs the browser; ``ROBAUDIT_CHROMIUM`` overrides
DEFAULT_CHROMIUM = "/usr/bin/chromium"
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
TIMEOUT_S = 120


def find_chromium() -> str | None:
    """The Chromium executable: ``$ROBAUDIT_CHROMIUM`` if set (even if it is missing, so a wrong setting is
    reported rather than silently replaced), else /usr/bin/chromium, else the first on PATH."""
    env = os.environ.get("ROBAUDIT_CHROMIUM")
    if env:
        return env if Path(env).is_file() and os.access(env, os.X_OK) else None
    if Path(DEFAULT_CHROMIUM).is_file() and os.access(DEFAULT_CHROMIUM, os.X_OK):
        return DEFAULT_CHROMIUM
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def chromium_args(chromium: str, user_data_dir: str | Path) -> list[str]:
    """Headless Chromium with no network side channels, no sandbox (CI containers) and a throwaway profile."""
    return [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--no-default-browser-check",
            "--disable-extensions", "--mute-audio", "--hide-scrollbars", f"--user-data-dir={user_data_dir}"]


def require_chromium() -> str:
    """The Chromium executable, or BadInput with how to install it."""
    chromium = find_chromium()
    if chromium is None:
        where = os.environ.get("ROBAUDIT_CHROMIUM") or DEFAULT_CHROMIUM
        raise BadInput(f"PDF reports need headless Chromium, which was not found at {where!r} or on PATH",
                       "run scripts/install-chromium.sh (apt-get install chromium), set ROBAUDIT_CHROMIUM, "
                       "or use --format html")
    return chromium


def html_to_pdf(html: str | Path, pdf_path: str | Path, timeout: float = TIMEOUT_S) -> Path:
    """Print an HTML document (text, or a path to a .html file) to ``pdf_path`` with headless Chromium."""
    chromium = require_chromium()
    pdf_path = Path(pdf_path).resolve()
    pdf_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="robaudit-pdf-") as tmp:
        if isinstance(html, Path):
            src = html.resolve()
        else:
            src = Path(tmp) / "report.html"
            src.write_text(html, encoding="utf-8")
        out = Path(tmp) / "report.pdf"
        cmd = chromium_args(chromium, Path(tmp) / "profile") + [
            "--no-pdf-header-footer", "--print-to-pdf-no-header", f"--print-to-pdf={out}", src.as_uri()]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise RuntimeFailure(f"Chromium did not print the PDF within {timeout:g} s") from None
        except OSError as exc:
            raise RuntimeFailure(f"could not start Chromium at {chromium!r}: {exc}") from None
        if not out.is_file() or out.stat().st_size == 0 or not out.read_bytes()[:5] == b"%PDF-":
            tail = " ".join((proc.stderr or "").strip().splitlines()[-2:])[:300]
            raise RuntimeFailure(f"Chromium exited {proc.returncode} without writing a PDF" +
                                 (f": {tail}" if tail else ""))
        shutil.move(str(out), pdf_path)
    return pdf_path
