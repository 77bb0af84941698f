"""README "Python" runs as written (no hidden setup), on the embedded data, and says what it claims."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_section_runs(tmp_path, monkeypatch, capsys):
    text = README.read_text()
    section = text[text.index("\n## Python\n"):]
    section = section[: section.index("\n## ", 5)]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md#python", "exec"), scope)
    run, r = scope["run"], scope["r"]
    out = capsys.readouterr().out
    assert "UAP fools" in out and "same-norm noise" in out
    assert r.data.n == 300 and r.model.name == "my-cnn" and r.model.mean == [0.5, 0.5, 0.5]
    assert r.metrics.clean_accuracy > 0.6  # the example's network is a real classifier
    assert run.v.shape == (1, 3, 32, 32)
    files = {p.name for p in (tmp_path / "reports/python-demo").iterdir()}
    assert {"result.json", "uap.npy", "report.html", "report.md", "summary.md", "spec.json"} <= files
    a = r.attack  # the default on a two-class model: the class-directed race, one sgd build toward each class
    assert a.method == "sgd" and [c.name for c in a.candidates] == ["sgd toward normal", "sgd toward pneumonia"]
    assert not a.targeted and [c for c in a.candidates if c.chosen][0].selection_rate == a.selection.best_rate
