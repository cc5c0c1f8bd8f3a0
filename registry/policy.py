"""What is deployable: the versions of an artifact that satisfy a policy.

A version is deployable when it is not revoked, it is where the policy's alias points (if one
is given), every metric condition holds (``eval/accuracy>=0.8``; a missing metric fails), and
its whole upstream lineage is clean: no ancestor revoked, and every ancestor of the policy's
kind (datasets by default) carries the required tags (``license=approved``). Each answer says
why the other versions were refused, so a failed deploy can be explained.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from datastore.errors import InvalidInput

__all__ = ["Condition", "Policy", "parse_condition"]

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    "<": operator.lt,
}
_CONDITION = re.compile(r"^\s*([A-Za-z0-9_./-]+)\s*(>=|<=|==|!=|>|<)\s*([-+0-9.eE]+)\s*$")


@dataclass(frozen=True)
class Condition:
    """``metric op value``."""

    metric: str
    op: str
    value: float

    def holds(self, metrics: Mapping[str, float]) -> bool:
        got = metrics.get(self.metric)
        return got is not None and _OPS[self.op](got, self.value)

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}"


def parse_condition(text: str) -> Condition:
    """``eval/accuracy>=0.8`` -> Condition; raises InvalidInput naming the fix."""
    m = _CONDITION.match(text)
    if not m:
        raise InvalidInput(
            f"metric condition {text!r}: write it as name OP number, OP one of "
            f"{', '.join(_OPS)} (e.g. 'eval/accuracy>=0.8')"
        )
    try:
        value = float(m.group(3))
    except ValueError:
        raise InvalidInput(f"metric condition {text!r}: {m.group(3)!r} is not a number") from None
    return Condition(m.group(1), m.group(2), value)


@dataclass(frozen=True)
class Policy:
    """A deployability policy (see the module docstring)."""

    alias: str | None = None
    conditions: Sequence[Condition] = ()
    upstream_tags: Mapping[str, str] = field(default_factory=dict)
    upstream_kind: str | None = "dataset"

    def refusals(self, version: Any, ancestors: Sequence[Mapping[str, Any]]) -> list[str]:
        """Why ``version`` (a registry Version) is not deployable under this policy; empty:
        it is. ``ancestors``: its upstream lineage nodes (ref, kind, revoked, tags). The
        alias is not judged here: ``Registry.deployable`` only asks about the version it
        points at."""
        why = []
        if version.revoked_at is not None:
            why.append("revoked")
        for c in self.conditions:
            if not c.holds(version.metrics):
                got = version.metrics.get(c.metric)
                why.append(f"{c} fails ({c.metric}={'missing' if got is None else f'{got:g}'})")
        for node in ancestors:
            if node["revoked"]:
                why.append(f"upstream {node['ref']} is revoked")
            if self.upstream_kind is None or node["kind"] == self.upstream_kind:
                for k, v in self.upstream_tags.items():
                    if node["tags"].get(k) != v:
                        why.append(f"upstream {node['ref']} lacks {k}={v}")
        return why
