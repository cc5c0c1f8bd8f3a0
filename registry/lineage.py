"""Lineage between registry versions: walks up (what a version was made from) or down (what
was made from it) to any depth, and renders the result as a tree, Graphviz DOT or
OpenLineage-style run events.

Edges are stored once (parent -> child, ``edges`` table); a walk issues one query per level
with every frontier id at once, so depth, not fan-out, bounds the round trips.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.engine import Connection

from registry import schema as t

__all__ = ["Direction", "Lineage", "ancestors", "walk"]

Direction = Literal["upstream", "downstream"]

_PRODUCER = "https://github.com/shardyard/shardyard"
_SCHEMA = "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent"


@dataclass
class Lineage:
    """A walk from ``root``: nodes by version id (``{"ref", "kind", "revoked", "tags",
    "created_at"}``) and edges ``(parent, child, relation)``."""

    root: int
    direction: Direction
    nodes: dict[int, dict[str, Any]] = field(default_factory=dict)
    edges: list[tuple[int, int, str]] = field(default_factory=list)

    def ids(self) -> list[int]:
        """Every version reached, the root excluded."""
        return [i for i in self.nodes if i != self.root]

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Lineage:
        """The walk of :meth:`to_dict` (ids renumbered in node order). Versions a server hid
        (ref ``(hidden)``) collapse into one node."""
        ids: dict[str, int] = {}
        nodes: dict[int, dict[str, Any]] = {}
        for i, node in enumerate(doc["nodes"]):
            nodes[i] = dict(node)
            ids.setdefault(node["ref"], i)
        edges = [
            (ids[e["parent"]], ids[e["child"]], str(e["relation"]))
            for e in doc["edges"]
            if e["parent"] in ids and e["child"] in ids
        ]
        return cls(ids[doc["root"]], doc["direction"], nodes, edges)

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": self.nodes[self.root]["ref"],
            "direction": self.direction,
            "nodes": [self.nodes[i] for i in self.nodes],
            "edges": [
                {"parent": self.nodes[p]["ref"], "child": self.nodes[c]["ref"], "relation": r}
                for p, c, r in self.edges
            ],
        }

    def tree(self) -> str:
        """An indented tree from the root (a version reached twice is shown once, then
        referred to)."""
        children: dict[int, list[int]] = {}
        for p, c, _ in self.edges:
            a, b = (c, p) if self.direction == "upstream" else (p, c)
            children.setdefault(a, []).append(b)
        lines: list[str] = []
        seen: set[int] = set()

        def label(i: int) -> str:
            n = self.nodes[i]
            return f"{n['ref']} ({n['kind']}{', REVOKED' if n['revoked'] else ''})"

        def visit(i: int, prefix: str, last: bool, top: bool) -> None:
            branch = "" if top else ("└── " if last else "├── ")
            if i in seen:
                lines.append(f"{prefix}{branch}{self.nodes[i]['ref']} (see above)")
                return
            seen.add(i)
            lines.append(f"{prefix}{branch}{label(i)}")
            kids = sorted(children.get(i, []), key=lambda k: self.nodes[k]["ref"])
            inner = prefix if top else prefix + ("    " if last else "│   ")
            for k, kid in enumerate(kids):
                visit(kid, inner, k == len(kids) - 1, False)

        visit(self.root, "", True, True)
        return "\n".join(lines)

    def dot(self) -> str:
        """Graphviz DOT (edges point from parent to child)."""
        out = ["digraph lineage {", "  rankdir=LR;", "  node [shape=box];"]
        for i, n in self.nodes.items():
            style = ', style="dashed"' if n["revoked"] else ""
            bold = ", penwidth=2" if i == self.root else ""
            out.append(f'  v{i} [label="{n["ref"]}\\n{n["kind"]}"{style}{bold}];')
        for p, c, r in self.edges:
            out.append(f'  v{p} -> v{c} [label="{r}"];')
        out.append("}")
        return "\n".join(out)

    def openlineage(self) -> list[dict[str, Any]]:
        """OpenLineage-style COMPLETE run events: one per version reached that has parents
        in this walk, its parents as inputs and itself as the output."""
        parents: dict[int, list[int]] = {}
        for p, c, _ in self.edges:
            parents.setdefault(c, []).append(p)
        events = []
        for child, ps in parents.items():
            node = self.nodes[child]
            events.append(
                {
                    "eventType": "COMPLETE",
                    "eventTime": datetime.fromtimestamp(node["created_at"], UTC).isoformat(),
                    "run": {"runId": str(uuid.uuid5(uuid.NAMESPACE_URL, node["ref"]))},
                    "job": {"namespace": "shardyard", "name": f"register {node['ref']}"},
                    "inputs": [_dataset(self.nodes[p]) for p in sorted(ps)],
                    "outputs": [_dataset(node)],
                    "producer": _PRODUCER,
                    "schemaURL": _SCHEMA,
                }
            )
        return events

    def render(self, fmt: str) -> str:
        if fmt == "tree":
            return self.tree()
        if fmt == "dot":
            return self.dot()
        if fmt == "openlineage":
            return json.dumps(self.openlineage(), indent=1)
        if fmt == "json":
            return json.dumps(self.to_dict())
        raise ValueError(f"unknown lineage format {fmt!r}: tree, dot, openlineage or json")


def _dataset(node: dict[str, Any]) -> dict[str, Any]:
    return {
        "namespace": "shardyard-registry",
        "name": node["ref"],
        "facets": {"shardyard": {"kind": node["kind"], "tags": node["tags"]}},
    }


def walk(conn: Connection, root: int, direction: Direction, depth: int | None = None) -> Lineage:
    """The lineage of version id ``root`` (``depth`` levels; None: all)."""
    e = t.edges.c
    out = Lineage(root, direction)
    seen = {root}
    frontier = [root]
    level = 0
    while frontier and (depth is None or level < depth):
        if direction == "upstream":
            rows = conn.execute(
                select(e.parent_id, e.child_id, e.relation).where(e.child_id.in_(frontier))
            )
            pairs = [(r[0], r[1], r[2]) for r in rows]
            nxt = [p for p, _, _ in pairs]
        else:
            rows = conn.execute(
                select(e.parent_id, e.child_id, e.relation).where(e.parent_id.in_(frontier))
            )
            pairs = [(r[0], r[1], r[2]) for r in rows]
            nxt = [c for _, c, _ in pairs]
        out.edges += pairs
        frontier = [i for i in dict.fromkeys(nxt) if i not in seen]
        seen.update(frontier)
        level += 1
    out.nodes = _describe(conn, seen)
    # keep the root first, then in discovery order
    out.nodes = {root: out.nodes[root], **{k: v for k, v in out.nodes.items() if k != root}}
    return out


def ancestors(
    conn: Connection, ids: Iterable[int]
) -> tuple[dict[int, set[int]], dict[int, dict[str, Any]]]:
    """The upstream closure of every version in ``ids`` at once (one edge query per level
    for all of them, shared ancestors fetched once): (id -> ancestor ids, ancestor -> node)."""
    e = t.edges.c
    parents: dict[int, list[int]] = {}
    frontier = list(dict.fromkeys(ids))
    seen = set(frontier)
    while frontier:
        nxt: list[int] = []
        for i in range(0, len(frontier), 500):
            chunk = frontier[i : i + 500]
            for p, c in conn.execute(select(e.parent_id, e.child_id).where(e.child_id.in_(chunk))):
                parents.setdefault(c, []).append(p)
                if p not in seen:
                    seen.add(p)
                    nxt.append(p)
        frontier = nxt
    closure: dict[int, set[int]] = {}

    def up(i: int) -> set[int]:
        got = closure.get(i)
        if got is None:
            got = closure[i] = set()  # (no cycles: links refuse them)
            for p in parents.get(i, ()):
                got.add(p)
                got |= up(p)
        return got

    out = {i: up(i) for i in dict.fromkeys(ids)}
    every = set().union(*out.values()) if out else set()
    nodes: dict[int, dict[str, Any]] = {}
    listed = list(every)
    for i in range(0, len(listed), 500):
        nodes.update(_describe(conn, listed[i : i + 500]))
    return out, nodes


def _describe(conn: Connection, ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    v, a = t.versions.c, t.artifacts.c
    ids = list(ids)
    rows = conn.execute(
        select(v.id, v.number, v.revoked_at, v.created_at, a.namespace, a.name, a.kind)
        .select_from(t.versions.join(t.artifacts, a.id == v.artifact_id))
        .where(v.id.in_(ids))
    )
    tags: dict[int, dict[str, str]] = {i: {} for i in ids}
    for r in conn.execute(select(t.tags).where(t.tags.c.version_id.in_(ids))):
        tags[r.version_id][r.key] = r.value
    return {
        r.id: {
            "ref": f"{r.namespace}/{r.name}:{r.number}",
            "kind": r.kind,
            "revoked": r.revoked_at is not None,
            "tags": tags[r.id],
            "created_at": r.created_at,
        }
        for r in rows
    }
