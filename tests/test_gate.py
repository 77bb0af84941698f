"""The CI gate: policies, selectors, confidence bounds, exit codes 0/1/2, --exit-zero, JUnit and Markdown."""

from __future__ import annotations

import json
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from test_report import counted_cell, per_sample_cell, run_cli, uap_cell

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture(scope="module")
def audit(tmp_path_factory) -> Path:
    """Real ridge-model cells: natural-source UAPs at zeta 0.5% (weak) and 4% (strong), a targeted UAP
    towards melanoma, and a per-sample attack."""
    cells = [uap_cell(zeta=0.005)[0], uap_cell(zeta=0.04, seed=3)[0], uap_cell(zeta=0.02, target=4, seed=14)[0],
             per_sample_cell()]
    path = tmp_path_factory.mktemp("gate") / "audit.json"
    path.write_text(json.dumps({"kind": "audit", "cells": [json.loads(c.model_dump_json()) for c in cells]}))
    return path


def policy(tmp_path: Path, rules: str, name: str = "test policy") -> Path:
    return write(tmp_path / "policy.toml", f'version = 1\nname = "{name}"\n' + textwrap.dedent(rules))


# ------------------------------------------------------------------------------------- exit codes


def test_pass_exits_0(audit, tmp_path, capsys):
    p = policy(tmp_path, """
        [[rule]]
        kind = "max_fooling_rate"
        select = { source = "imagenet", norm = "l2", zeta = 0.005 }
        max = 0.10
        [[rule]]
        kind = "min_clean_accuracy"
        min = 0.55
    """)
    assert run_cli(["gate", audit, "--policy", p]) == 0
    err = capsys.readouterr().err
    assert "PASS" in err and "2 passed" in err


def test_failed_rule_exits_1_and_exit_zero_reports_it(audit, tmp_path, capsys):
    p = policy(tmp_path, """
        [[rule]]
        id = "natural-l2-4"
        kind = "max_fooling_rate"
        select = { source_kind = "natural", norm = "L2", zeta = 0.04 }
        max = 0.20
    """)
    assert run_cli(["gate", audit, "--policy", p]) == 1
    assert "FAIL" in capsys.readouterr().err
    assert run_cli(["gate", audit, "--policy", p, "--exit-zero", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["verdict"] == "fail" and out["counts"]["fail"] == 1
    (check,) = out["checks"]
    assert check["rule"] == "natural-l2-4" and check["threshold"] == 0.2 and check["measured"] > 0.5


@pytest.mark.parametrize("text, needle", [
    ("version = 1\n[[rule]]\nkind = 'max_fooling_rate'\nmax = 1.5\n",
     "rule 1 (max_fooling_rate): max: Input should be"),
    ("version = 1\n[[rule]]\nkind = 'max_fooling_rat'\nmax = 0.1\n", "rule 1: unknown rule kind; choose one of"),
    ("version = 1\n[[rule]]\nmax = 0.1\n", "missing 'kind'"),
    ("version = 1\n[[rule]]\nkind = 'max_fooling_rate'\nmax = 0.1\nselect = { colour = 'red' }\n",
     "select.colour: Extra inputs are not permitted"),
    ("version = 1\n[[rule]]\nkind = 'max_fooling_rate'\nmax = 0.1\nbound = 'median'\n", "bound: Input should be"),
    ("version = 2\n[[rule]]\nkind = 'require_cells'\n", "version: Input should be 1"),
    ("version = 1\n", "the policy has no rules"),
    ("version = 1\n[[rule]]\nid = 'a'\nkind = 'require_cells'\n[[rule]]\nid = 'a'\nkind = 'require_cells'\n",
     "duplicate rule id 'a'"),
    ("version = 1\n[[rule]\n", "is not valid TOML"),
])
def test_policy_errors_exit_2_with_one_line(audit, tmp_path, capsys, text, needle):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    assert run_cli(["gate", audit, "--policy", p]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err


def test_bad_result_and_missing_files_exit_2(tmp_path, audit, capsys):
    p = policy(tmp_path, "[[rule]]\nkind = 'require_cells'\n")
    bad = tmp_path / "r.json"
    bad.write_text('{"kind": "audit", "cells": [{"model": 1}]}')
    assert run_cli(["gate", bad, "--policy", p]) == 2
    assert "cell 0 does not match result schema" in capsys.readouterr().err
    assert run_cli(["gate", tmp_path / "none.json", "--policy", p]) == 2
    assert run_cli(["gate", audit, "--policy", tmp_path / "none.toml"]) == 2
    assert "policy file" in capsys.readouterr().err


def test_rule_selecting_no_cell_exits_2_even_with_exit_zero_unless_optional(audit, tmp_path, capsys):
    rules = """
        [[rule]]
        id = "linf"
        kind = "max_fooling_rate"
        select = { norm = "linf", zeta = 0.04 }
        max = 0.2
    """
    p = policy(tmp_path, rules)
    junit = tmp_path / "g.xml"
    assert run_cli(["gate", audit, "--policy", p, "--exit-zero", "--junit-xml", junit]) == 2
    err = capsys.readouterr().err
    assert "rule 'linf' selects no cell of the result (norm=linf, zeta=0.04)" in err
    # the JUnit file is still written, with the error on its test case
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite.get("errors") == "1" and suite.find("testcase/error") is not None
    p = policy(tmp_path, rules + "optional = true\n")
    assert run_cli(["gate", audit, "--policy", p]) == 0
    # a selector that matches cells lacking what the rule needs is an error too
    p = policy(tmp_path, "[[rule]]\nkind = 'max_targeted_success'\nselect = { zeta = 0.04 }\nmax = 0.5\n")
    assert run_cli(["gate", audit, "--policy", p]) == 2
    assert "none has the data it needs" in capsys.readouterr().err


# --------------------------------------------------------------------------------- rule semantics


def test_upper_bound_stops_small_test_sets_passing_by_luck():
    from robaudit.gating import evaluate, parse_policy

    cell = counted_cell(3, 20, p_value=0.5)                       # 15%, Wilson upper bound ~36%
    strict = parse_policy({"rule": [{"kind": "max_fooling_rate", "max": 0.2}]})
    lucky = parse_policy({"rule": [{"kind": "max_fooling_rate", "max": 0.2, "bound": "value"}]})
    res = evaluate(strict, [cell])
    assert res.verdict == "fail" and res.exit_code() == 1 and res.exit_code(exit_zero=True) == 0
    assert res.checks[0].measured == pytest.approx(cell.metrics.fooling_rate.ci[1])
    assert "fooling rate upper bound 36.0% > max 20.0%" in res.checks[0].message
    assert evaluate(lucky, [cell]).verdict == "pass"
    # the same rate on 2000 images passes on its upper bound
    assert evaluate(strict, [counted_cell(300, 2000, p_value=0.5)]).verdict == "pass"


def test_every_rule_kind_on_real_results(audit):
    from robaudit.gating import evaluate, parse_policy
    from robaudit.grading import load_input

    ai = load_input(audit)
    strong, targeted, per_sample = ai.cells[1], ai.cells[2], ai.cells[3]
    eps = per_sample.per_eps[1].eps
    pol = parse_policy({"name": "all kinds", "rule": [
        {"id": "fool", "kind": "max_fooling_rate", "select": {"model": "skin_*"}, "max": 0.3},
        {"id": "tgt", "kind": "max_targeted_success", "select": {"target": "mel*"}, "max": 0.5},
        {"id": "tgt-over-clean", "kind": "max_targeted_success", "select": {"target": 4}, "over_clean": True,
         "max": 0.95},
        {"id": "ratio", "kind": "max_control_ratio", "select": {"zeta": [0.005, 0.04]}, "max": 10},
        {"id": "acc", "kind": "min_clean_accuracy", "min": 0.6},
        {"id": "ps", "kind": "max_per_sample_success", "eps": eps, "max": 0.99},
        {"id": "sev", "kind": "max_severity", "select": {"targeted": False}, "max": "moderate"},
        {"id": "need-linf", "kind": "require_cells", "select": {"norm": "linf"}},
        {"id": "need-l2", "kind": "require_cells", "select": {"norm": "l2", "kind": "uap"}, "min_count": 3},
    ]})
    res = evaluate(pol, ai)
    by = {}
    for c in res.checks:
        by.setdefault(c.rule, []).append(c)
    # max_fooling_rate: the two non-targeted UAP cells (targeted ones only when the selector says so)
    assert [c.status for c in by["fool"]] == ["pass", "fail"]
    assert by["fool"][1].measured == pytest.approx(strong.metrics.fooling_rate.ci[1])
    tsr = targeted.metrics.targeted_success_rate
    assert by["tgt"][0].status == "fail" and by["tgt"][0].measured == pytest.approx(tsr.ci[1])
    assert by["tgt-over-clean"][0].measured == pytest.approx(tsr.ci[1] - tsr.clean_rate)
    ratio = by["ratio"][1]
    assert ratio.measured == pytest.approx(strong.metrics.fooling_rate.ci[1] / strong.control.fooling_rate.value)
    assert ratio.status == "fail" and "x" in ratio.message
    # one clean-accuracy check per model and split, on the Wilson lower bound
    assert len(by["acc"]) == 1 and by["acc"][0].measured < strong.metrics.clean_accuracy
    assert by["ps"][0].measured == pytest.approx(per_sample.per_eps[1].success_rate.ci[1])
    assert {c.status for c in by["sev"]} == {"pass", "fail"}
    assert by["need-linf"][0].status == "fail" and by["need-l2"][0].status == "pass"
    assert res.exit_code() == 1 and not res.errors


def test_harm_rules_read_the_missed_disease_and_sensitivity_fields(audit, tmp_path, capsys):
    """The ridge cells declare melanoma critical (a card's critical_class): the rules read result.json's harm."""
    from robaudit.gating import evaluate, parse_policy
    from robaudit.grading import load_input

    ai = load_input(audit)
    weak, strong, targeted = ai.cells[0], ai.cells[1], ai.cells[2]
    assert targeted.harm.critical.direction == "raises false alarms"           # targeted toward melanoma itself
    pol = parse_policy({"rule": [
        {"id": "missed", "kind": "max_missed_disease_rate", "max": 0.5, "select": {"targeted": False}},
        {"id": "missed-lower", "kind": "max_missed_disease_rate", "max": 0.5, "bound": "lower"},
        {"id": "sens-mel", "kind": "max_sensitivity_drop", "max": 0.05},
        {"id": "sens-nevi-upper", "kind": "max_sensitivity_drop", "class": "melanocytic nevi", "max": 0.05,
         "bound": "upper", "select": {"zeta": 0.04}}]})
    res = evaluate(pol, ai)
    by: dict[str, list] = {}
    for c in res.checks:
        by.setdefault(c.rule, []).append(c)
    assert [c.measured for c in by["missed"]] == pytest.approx(
        [weak.harm.critical.missed_disease.ci[1], strong.harm.critical.missed_disease.ci[1]])
    assert len(by["missed-lower"]) == 3                                      # targeted cells are read too
    mel = [next(k for k in c.harm.classes if k.name == "melanoma") for c in (weak, strong, targeted)]
    assert [c.measured for c in by["sens-mel"]] == pytest.approx(
        [k.sensitivity_clean.value - k.sensitivity_adv.value for k in mel])
    nv = next(k for k in strong.harm.classes if k.name == "melanocytic nevi")
    (up,) = by["sens-nevi-upper"]
    assert up.measured > nv.sensitivity_clean.value - nv.sensitivity_adv.value   # Newcombe's upper end
    assert "melanocytic nevi sensitivity drop upper bound" in up.message
    # a cell without a critical class (schema 1.2, or a task with none declared) is an error, never a pass
    bare = json.loads(audit.read_text())
    for c in bare["cells"]:
        c.pop("harm", None)
    path = tmp_path / "old.json"
    path.write_text(json.dumps(bare))
    p = policy(tmp_path, "[[rule]]\nkind = 'max_missed_disease_rate'\nmax = 0.5\n")
    assert run_cli(["gate", path, "--policy", p]) == 2
    assert "none has the data it needs" in capsys.readouterr().err
    p = policy(tmp_path, "[[rule]]\nkind = 'max_sensitivity_drop'\nclass = 'melanoma'\nmax = 0.9\n")
    assert run_cli(["gate", audit, "--policy", p]) == 0


def test_per_sample_rule_at_an_epsilon_the_cell_lacks_is_an_error():
    from robaudit.gating import evaluate, parse_policy

    res = evaluate(parse_policy({"rule": [{"kind": "max_per_sample_success", "eps": 0.3, "max": 0.5}]}),
                   [per_sample_cell()])
    assert res.verdict == "error" and res.exit_code(exit_zero=True) == 2
    assert "has no epsilon 0.3 (it has 0.05, 0.1, 0.2, 0.4)" in res.errors[0].message
    # the severity rule grades UAP cells only: a max_severity rule over per-sample cells checks nothing
    res = evaluate(parse_policy({"rule": [{"kind": "max_severity", "select": {"kind": "per-sample"}, "max": "none"}]}),
                   [per_sample_cell(), counted_cell(300, 400, p_value=1e-9)])
    assert res.verdict == "error" and "none has the data it needs" in res.errors[0].message


@pytest.mark.parametrize("select, matches", [
    ({}, True),
    ({"model": "SKIN_*"}, True),
    ({"model": ["other", "skin_counts"]}, True),
    ({"model": "skin"}, False),
    ({"zeta": 0.04 + 1e-12}, True),
    ({"zeta": 0.041}, False),
    ({"norm": "Linf"}, False),
    ({"norm": ["l2", "linf"]}, True),
    ({"source_kind": "natural"}, True),
    ({"source_kind": "task"}, False),
    ({"targeted": False}, True),
    ({"target": 0}, False),
    ({"method": "fg*", "data": "dermamnist", "split": "test", "init": "imagenet", "kind": "uap"}, True),
])
def test_selectors(select, matches):
    from robaudit.gating import Selector

    assert Selector.model_validate(select).matches(counted_cell(10, 100)) is matches


def test_access_and_delivery_selectors_read_the_threat_fields():
    """A result without the 0.6 threat fields is the published white-box cell at the model input."""
    from robaudit.gating import Selector

    old = counted_cell(10, 100)
    query = old.model_copy(update={"attack": old.attack.model_copy(update={"access": "query",
                                                                          "delivery": "jpeg=75"})})
    assert Selector(access="white-box", delivery="input").matches(old) and not Selector(access="query").matches(old)
    assert Selector(access="query", delivery="jpeg=*").matches(query)
    assert not Selector(delivery=["input", "stored"]).matches(query)


def test_target_selector_matches_index_or_class_name():
    from robaudit.gating import Selector

    cell = counted_cell(10, 100, targeted_k=30, target=4)
    assert Selector(target=4).matches(cell) and Selector(target="mel").matches(cell)
    assert Selector(target=["bcc", "m?l"]).matches(cell) and not Selector(target="nv").matches(cell)


# --------------------------------------------------------------------------------- JUnit / Markdown


def test_junit_has_one_case_per_rule_and_cell(audit, tmp_path):
    p = policy(tmp_path, """
        [[rule]]
        id = "natural"
        kind = "max_fooling_rate"
        select = { source = "imagenet" }
        max = 0.25
        [[rule]]
        id = "acc"
        kind = "min_clean_accuracy"
        min = 0.5
        [[rule]]
        id = "pgd"
        kind = "max_per_sample_success"
        select = { method = "nope" }
        eps = 0.1
        max = 0.5
        optional = true
    """, name="release <gate> & co")
    junit = tmp_path / "out" / "gate.xml"
    assert run_cli(["gate", audit, "--policy", p, "--junit-xml", junit]) == 1
    root = ET.parse(junit).getroot()
    suite = root.find("testsuite")
    assert suite.get("name") == "robaudit gate: release <gate> & co"
    counts = [suite.get(k) for k in ("tests", "failures", "errors", "skipped")]
    assert counts == ["4", "1", "0", "1"]
    cases = suite.findall("testcase")
    assert [c.get("classname") for c in cases] == ["robaudit.gate.natural"] * 2 + ["robaudit.gate.acc",
                                                                                    "robaudit.gate.pgd"]
    failed = [c for c in cases if c.find("failure") is not None]
    assert len(failed) == 1 and "zeta=4%" in failed[0].get("name")
    msg = failed[0].find("failure").get("message")
    assert msg.startswith("fooling rate upper bound ") and "> max 25.0%" in msg and "n=400" in msg
    props = {p.get("name"): p.get("value") for p in failed[0].find("properties")}
    assert float(props["threshold"]) == 0.25 and float(props["measured"]) > 0.25 and props["comparison"] == "<="
    passed = cases[0]
    assert "<= max 25.0%" in passed.find("system-out").text
    assert cases[3].find("skipped") is not None
    assert {p.get("name") for p in suite.find("properties")} >= {"verdict", "source", "robaudit_version"}


def test_junit_escapes_hostile_names(tmp_path):
    from robaudit.gating import evaluate, parse_policy, write_junit

    cell = counted_cell(300, 400, p_value=1e-9, model='x"><script>alert(1)</script>\x07')
    res = evaluate(parse_policy({"rule": [{"kind": "max_fooling_rate", "max": 0.5}]}), [cell])
    path = write_junit(res, tmp_path / "j.xml")
    case = ET.parse(path).getroot().find("testsuite/testcase")
    assert case.get("name").startswith('x"><script>alert(1)</script>\ufffd')   # round-trips as text
    assert "<script>" not in path.read_text()


def test_summary_markdown_and_step_summary_append(audit, tmp_path, monkeypatch):
    p = policy(tmp_path, """
        [[rule]]
        id = "natural|pipe"
        kind = "max_fooling_rate"
        select = { source = "imagenet" }
        max = 0.25
    """)
    step = tmp_path / "step.md"
    step.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step))
    assert run_cli(["gate", audit, "--policy", p, "--summary-md", step]) == 1
    text = step.read_text()
    assert text.startswith("earlier step\n## \u274c robaudit gate: FAIL (test policy)")
    assert "1 passed, 1 failed" in text and "natural\\|pipe" in text
    rows = [ln for ln in text.splitlines() if ln.startswith("| \u274c")]
    assert len(rows) == 1 and "&gt; max 25.0%" in rows[0] and rows[0].count(" | ") == 4
    other = tmp_path / "summary.md"
    other.write_text("old\n")
    assert run_cli(["gate", audit, "--policy", p, "--summary-md", other, "--exit-zero"]) == 0
    assert other.read_text().startswith("## ")                         # overwritten, not appended


def test_shipped_example_policy_gates_a_real_audit(audit, tmp_path):
    from robaudit.gating import evaluate, load_policy
    from robaudit.grading import load_input

    pol = load_policy(REPO / "docs" / "policy.example.toml")
    assert len(pol.rules) >= 6 and len({r.kind for r in pol.rules}) >= 6
    res = evaluate(pol, load_input(audit))
    assert not res.errors
    by = {c.rule: c for c in res.checks}
    assert by["headline-cell-present"].status == "pass"
    assert by["natural-uap-l2-4pct"].status == "fail"           # the ridge model is badly exposed at 4%
    assert by["pgd-linf-2-255"].status == "skipped"             # optional: this audit has no L-inf attack
    assert res.exit_code() == 1


def test_example_workflow_runs_the_documented_steps():
    text = (REPO / "docs" / "github-actions.example.yml").read_text()
    for step in ("robaudit train skin_tf_efficientnet_lite0", "robaudit audit", "--recipe quick", "robaudit gate",
                 "--policy docs/policy.example.toml", "--junit-xml", "actions/upload-artifact",
                 "scripts/install-chromium.sh"):
        assert step in text, step
    assert "\t" not in text
    try:
        import yaml
    except ImportError:     # PyYAML is not a dependency; the string checks above still run
        return
    doc = yaml.safe_load(text)
    steps = doc["jobs"]["audit"]["steps"]
    assert all("run" in s or "uses" in s for s in steps)
    assert any(s.get("if") == "always()" and "upload-artifact" in s.get("uses", "") for s in steps)
