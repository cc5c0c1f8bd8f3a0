"""The registry's hot reads in plain SQL on the driver's cursor.

Resolving a reference, listing the newest versions and loading a version's files, tags,
metrics and aliases are what MLOps scripts, loaders and the CLI do all day. Through
SQLAlchemy Core each statement costs ~0.15 ms of Python before SQLite does any work, and a
version took seven of them; here a resolve is two statements on the DBAPI cursor (the version
row joined to its artifact, then one ``UNION ALL`` for everything that hangs off it), inside one
read transaction (a snapshot: ``BEGIN`` on SQLite, ``REPEATABLE READ`` on PostgreSQL). The SQL is
portable between the two; only the placeholder differs. Writes and rarer reads stay on
SQLAlchemy Core.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from registry.refs import Ref
    from registry.registry import Version

__all__ = ["Reader"]

_COLS = (
    "v.id, v.number, v.digest, v.created_at, v.created_by, v.dataset_uri, v.dataset_version, "
    "v.meta, v.revoked_at, a.namespace, a.name, a.kind"
)
_BY_NUMBER = (
    f"SELECT {_COLS} FROM artifacts a JOIN versions v ON v.artifact_id = a.id "
    "WHERE a.namespace = ? AND a.name = ? AND v.number = ?"
)
_BY_ALIAS = (
    f"SELECT {_COLS} FROM artifacts a JOIN aliases al ON al.artifact_id = a.id "
    "JOIN versions v ON v.id = al.version_id "
    "WHERE a.namespace = ? AND a.name = ? AND al.alias = ?"
)
_NEWEST = (
    f"SELECT {_COLS} FROM artifacts a JOIN versions v ON v.artifact_id = a.id "
    "WHERE a.namespace = ? AND a.name = ? ORDER BY v.number DESC LIMIT ?"
)
_DETAILS = (
    "SELECT 'f', version_id, path, sha256, size FROM files WHERE version_id IN ({ids}) "
    "UNION ALL SELECT 't', version_id, key, value, NULL FROM tags WHERE version_id IN ({ids}) "
    "UNION ALL SELECT 'm', version_id, key, NULL, value FROM metrics "
    "WHERE version_id IN ({ids}) "
    "UNION ALL SELECT 'a', version_id, alias, NULL, NULL FROM aliases "
    "WHERE version_id IN ({ids})"
)
_CHUNK = 500  # version ids per details statement (4 IN lists: far below any bind limit)
_ALL = 2**62  # LIMIT for "every version"


class Reader:
    """Hot reads of one engine's database (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.postgres = engine.dialect.name == "postgresql"

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.postgres else sql

    @contextmanager
    def cursor(self) -> Iterator[Any]:
        """A DBAPI cursor inside a read-only snapshot transaction."""
        raw = self.engine.raw_connection()
        try:
            cur = raw.cursor()
            try:
                # SQLite: the engine's connections run with isolation_level None (see db.py)
                cur.execute(
                    "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ" if self.postgres else "BEGIN"
                )
                try:
                    yield cur
                finally:
                    if self.postgres:
                        raw.rollback()
                    else:
                        cur.execute("ROLLBACK")
            finally:
                cur.close()
        finally:
            raw.close()

    def token(self, token_id: str) -> dict[str, Any] | None:
        """Token ``token_id``'s row (what authentication needs), or None: every request to the
        server reads it, so it is one statement on a raw connection, outside a transaction."""
        raw = self.engine.raw_connection()
        try:
            cur = raw.cursor()
            try:
                cur.execute(
                    self._sql(
                        "SELECT secret_sha256, namespace, role, expires_at, revoked_at, groups "
                        "FROM tokens WHERE id = ?"
                    ),
                    (token_id,),
                )
                row = cur.fetchone()
            finally:
                cur.close()
            if self.postgres:
                raw.rollback()
        finally:
            raw.close()
        if row is None:
            return None
        keys = ("secret_sha256", "namespace", "role", "expires_at", "revoked_at", "groups")
        return dict(zip(keys, row, strict=True))

    def find(self, cur: Any, ref: Ref) -> tuple[Any, ...] | None:
        """The row of the version ``ref`` names (see :meth:`load`), or None."""
        if ref.alias is not None:
            cur.execute(self._sql(_BY_ALIAS), (ref.namespace, ref.name, ref.alias))
        elif ref.version is not None:
            cur.execute(self._sql(_BY_NUMBER), (ref.namespace, ref.name, ref.version))
        else:
            cur.execute(self._sql(_NEWEST), (ref.namespace, ref.name, 1))
        row = cur.fetchone()
        return tuple(row) if row is not None else None

    def newest(self, cur: Any, ref: Ref, limit: int | None) -> list[tuple[Any, ...]]:
        """Rows of the newest ``limit`` versions of artifact ``ref`` (all when None)."""
        cur.execute(self._sql(_NEWEST), (ref.namespace, ref.name, _ALL if limit is None else limit))
        return [tuple(r) for r in cur.fetchall()]

    def search(
        self,
        cur: Any,
        *,
        artifact: Ref | None = None,
        kind: str | None = None,
        dataset: tuple[str, int] | None = None,
        sha256: str | None = None,
        tags: Sequence[tuple[str, str]] = (),
        limit: int | None = None,
    ) -> list[tuple[Any, ...]]:
        """Rows of the versions matching every condition given, oldest first (the newest
        ``limit`` when given)."""
        where: list[str] = []
        params: list[Any] = []
        if artifact is not None:
            where.append("a.namespace = ? AND a.name = ?")
            params += [artifact.namespace, artifact.name]
        if kind is not None:
            where.append("a.kind = ?")
            params.append(kind)
        if dataset is not None:
            where.append("v.dataset_uri = ? AND v.dataset_version = ?")
            params += list(dataset)
        if sha256 is not None:
            where.append("v.id IN (SELECT version_id FROM files WHERE sha256 = ?)")
            params.append(sha256)
        for key, value in tags[1:]:
            where.append("v.id IN (SELECT version_id FROM tags WHERE key = ? AND value = ?)")
            params += [key, value]
        sql = f"SELECT {_COLS} FROM artifacts a JOIN versions v ON v.artifact_id = a.id"
        if tags:  # driven from the (key, value) index: a tag picks few of many versions
            sql = (
                f"SELECT {_COLS} FROM tags tg JOIN versions v ON v.id = tg.version_id "
                "JOIN artifacts a ON a.id = v.artifact_id"
            )
            where.insert(0, "tg.key = ? AND tg.value = ?")
            params = [tags[0][0], tags[0][1], *params]
        if where:
            sql += " WHERE " + " AND ".join(where)
        if limit is None:
            cur.execute(self._sql(sql + " ORDER BY v.id"), params)
            return [tuple(r) for r in cur.fetchall()]
        cur.execute(self._sql(sql + " ORDER BY v.id DESC LIMIT ?"), [*params, limit])
        return [tuple(r) for r in cur.fetchall()][::-1]

    def load(self, cur: Any, rows: Sequence[tuple[Any, ...]]) -> list[Version]:
        """Versions of ``rows`` (columns as :data:`_COLS`), files, tags, metrics, aliases."""
        from registry.registry import FileEntry, Version

        ids = [r[0] for r in rows]
        files: dict[int, list[FileEntry]] = {i: [] for i in ids}
        tags: dict[int, dict[str, str]] = {i: {} for i in ids}
        metrics: dict[int, dict[str, float]] = {i: {} for i in ids}
        aliases: dict[int, list[str]] = {i: [] for i in ids}
        for start in range(0, len(ids), _CHUNK):
            part = ids[start : start + _CHUNK]
            marks = ", ".join("?" * len(part))
            cur.execute(self._sql(_DETAILS.format(ids=marks)), part * 4)
            for what, vid, key, text, number in cur.fetchall():
                if what == "f":
                    files[vid].append(FileEntry(key, text, int(number)))
                elif what == "t":
                    tags[vid][key] = text
                elif what == "m":
                    metrics[vid][key] = float(number)
                else:
                    aliases[vid].append(key)
        return [
            Version(
                namespace=r[9],
                name=r[10],
                number=r[1],
                kind=r[11],
                digest=r[2],
                created_at=r[3],
                created_by=r[4],
                files=tuple(sorted(files[r[0]], key=lambda f: f.path)),
                tags=tags[r[0]],
                metrics=metrics[r[0]],
                metadata=json.loads(r[7] or "{}"),
                dataset_uri=r[5],
                dataset_version=r[6],
                revoked_at=r[8],
                aliases=tuple(sorted(aliases[r[0]])),
                id=r[0],
            )
            for r in rows
        ]
