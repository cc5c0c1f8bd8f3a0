"""The audit trail: an append-only, hash-chained record of who did what to the registry.

Every record has a sequence number (1, 2, 3... without gaps), a time, the actor, an action
(``register``, ``alias``, ``release``, ``revoke``, ``link``, ``download``, ``upload``,
``delete``, ``hold``, ``declassify``, ``token.create``, ``token.revoke``, ``gc.delete``,
``location.set``, ``residency.set``...), its target (a reference, token, blob or namespace)
and details (JSON). Its ``hash`` is the sha256 of the previous record's hash and its own
canonical content, so :func:`verify` finds any record edited, inserted or removed in the
database afterwards and names the first one that breaks the chain. Records are written in the
same transaction as the change they describe: a change is never without its record.

What a chain cannot show on its own is the removal of the newest records (the tail). The
newest sequence number and hash are also kept in ``settings`` (``audit_head``), which catches
a truncated tail unless both were rewritten together; for evidence against someone who can
write the database, export :func:`head` regularly to a place they cannot write (a WORM
bucket, a ticket).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import insert, select, text, update
from sqlalchemy.engine import Connection, Engine

from registry import schema as t

__all__ = ["Problem", "Record", "append", "head", "records", "verify"]

GENESIS = "0" * 64
_HEAD = "audit_head"
_PG_LOCK = 0x5348_4159_4155_4454  # one advisory lock key for appends on PostgreSQL


@dataclass(frozen=True)
class Record:
    """One audit record."""

    seq: int
    at: float
    actor: str
    action: str
    target: str
    detail: dict[str, Any]
    prev: str
    hash: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Problem:
    """Where the chain breaks and how."""

    seq: int
    what: str

    def __str__(self) -> str:
        return f"record {self.seq}: {self.what}"


def _digest(
    prev: str, seq: int, at: float, actor: str, action: str, target: str, detail: str
) -> str:
    body = json.dumps([seq, repr(float(at)), actor, action, target, detail], ensure_ascii=False)
    return hashlib.sha256(f"{prev}\n{body}".encode()).hexdigest()


def append(
    conn: Connection,
    actor: str,
    action: str,
    target: str,
    detail: Mapping[str, Any] | None = None,
) -> Record:
    """Add a record inside ``conn``'s (write) transaction; appends are serialised (SQLite's
    write lock, or an advisory lock on PostgreSQL), so the chain has no forks."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK})
    last = conn.execute(
        select(t.audit.c.seq, t.audit.c.hash).order_by(t.audit.c.seq.desc()).limit(1)
    ).first()
    seq, prev = (int(last[0]) + 1, str(last[1])) if last else (1, GENESIS)
    at = time.time()
    body = json.dumps(dict(detail or {}), sort_keys=True, default=str)
    digest = _digest(prev, seq, at, actor, action, target, body)
    conn.execute(
        insert(t.audit).values(
            seq=seq,
            at=at,
            actor=actor,
            action=action,
            target=target,
            detail=body,
            prev=prev,
            hash=digest,
        )
    )
    value = f"{seq}:{digest}"
    moved = conn.execute(
        update(t.settings).where(t.settings.c.key == _HEAD).values(value=value)
    ).rowcount
    if not moved:
        conn.execute(insert(t.settings).values(key=_HEAD, value=value))
    return Record(seq, at, actor, action, target, json.loads(body), prev, digest)


def records(
    engine: Engine,
    *,
    since: float | None = None,
    actor: str | None = None,
    target: str | None = None,
    action: str | None = None,
    limit: int | None = None,
) -> list[Record]:
    """Records matching every filter given, oldest first (``target``: a reference or an
    artifact name, which matches its versions too)."""
    a = t.audit.c
    conditions = []
    if since is not None:
        conditions.append(a.at >= since)
    if actor is not None:
        conditions.append(a.actor == actor)
    if action is not None:
        conditions.append(a.action == action)
    if target is not None:
        conditions.append(
            (a.target == target)
            | a.target.like(target.replace("%", r"\%").replace("_", r"\_") + ":%", escape="\\")
            | a.target.like(target.replace("%", r"\%").replace("_", r"\_") + "@%", escape="\\")
        )
    query = select(t.audit).where(*conditions).order_by(a.seq)
    if limit is not None:
        query = query.limit(limit)
    with engine.connect() as conn:
        return [_record(r) for r in conn.execute(query).mappings()]


def _record(r: Any) -> Record:
    try:
        detail = json.loads(r["detail"])
    except ValueError:
        detail = {"unparsable": r["detail"]}
    return Record(
        int(r["seq"]), r["at"], r["actor"], r["action"], r["target"], detail, r["prev"], r["hash"]
    )


def exists(engine: Engine, actor: str, action: str, target: str) -> bool:
    """Whether ``actor`` did ``action`` on ``target`` (e.g. uploaded a blob) at any time."""
    a = t.audit.c
    with engine.connect() as conn:
        found = conn.execute(
            select(a.seq).where(a.target == target, a.actor == actor, a.action == action).limit(1)
        ).first()
    return found is not None


def head(engine: Engine) -> tuple[int, str]:
    """(newest sequence number, its hash): what to export to keep the tail honest."""
    with engine.connect() as conn:
        value = conn.execute(select(t.settings.c.value).where(t.settings.c.key == _HEAD)).scalar()
    if not value:
        return 0, GENESIS
    seq, _, digest = str(value).partition(":")
    return int(seq), digest


def verify(engine: Engine) -> tuple[int, list[Problem]]:
    """(records checked, problems): every edited, inserted, removed or reordered record is
    reported (each break once, where it starts)."""
    problems: list[Problem] = []
    prev = GENESIS
    expected = 1
    count = 0
    with engine.connect() as conn:
        rows = conn.execute(select(t.audit).order_by(t.audit.c.seq)).mappings()
        for r in rows:
            count += 1
            seq = int(r["seq"])
            if seq != expected:
                what = "missing" if seq > expected else "out of order"
                gap = f"records {expected}-{seq - 1} are missing" if seq > expected else what
                problems.append(Problem(seq, f"sequence jumps from {expected - 1} ({gap})"))
            if r["prev"] != prev:
                problems.append(
                    Problem(
                        seq, "does not follow the record before it (one was removed or inserted)"
                    )
                )
            again = _digest(
                r["prev"], seq, r["at"], r["actor"], r["action"], r["target"], r["detail"]
            )
            if again != r["hash"]:
                problems.append(Problem(seq, "its content does not match its hash (edited)"))
            prev = r["hash"]
            expected = seq + 1
        value = conn.execute(select(t.settings.c.value).where(t.settings.c.key == _HEAD)).scalar()
    if value:
        seq_s, _, digest = str(value).partition(":")
        if int(seq_s) != expected - 1 or digest != prev:
            problems.append(
                Problem(
                    int(seq_s),
                    f"the recorded head is record {seq_s}, the table ends at {expected - 1} "
                    "(the newest records were removed, or the head was rewritten)",
                )
            )
    elif count:
        problems.append(Problem(expected - 1, "the recorded head is missing"))
    return count, problems
