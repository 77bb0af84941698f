"""The HTML report in a real browser: headless Chromium driven over the DevTools protocol (``--remote-debugging-pipe``,
standard library only). Checks that the page renders with no console errors, no exceptions, no network requests
and no script execution (hostile strings included), that every image decodes, and keeps a full-page screenshot
(and the printed PDF) as test artefacts: under pytest's tmp dir, and in ``$ROBAUDIT_ARTIFACTS`` when set.

Skipped only when Chromium is absent and ``CI`` is not set; under CI a missing browser fails.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from test_report import HOSTILE, HOSTILE_IMG, per_sample_cell, uap_cell, write_run

TIMEOUT_S = 30
#: the reviewer's screen: nothing may scroll sideways at this width
WIDTH = 1280


def _chromium() -> str:
    from robaudit.reporting.pdf import find_chromium

    path = find_chromium()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("CI is set but Chromium is missing: run scripts/install-chromium.sh first")
        pytest.skip("Chromium is not installed (run scripts/install-chromium.sh); CI runs this test")
    return path


class DevTools:
    """A minimal Chrome DevTools Protocol client over the ``--remote-debugging-pipe`` file descriptors."""

    def __init__(self, chromium: str, profile: Path):
        from robaudit.reporting.pdf import chromium_args

        to_child_r, self._w = os.pipe()
        self._r, from_child_w = os.pipe()

        def fds():  # in the child: the browser reads commands on fd 3 and writes replies on fd 4
            a, b = os.dup(to_child_r), os.dup(from_child_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(chromium_args(chromium, profile) + ["--remote-debugging-pipe", "about:blank"],
                                     pass_fds=(3, 4), preexec_fn=fds, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_child_r)
        os.close(from_child_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []

    def _recv(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            ready, _, _ = select.select([self._r], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError("no reply from Chromium")
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            reply = self._recv(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str) -> dict:
        deadline = time.monotonic() + TIMEOUT_S
        for ev in self.events:
            if ev.get("method") == method:
                return ev
        while True:
            ev = self._recv(deadline)
            self.events.append(ev)
            if ev.get("method") == method:
                return ev

    def close(self) -> None:
        try:
            os.write(self._w, json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0")
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        finally:
            os.close(self._w)
            os.close(self._r)


def _keep(path: Path) -> None:
    dest = os.environ.get("ROBAUDIT_ARTIFACTS")
    if dest:
        Path(dest).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(dest) / path.name)


PAGE_STATE = r"""JSON.stringify({
  images: Array.from(document.images).map(i => ({alt: i.alt, ok: i.complete && i.naturalWidth > 0,
                                                  w: i.naturalWidth, h: i.naturalHeight})),
  scripts: document.scripts.length,
  pwned: typeof window.__pwned !== 'undefined',
  sections: Array.from(document.querySelectorAll('section > h2')).map(h => h.textContent.trim()),
  overflow: document.documentElement.scrollWidth > window.innerWidth + 2,
  wide_tables: Array.from(document.querySelectorAll('table')).filter(t =>
    t.getBoundingClientRect().right > document.body.getBoundingClientRect().right + 1
    || t.scrollWidth > t.clientWidth + 2)
    .map(t => [(t.querySelector('th') || t).textContent.trim().slice(0, 30),
               Math.round(t.getBoundingClientRect().right), Math.round(document.body.getBoundingClientRect().right)]),
  tallest_row: Math.max(...Array.from(document.querySelectorAll('tr')).map(r => r.getBoundingClientRect().height)),
  raw_json: /[{]\s*"/.test(document.body.innerText),
  ids: Array.from(document.querySelectorAll('[id]')).map(e => e.id),
  height: document.documentElement.scrollHeight,
  title: document.title
})"""


def test_html_report_renders_cleanly_in_chromium(tmp_path):
    from robaudit.grading import load_input
    from robaudit.reporting import build_report, write_reports

    chromium = _chromium()
    # a real run folder with its perturbation and examples, plus a per-sample cell, with hostile class names
    m_classes = (HOSTILE, HOSTILE_IMG, "benign keratosis", "dermatofibroma", "melanoma", "melanocytic nevi",
                 "vascular")
    result, v = uap_cell(zeta=0.02, classes=m_classes, command=f"robaudit uap '{HOSTILE}'")
    run = write_run(tmp_path / "run", result, v, examples=True)
    targeted = uap_cell(zeta=0.02, target=4, seed=14, classes=m_classes)[0]
    rep = build_report([load_input(run).cells[0], targeted, per_sample_cell()], run_dir=run.parent,
                       transfer={"rows": [HOSTILE], "cols": ["b"], "values": [[0.5]]})
    paths = write_reports(rep, tmp_path / "out", formats=("html",))
    html = paths["html"]

    with tempfile.TemporaryDirectory(prefix="robaudit-cdp-") as profile:
        dt = DevTools(chromium, Path(profile))
        try:
            target = dt.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = dt.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                dt.call(f"{domain}.enable", session=session)
            dt.call("Emulation.setDeviceMetricsOverride", {"width": WIDTH, "height": 900, "deviceScaleFactor": 1,
                                                           "mobile": False}, session=session)
            dt.call("Page.navigate", {"url": html.resolve().as_uri()}, session=session)
            dt.wait_for("Page.loadEventFired")
            state = json.loads(dt.call("Runtime.evaluate", {"expression": PAGE_STATE, "returnByValue": True},
                                       session=session)["result"]["value"])
            shot = dt.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True,
                                                      "clip": {"x": 0, "y": 0, "width": WIDTH,
                                                               "height": min(state["height"], 16000), "scale": 1}},
                           session=session)
            pdf = dt.call("Page.printToPDF", {"printBackground": True, "preferCSSPageSize": True}, session=session)
            # printing must not break anything either
            dt.call("Emulation.setEmulatedMedia", {"media": "print"}, session=session)
            printed = json.loads(dt.call("Runtime.evaluate", {"expression": PAGE_STATE, "returnByValue": True},
                                         session=session)["result"]["value"])
        finally:
            dt.close()

    screenshot = tmp_path / "report-screenshot.png"
    screenshot.write_bytes(base64.b64decode(shot["data"]))
    printed_pdf = tmp_path / "report-printed.pdf"
    printed_pdf.write_bytes(base64.b64decode(pdf["data"]))
    for artefact in (screenshot, printed_pdf, html):
        _keep(artefact)

    errors = [e for e in dt.events if e.get("method") == "Runtime.exceptionThrown"
              or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert"))
              or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")]
    assert not errors, errors
    requests = [e["params"]["request"]["url"][:80] for e in dt.events if e.get("method") == "Network.requestWillBeSent"]
    assert requests and all(u.startswith(("file:", "data:")) for u in requests), requests
    assert not [e for e in dt.events if e.get("method") == "Network.loadingFailed"]

    assert state["title"].startswith("robaudit robustness report")
    assert state["scripts"] == 0 and not state["pwned"]
    # verdict, harm and findings first, the reviewer's section, the technical appendix last
    assert state["sections"][:4] == ["Verdict", "Harm by diagnosis", "Findings", "For the reviewer"]
    assert state["sections"][-1] == "Technical appendix"
    assert "Plots" in state["sections"] and "The perturbation" in state["sections"]
    for part in ("threat-model", "models", "data", "settings", "bom", "limitations", "mitigations"):
        assert part in state["ids"], part
    assert not state["raw_json"], "the page shows raw JSON"
    assert not state["wide_tables"], f"tables wider than the page: {state['wide_tables']}"
    assert state["tallest_row"] < 200, f"a table row {state['tallest_row']:.0f} px tall"
    # rate vs zeta, targeted per class, transfer, confusion, robust accuracy, perturbation, examples
    assert len(state["images"]) == 7 and all(i["ok"] and i["w"] > 50 for i in state["images"]), state["images"]
    assert all(i["ok"] for i in printed["images"]) and printed["scripts"] == 0
    assert not state["overflow"], f"the report scrolls sideways at {WIDTH} px"
    assert not printed["overflow"] and not printed["wide_tables"], printed["wide_tables"]
    assert screenshot.read_bytes().startswith(b"\x89PNG") and screenshot.stat().st_size > 50_000
    assert printed_pdf.read_bytes().startswith(b"%PDF-")
