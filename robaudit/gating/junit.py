"""JUnit XML (the dialect GitHub, GitLab and Jenkins read): one ``<testcase>`` per check."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

STATUSES = ("passed", "failed", "error", "skipped")
# characters XML 1.0 cannot carry, even escaped
_INVALID_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def xml_text(value: object) -> str:
    """Text with the characters XML 1.0 forbids replaced (escaping itself is ElementTree's job)."""
    return _INVALID_XML.sub("\ufffd", "" if value is None else str(value))


@dataclass
class Case:
    """One test case: ``status`` is passed, failed, error or skipped; ``message`` is the one-line reason."""

    name: str
    classname: str
    status: str = "passed"
    message: str = ""
    detail: str = ""
    time: float = 0.0
    properties: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown test status {self.status!r}")


def to_xml(suite: str, cases: Sequence[Case], properties: dict[str, object] | None = None,
           timestamp: datetime | None = None) -> str:
    """A ``<testsuites>`` document with one ``<testsuite>`` holding ``cases``."""
    counts = {s: sum(c.status == s for c in cases) for s in STATUSES}
    total_time = sum(c.time for c in cases)
    attrs = {"name": xml_text(suite), "tests": str(len(cases)), "failures": str(counts["failed"]),
             "errors": str(counts["error"]), "skipped": str(counts["skipped"]), "time": f"{total_time:.3f}"}
    root = ET.Element("testsuites", attrs)
    ts = ET.SubElement(root, "testsuite", {
        **attrs, "timestamp": (timestamp or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H:%M:%S")})
    if properties:
        props = ET.SubElement(ts, "properties")
        for k, v in properties.items():
            ET.SubElement(props, "property", {"name": xml_text(k), "value": xml_text(v)})
    for c in cases:
        tc = ET.SubElement(ts, "testcase", {"classname": xml_text(c.classname), "name": xml_text(c.name),
                                            "time": f"{c.time:.3f}"})
        if c.properties:
            props = ET.SubElement(tc, "properties")
            for k, v in c.properties.items():
                ET.SubElement(props, "property", {"name": xml_text(k), "value": xml_text(v)})
        if c.status == "failed":
            el = ET.SubElement(tc, "failure", {"message": xml_text(c.message), "type": "RuleFailed"})
            el.text = xml_text(c.detail or c.message)
        elif c.status == "error":
            el = ET.SubElement(tc, "error", {"message": xml_text(c.message), "type": "BadInput"})
            el.text = xml_text(c.detail or c.message)
        elif c.status == "skipped":
            ET.SubElement(tc, "skipped", {"message": xml_text(c.message)})
        if c.status == "passed" and (c.message or c.detail):
            ET.SubElement(tc, "system-out").text = xml_text("\n".join(x for x in (c.message, c.detail) if x))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_junit_cases(path: str | Path, suite: str, cases: Sequence[Case],
                      properties: dict[str, object] | None = None) -> Path:
    """Write a JUnit XML file (parent folders are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_xml(suite, cases, properties), encoding="utf-8")
    return path
