"""A gate policy: ``[[rule]]`` tables in TOML, validated into :mod:`~robaudit.gating.rules` objects."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import Field, ValidationError, model_validator

from robaudit.core.errors import BadInput
from robaudit.core.files import read_toml
from robaudit.gating.rules import RULE_KINDS, RULES, _Strict

Rule = Annotated[Union[RULES], Field(discriminator="kind")]


class Policy(_Strict):
    """A gate policy: ``[[rule]]`` tables in TOML."""

    version: Literal[1] = 1
    name: str = "robaudit policy"
    description: str | None = None
    rules: list[Rule] = Field(alias="rule", min_length=1)

    @model_validator(mode="after")
    def _ids(self) -> Policy:
        seen: set[str] = set()
        for i, r in enumerate(self.rules, 1):
            if r.id is None:
                r.id = f"{r.kind}-{i}"
            if r.id in seen:
                raise ValueError(f"duplicate rule id {r.id!r}")
            seen.add(r.id)
        return self


def _format_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    loc = list(first["loc"])
    parts = []
    if loc[:1] == ["rule"] and len(loc) > 1 and isinstance(loc[1], int):
        parts.append(f"rule {loc[1] + 1}")
        loc = loc[2:]
        if loc and loc[0] in RULE_KINDS:
            parts[-1] += f" ({loc.pop(0)})"
    if loc:
        parts.append(".".join(str(x) for x in loc))
    msg = first["msg"]
    if first["type"] == "union_tag_invalid":
        msg = f"unknown rule kind; choose one of: {', '.join(RULE_KINDS)}"
    elif first["type"] == "union_tag_not_found":
        msg = f"missing 'kind'; choose one of: {', '.join(RULE_KINDS)}"
    elif first["loc"] == ("rule",) and first["type"] in ("missing", "too_short"):
        return "the policy has no rules (add one or more rule tables, see the example)"
    return ": ".join(parts + [msg]) if parts else msg


def parse_policy(data: dict[str, Any], where: str = "policy") -> Policy:
    """Validate a policy dict (BadInput with a one-line reason)."""
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        raise BadInput(f"{where}: {_format_error(exc)}", "see docs/policy.example.toml") from None


def load_policy(path: str | Path) -> Policy:
    """Read and validate a TOML policy file (BadInput with a one-line reason on failure)."""
    p = Path(path)
    if not p.is_file():
        raise BadInput(f"policy file {str(p)!r} does not exist", "see docs/policy.example.toml")
    data, _ = read_toml(p, "policy file", "see docs/policy.example.toml")  # size and nesting checked first
    return parse_policy(data, f"policy {str(p)!r}")
