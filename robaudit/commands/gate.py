"""``robaudit gate``: apply a TOML policy to a result; exit 0 pass, 1 a rule failed, 2 bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def gate(
    result: Annotated[Path, typer.Argument(help="result.json or audit JSON to gate.", show_default=False)],
    policy: Annotated[Path, typer.Option("--policy", "-p", help="TOML policy (see docs/policy.example.toml).",
                                         show_default=False)],
    junit_xml: Annotated[Optional[Path], typer.Option("--junit-xml", help="Write JUnit XML: one test case per "
                                                      "rule and cell.")] = None,
    summary_md: Annotated[Optional[Path], typer.Option("--summary-md", help="Write a Markdown summary (appended "
                                                       "when it is $GITHUB_STEP_SUMMARY).")] = None,
    exit_zero: Annotated[bool, typer.Option("--exit-zero", help="Report failed rules but exit 0 (bad input "
                                            "still exits 2).")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the checks as JSON on stdout.")] = False,
) -> None:
    """Gate a CI pipeline on a robustness policy."""
    from robaudit.commands._shared import print_gate_table
    from robaudit.core.console import print_json
    from robaudit.core.errors import BadInput
    from robaudit.gating import EXIT_PASS
    from robaudit.gating import gate as run_gate

    res = run_gate(result, policy, junit_xml=junit_xml, summary_md=summary_md)
    print_gate_table(res)
    if json_out:
        print_json(res.to_dict())
    if res.errors:
        first = res.errors[0]
        more = f" (and {len(res.errors) - 1} more)" if len(res.errors) > 1 else ""
        raise BadInput(first.message + more, "fix the policy, or set optional = true on rules whose cells may be "
                       "absent")
    code = res.exit_code(exit_zero)
    if code != EXIT_PASS:
        raise typer.Exit(code)
