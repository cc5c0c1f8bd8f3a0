"""``Registry``: versioned artifacts with files in a content-addressed blob store and
metadata in SQL.

Registering a version uploads (or finds) every blob first, verifies it, and only then writes
the version's rows in one transaction: a crash before that commit leaves no version visible,
only blobs that ``gc`` may remove. Version numbers come from ``max + 1`` inside the
transaction, guarded by the unique constraint on (artifact, number): on SQLite the
transaction holds the write lock from its start; on PostgreSQL a collision is retried.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import and_, delete, func, insert, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from datastore import StorageConfig
from datastore.errors import InvalidInput, NotFound
from registry import audit
from registry import gc as gcp
from registry import schema as t
from registry.blobs import BlobStore, Staged, sha256_file
from registry.db import open_engine
from registry.envelope import KeyProvider, LocalKeyFile, Sealer
from registry.lineage import Direction, Lineage, ancestors, walk
from registry.policy import Policy
from registry.reads import Reader
from registry.refs import KINDS, Ref, check_alias, check_name, check_namespace, parse_ref
from registry.residency import Location, check_residency, location_of

__all__ = ["FileEntry", "Registry", "Version", "default_home"]


def default_home() -> Path:
    """``$SHARDYARD_HOME``, else ``~/.shardyard``."""
    return Path(os.environ.get("SHARDYARD_HOME", "~/.shardyard")).expanduser()


@dataclass(frozen=True)
class FileEntry:
    """A file of a version: its path inside the version, sha256 and size."""

    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Version:
    """One immutable artifact version."""

    namespace: str
    name: str
    number: int
    kind: str
    digest: str
    created_at: float
    created_by: str
    files: tuple[FileEntry, ...] = ()
    tags: Mapping[str, str] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)
    dataset_uri: str | None = None
    dataset_version: int | None = None
    revoked_at: float | None = None
    aliases: tuple[str, ...] = ()
    id: int = field(default=0, compare=False)  # database row id (not part of equality)

    @property
    def ref(self) -> Ref:
        return Ref(self.namespace, self.name, version=self.number)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (``--json``)."""
        return {
            "ref": str(self.ref),
            "namespace": self.namespace,
            "name": self.name,
            "version": self.number,
            "kind": self.kind,
            "digest": self.digest,
            "created_at": self.created_at,
            "created_by": self.created_by,
            "files": [vars(f) for f in self.files],
            "tags": dict(self.tags),
            "metrics": dict(self.metrics),
            "metadata": dict(self.metadata),
            "dataset": (
                {"uri": self.dataset_uri, "version": self.dataset_version}
                if self.dataset_uri
                else None
            ),
            "revoked": self.revoked_at is not None,
            "revoked_at": self.revoked_at,
            "aliases": list(self.aliases),
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Version:
        """Inverse of :meth:`to_dict` (what the server sends)."""
        dataset = doc.get("dataset") or {}
        return cls(
            namespace=doc["namespace"],
            name=doc["name"],
            number=int(doc["version"]),
            kind=doc["kind"],
            digest=doc["digest"],
            created_at=float(doc["created_at"]),
            created_by=doc["created_by"],
            files=tuple(FileEntry(**f) for f in doc.get("files", [])),
            tags=dict(doc.get("tags", {})),
            metrics={k: float(v) for k, v in doc.get("metrics", {}).items()},
            metadata=dict(doc.get("metadata", {})),
            dataset_uri=dataset.get("uri"),
            dataset_version=dataset.get("version"),
            revoked_at=doc.get("revoked_at"),
            aliases=tuple(doc.get("aliases", [])),
        )


def _digest(files: Sequence[FileEntry], dataset: tuple[str, int] | None) -> str:
    h = hashlib.sha256()
    for f in sorted(files, key=lambda f: f.path):
        h.update(f"{f.path}\0{f.sha256}\0{f.size}\n".encode())
    if dataset is not None:
        h.update(f"dataset\0{dataset[0]}\0{dataset[1]}\n".encode())
    return "sha256:" + h.hexdigest()


def _collect(paths: Iterable[str | os.PathLike[str]]) -> list[tuple[str, Path]]:
    """(path inside the version, file) for files and the files under directories."""
    out: dict[str, Path] = {}

    def add(inside: str, f: Path) -> None:
        if inside in out and out[inside] != f:
            raise InvalidInput(
                f"two files would be {inside!r} in the version ({out[inside]} and {f}): "
                "register them from directories that keep their names apart"
            )
        out[inside] = f

    for p in paths:
        path = Path(p)
        if path.is_dir():
            for f in sorted(path.rglob("*")):
                if f.is_file():
                    add(f.relative_to(path).as_posix(), f)
        elif path.is_file():
            add(path.name, path)
        else:
            raise NotFound(f"{path} does not exist: nothing was registered")
    if not out:
        raise InvalidInput("no files to register (empty directories?)")
    return sorted(out.items())


class Registry:
    """A registry: metadata in ``db`` (a path for SQLite, or a ``postgresql://`` URL), blobs
    under ``blobs`` (a local directory or ``s3://`` URI). Defaults: under
    :func:`default_home`."""

    def __init__(
        self,
        db: str | None = None,
        blobs: str | None = None,
        *,
        config: StorageConfig | None = None,
        actor: str | None = None,
        keys: KeyProvider | None = None,
    ) -> None:
        home = default_home()
        self.db_location = db or os.environ.get("SHARDYARD_REGISTRY") or str(home / "registry.db")
        self.blob_location = (
            blobs or os.environ.get("SHARDYARD_REGISTRY_BLOBS") or str(home / "blobs")
        )
        self.engine: Engine = open_engine(self.db_location)
        self._reader = Reader(self.engine)
        self._storage = (config, keys)
        with self.engine.connect() as conn:
            self._location = location_of(conn, self.blob_location)
        self.blobs = BlobStore(
            self.blob_location, *_encrypted(self._location, self.blob_location, config, keys)
        )
        self.actor = actor or _whoami()
        self.id = self._identity()
        shown = self.engine.url.render_as_string(hide_password=True)
        self.blobs.claim_for(self.id, shown)

    def refresh_storage(self, conn: Connection) -> None:
        """Follow a change of the blob store's declared location (encryption turned on, a new
        key, SSE) made since this registry was opened, before storing anything: a long-running
        server or job must not keep writing the old way."""
        now = location_of(conn, self.blob_location)
        if now != self._location:
            config, keys = self._storage
            self.blobs = BlobStore(
                self.blob_location, *_encrypted(now, self.blob_location, config, keys)
            )
            self._location = now

    def _identity(self) -> str:
        """This registry's id (made on first open): its blob store records it."""
        import uuid

        with self._read() as conn:
            found = conn.execute(
                select(t.settings.c.value).where(t.settings.c.key == "registry_id")
            ).scalar()
        if found is not None:
            return str(found)

        def create(conn: Connection) -> str:
            again = conn.execute(
                select(t.settings.c.value).where(t.settings.c.key == "registry_id")
            ).scalar()
            if again is not None:
                return str(again)
            new = uuid.uuid4().hex
            conn.execute(insert(t.settings).values(key="registry_id", value=new))
            return new

        return str(self._retrying(create))

    # -- writing ---------------------------------------------------------------------------
    def register(
        self,
        name: str,
        paths: Iterable[str | os.PathLike[str]] = (),
        *,
        kind: str,
        tags: Mapping[str, str] | None = None,
        metrics: Mapping[str, float] | None = None,
        metadata: Mapping[str, Any] | None = None,
        parents: Iterable[str] = (),
        dataset: tuple[str, int] | None = None,
        staged: Iterable[Staged] = (),
    ) -> Version:
        """A new version of artifact ``name`` (``[ns/]name``) holding ``paths`` (files, or
        directories of files) and/or pointing at ``dataset`` (URI, version); ``parents`` are
        references it derives from (lineage). ``staged``: files a writer already hashed (and
        may hand over to be moved into the blob store), e.g. checkpoint shards."""
        ref = parse_ref(name)
        if ref.version is not None or ref.alias is not None:
            raise InvalidInput(f"register takes an artifact name, not a version: {name!r}")
        if kind not in KINDS:
            raise InvalidInput(f"unknown kind {kind!r}: one of {', '.join(KINDS)}")
        for key in tags or {}:
            check_name(key.replace("/", "_"), "tag key")
        meta = json.dumps(dict(metadata or {}), sort_keys=True)
        values = {}
        for key, value in (metrics or {}).items():
            check_name(key.replace("/", "_"), "metric name")
            amount = float(value)
            if not math.isfinite(amount):
                raise InvalidInput(f"metric {key}={value!r} is not a finite number")
            values[key] = amount
        if dataset is not None:
            dataset = (_canonical(dataset[0]), int(dataset[1]))
        sources = _collect(paths) if paths else []
        staged = list(staged)
        if not sources and not staged and dataset is None:
            raise InvalidInput(f"nothing to register for {name}: give files or a dataset")
        uploads = [Staged(inside, *sha256_file(path), source=path) for inside, path in sources]
        uploads += staged
        if len({u.path for u in uploads}) != len(uploads):
            raise InvalidInput(f"two files of {name} would have the same path in the version")
        entries = [FileEntry(u.path, u.sha256, u.size) for u in uploads]
        digest = _digest(entries, dataset)
        parent_refs = [parse_ref(p) for p in parents]
        where = [("blob store", self.blob_location)] if uploads else []
        if dataset is not None:
            where.append(("dataset", dataset[0]))
        with self._read() as conn:  # before any byte is stored where the namespace may not be
            # parents resolved now (a bad one is refused before any upload); their lineage
            # is walked only if some residency policy exists
            parent_ids = [self._version_row(conn, p)["id"] for p in parent_refs] if where else []
            check_residency(conn, ref.namespace, where, lambda: parent_ids)
            if uploads:
                self.refresh_storage(conn)
        # Every blob claimed against GC, stored and verified before any row (registry.gc).
        holder = gcp.new_holder()
        gcp.claim_and_store(self.engine, self.blobs, uploads, holder)
        for attempt in range(20):
            try:
                with self.engine.begin() as conn:
                    gcp.check_claims(conn, holder, [e.sha256 for e in entries])
                    parent_ids = [self._version_row(conn, p)["id"] for p in parent_refs]
                    artifact = self._artifact_for_write(conn, ref, kind)
                    number = (
                        conn.execute(
                            select(func.max(t.versions.c.number)).where(
                                t.versions.c.artifact_id == artifact
                            )
                        ).scalar()
                        or 0
                    ) + 1
                    now = time.time()
                    vid = _new_id(
                        conn,
                        insert(t.versions).values(
                            artifact_id=artifact,
                            number=number,
                            digest=digest,
                            created_at=now,
                            created_by=self.actor,
                            dataset_uri=dataset[0] if dataset else None,
                            dataset_version=dataset[1] if dataset else None,
                            meta=meta,
                        ),
                    )
                    if entries:
                        conn.execute(
                            insert(t.files),
                            [
                                {
                                    "version_id": vid,
                                    "path": e.path,
                                    "sha256": e.sha256,
                                    "size": e.size,
                                }
                                for e in entries
                            ],
                        )
                    if tags:
                        conn.execute(
                            insert(t.tags),
                            [
                                {"version_id": vid, "key": k, "value": str(v)}
                                for k, v in tags.items()
                            ],
                        )
                    if values:
                        conn.execute(
                            insert(t.metrics),
                            [{"version_id": vid, "key": k, "value": v} for k, v in values.items()],
                        )
                    if parent_ids:
                        conn.execute(
                            insert(t.edges),
                            [
                                {"parent_id": p, "child_id": vid, "relation": "derived"}
                                for p in dict.fromkeys(parent_ids)
                            ],
                        )
                    gcp.drop_claims(conn, holder)  # committed with the rows referencing them
                    audit.append(
                        conn,
                        self.actor,
                        "register",
                        str(ref.at(number)),
                        {
                            "kind": kind,
                            "digest": digest,
                            "files": len(entries),
                            "dataset": list(dataset) if dataset else None,
                            "parents": [str(p) for p in parent_refs],
                        },
                    )
                break
            except DBAPIError as err:
                if attempt == 19 or not _retryable(err):
                    gcp.release_claims(self.engine, holder)
                    raise
                time.sleep(0.005 * (attempt + 1))  # another writer took the number: again
            except gcp.ClaimsLost:  # slower than GC's grace: claim (and upload) again
                if attempt == 19:
                    gcp.release_claims(self.engine, holder)
                    raise
                gcp.claim_and_store(self.engine, self.blobs, uploads, holder)
            except BaseException:
                gcp.release_claims(self.engine, holder)
                raise
        return self.resolve(ref.at(number))

    def set_alias(self, ref: str, alias: str) -> Version:
        """Point ``alias`` of the artifact at the version ``ref`` names (history kept)."""
        check_alias(alias)
        target = parse_ref(ref)
        for attempt in range(20):
            try:
                with self.engine.begin() as conn:
                    row = self._version_row(conn, target)
                    self._move_alias(conn, row["artifact_id"], alias, row["id"])
                    self._audit_alias(conn, target, alias, row["number"], "alias")
                break
            except DBAPIError as err:  # another writer created the alias first: move it now
                if attempt == 19 or not _retryable(err):
                    raise
                time.sleep(0.005 * (attempt + 1))
        return self.resolve(target.at(row["number"]))

    def _move_alias(self, conn: Connection, artifact: int, alias: str, version: int) -> None:
        now = time.time()
        done = conn.execute(
            update(t.aliases)
            .where(and_(t.aliases.c.artifact_id == artifact, t.aliases.c.alias == alias))
            .values(version_id=version, updated_at=now)
        ).rowcount
        if not done:
            conn.execute(
                insert(t.aliases).values(
                    artifact_id=artifact, alias=alias, version_id=version, updated_at=now
                )
            )
        conn.execute(
            insert(t.alias_events).values(
                artifact_id=artifact, alias=alias, version_id=version, at=now, actor=self.actor
            )
        )

    def _audit_alias(
        self, conn: Connection, ref: Ref, alias: str, number: int, action: str
    ) -> None:
        target = Ref(ref.namespace, ref.name, alias=alias)
        audit.append(conn, self.actor, action, str(target), {"version": number})

    def _artifact_for_write(self, conn: Connection, ref: Ref, kind: str) -> int:
        check_namespace(ref.namespace)
        row = conn.execute(
            select(t.artifacts.c.id, t.artifacts.c.kind).where(
                and_(t.artifacts.c.namespace == ref.namespace, t.artifacts.c.name == ref.name)
            )
        ).first()
        if row is not None:
            if row.kind != kind:
                raise InvalidInput(
                    f"{ref.artifact} holds {row.kind} versions, not {kind}: use another name"
                )
            return int(row.id)
        return _new_id(
            conn,
            insert(t.artifacts).values(
                namespace=ref.namespace, name=ref.name, kind=kind, created_at=time.time()
            ),
        )

    # -- reading ---------------------------------------------------------------------------
    def _read(self) -> Connection:
        """A connection for reads: one consistent snapshot per transaction, without taking
        SQLite's write lock (WAL readers never wait for writers)."""
        opts: dict[str, Any] = {"shardyard_read": True}
        if self.engine.dialect.name == "postgresql":
            opts["isolation_level"] = "REPEATABLE READ"
        return self.engine.connect().execution_options(**opts)

    def _version_row(self, conn: Connection, ref: Ref) -> Any:
        art = self._artifact_id(conn, ref)
        v = t.versions.c
        if ref.alias is not None:
            row = (
                conn.execute(
                    select(t.versions)
                    .join(t.aliases, t.aliases.c.version_id == v.id)
                    .where(and_(t.aliases.c.artifact_id == art, t.aliases.c.alias == ref.alias))
                )
                .mappings()
                .first()
            )
            if row is None:
                raise NotFound(f"{ref.artifact} has no alias {ref.alias!r}")
            return row
        query = select(t.versions).where(v.artifact_id == art)
        if ref.version is not None:
            row = conn.execute(query.where(v.number == ref.version)).mappings().first()
            if row is None:
                raise NotFound(f"{ref.artifact} has no version {ref.version}")
            return row
        row = conn.execute(query.order_by(v.number.desc()).limit(1)).mappings().first()
        if row is None:
            raise NotFound(f"{ref.artifact} has no versions")
        return row

    def resolve(self, ref: str | Ref) -> Version:
        """The version ``ref`` names (``ns/name:7``, ``ns/name@alias``, ``ns/name``)."""
        parsed = parse_ref(ref) if isinstance(ref, str) else ref
        with self._reader.cursor() as cur:
            row = self._reader.find(cur, parsed)
            if row is not None:
                return self._reader.load(cur, [row])[0]
        with self._read() as conn:  # not there: the slow path names what is missing
            row = self._version_row(conn, parsed)
            return self._load(conn, [row])[0]

    def _load(self, conn: Connection, rows: Sequence[Any]) -> list[Version]:
        """Versions of ``versions`` rows read through SQLAlchemy, details on the same
        transaction's DBAPI cursor (:class:`registry.reads.Reader`)."""
        if not rows:
            return []
        arts = {
            a.id: a
            for a in conn.execute(
                select(t.artifacts).where(t.artifacts.c.id.in_({r["artifact_id"] for r in rows}))
            )
        }
        plain = []
        for r in rows:
            a = arts[r["artifact_id"]]
            plain.append(
                (
                    r["id"],
                    r["number"],
                    r["digest"],
                    r["created_at"],
                    r["created_by"],
                    r["dataset_uri"],
                    r["dataset_version"],
                    r["meta"],
                    r["revoked_at"],
                    a.namespace,
                    a.name,
                    a.kind,
                )
            )
        cur = conn.connection.cursor()
        try:
            return self._reader.load(cur, plain)
        finally:
            cur.close()

    def versions(self, name: str, limit: int | None = None) -> list[Version]:
        """Versions of artifact ``name``, newest first."""
        ref = parse_ref(name)
        with self._reader.cursor() as cur:
            rows = self._reader.newest(cur, ref, limit)
            if rows:
                return self._reader.load(cur, rows)
        with self._read() as conn:
            self._artifact_id(conn, ref)  # NotFound naming it when there is no such artifact
        return []

    def artifacts(self, namespace: str | None = None) -> list[dict[str, Any]]:
        """Artifacts (namespace, name, kind, versions, latest), optionally of one namespace."""
        a, v = t.artifacts.c, t.versions.c
        query = (
            select(a.namespace, a.name, a.kind, func.count(v.id), func.max(v.number))
            .select_from(t.artifacts.outerjoin(t.versions, v.artifact_id == a.id))
            .group_by(a.id, a.namespace, a.name, a.kind)
            .order_by(a.namespace, a.name)
        )
        if namespace is not None:
            query = query.where(a.namespace == check_namespace(namespace))
        with self._read() as conn:
            return [
                {
                    "artifact": f"{r[0]}/{r[1]}",
                    "namespace": r[0],
                    "name": r[1],
                    "kind": r[2],
                    "versions": r[3],
                    "latest": r[4],
                }
                for r in conn.execute(query)
            ]

    def alias_history(self, name: str, alias: str) -> list[dict[str, Any]]:
        """Every move of ``alias`` on artifact ``name``, oldest first."""
        ref = parse_ref(name)
        e, v = t.alias_events.c, t.versions.c
        with self._read() as conn:
            art = self._artifact_id(conn, ref)
            rows = conn.execute(
                select(e.at, e.actor, v.number)
                .select_from(t.alias_events.outerjoin(t.versions, v.id == e.version_id))
                .where(and_(e.artifact_id == art, e.alias == check_alias(alias)))
                .order_by(e.at, e.id)
            )
            return [{"at": r[0], "actor": r[1], "version": r[2]} for r in rows]

    def alias_at(self, name: str, alias: str, when: float) -> Version | None:
        """The version ``alias`` pointed at, at UNIX time ``when`` (None: not set then)."""
        number = alias_number_at(self.alias_history(name, alias), when)
        return None if number is None else self.resolve(parse_ref(name).at(number))

    def download(self, ref: str, dest: str | os.PathLike[str]) -> Path:
        """The files of version ``ref`` under directory ``dest``, each verified."""
        return self.fetch(ref, dest)[1]

    def fetch(self, ref: str, dest: str | os.PathLike[str]) -> tuple[Version, Path]:
        """:meth:`download`, also returning the version it resolved (an alias may move)."""
        version = self.resolve(ref)
        if version.revoked_at is not None:
            raise InvalidInput(f"{version.ref} is revoked: it is kept for audit, not for use")
        root = Path(dest)
        for f in version.files:
            target = (root / f.path).resolve()
            if root.resolve() not in target.parents:
                raise InvalidInput(f"{version.ref}: file path {f.path!r} escapes {root}")
            self.blobs.get_to_file(f.sha256, f.size, target)
        self.record("download", str(version.ref), {"files": len(version.files)})
        return version, root

    def acting_as(self, actor: str) -> Registry:
        """This registry (same engine and blob store) recording ``actor`` in the audit trail
        and alias history: the server's view for one request."""
        import copy

        view = copy.copy(self)
        view.actor = actor
        return view

    def record(self, action: str, target: str, detail: Mapping[str, Any] | None = None) -> None:
        """Add an audit record for something done outside a registry transaction (a
        download, a search, a served request)."""
        self._retrying(lambda conn: audit.append(conn, self.actor, action, target, detail))

    def find(
        self,
        *,
        dataset: tuple[str, int] | None = None,
        sha256: str | None = None,
        tags: Mapping[str, str] | None = None,
        name: str | None = None,
        kind: str | None = None,
        limit: int | None = None,
    ) -> list[Version]:
        """Versions matching every condition given, oldest first: pointing at ``dataset``
        (URI, version), holding a file with content ``sha256`` (how a pipeline finds the
        registered versions of its inputs), carrying every tag in ``tags``, of artifact
        ``name``, of ``kind``; at most ``limit`` (the newest ones)."""
        if dataset is None and sha256 is None and not tags and name is None:
            raise InvalidInput("find needs at least one of dataset=, sha256=, tags=, name=")
        if kind is not None and kind not in KINDS:
            raise InvalidInput(f"unknown kind {kind!r}: one of {', '.join(KINDS)}")
        artifact = parse_ref(name) if name is not None else None
        with self._reader.cursor() as cur:
            rows = self._reader.search(
                cur,
                artifact=artifact,
                kind=kind,
                dataset=(_canonical(dataset[0]), int(dataset[1])) if dataset else None,
                sha256=sha256,
                tags=[(k, str(v)) for k, v in (tags or {}).items()],
                limit=limit,
            )
            found = self._reader.load(cur, rows)
        if not found and artifact is not None:
            with self._read() as conn:
                self._artifact_id(conn, artifact)  # NotFound naming it when it does not exist
        return found

    # -- lineage, deployability, releases ---------------------------------------------------
    def link(self, parent: str, child: str, relation: str = "derived") -> None:
        """Record that version ``child`` was made from version ``parent``."""
        check_name(relation, "relation")
        self._retrying(lambda conn: self._link(conn, parent, child, relation))

    def _retrying(self, body: Any) -> Any:
        """``body(conn)`` in a write transaction, again on a retryable PostgreSQL error."""
        for attempt in range(20):
            try:
                with self.engine.begin() as conn:
                    return body(conn)
            except DBAPIError as err:
                if attempt == 19 or not _retryable(err):
                    raise
                time.sleep(0.005 * (attempt + 1))
        raise AssertionError("unreachable")

    def _link(self, conn: Connection, parent: str, child: str, relation: str) -> None:
        if self.engine.dialect.name == "postgresql":  # cycle check and insert as one step
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7319046117)")
        p = self._version_row(conn, parse_ref(parent))["id"]
        c = self._version_row(conn, parse_ref(child))["id"]
        if p == c:
            raise InvalidInput(f"{child} cannot derive from itself")
        below = walk(conn, c, "downstream").nodes
        if p in below:
            raise InvalidInput(f"{parent} derives from {child}: the edge would be a cycle")
        exists = conn.execute(
            select(t.edges.c.parent_id).where(
                and_(t.edges.c.parent_id == p, t.edges.c.child_id == c)
            )
        ).first()
        if exists is None:
            self._check_derived_residency(conn, p, c, list(below))
            conn.execute(insert(t.edges).values(parent_id=p, child_id=c, relation=relation))
            audit.append(conn, self.actor, "link", child, {"parent": parent, "relation": relation})

    def _check_derived_residency(
        self, conn: Connection, parent: int, child: int, family: list[int]
    ) -> None:
        """Refuse an edge that would put ``child`` or what derives from it (``family``, child
        included) outside the regions of ``parent``'s data or of what that derives from."""
        v = t.versions.c
        where: list[tuple[str, str]] = []
        if conn.execute(
            select(t.files.c.version_id).where(t.files.c.version_id.in_(family))
        ).first():
            where.append(("blob store", self.blob_location))
        for uri in conn.execute(
            select(v.dataset_uri).where(v.id.in_(family), v.dataset_uri.is_not(None)).distinct()
        ).scalars():
            where.append(("dataset", uri))
        namespace = conn.execute(
            select(t.artifacts.c.namespace)
            .select_from(t.versions.join(t.artifacts, t.artifacts.c.id == v.artifact_id))
            .where(v.id == child)
        ).scalar_one()
        check_residency(conn, namespace, where, lambda: [parent])

    def lineage(
        self, ref: str, direction: Direction = "upstream", depth: int | None = None
    ) -> Lineage:
        """What version ``ref`` was made from (``upstream``) or what was made from it
        (``downstream``), to ``depth`` levels (None: all)."""
        if direction not in ("upstream", "downstream"):
            raise InvalidInput(f"direction {direction!r}: upstream or downstream")
        with self._read() as conn:
            row = self._version_row(conn, parse_ref(ref))
            return walk(conn, row["id"], direction, depth)

    def deployable(self, name: str, policy: Policy | None = None) -> list[dict[str, Any]]:
        """Every version of artifact ``name`` (newest first; with an alias policy, the one it
        points at) with ``deployable`` and the reasons it is not (``why``), under ``policy``
        (default: not revoked, clean upstream). One read snapshot; the upstream of all the
        versions is walked at once."""
        policy = policy or Policy()
        ref = parse_ref(name)
        with self._read() as conn:
            art = self._artifact_id(conn, ref)
            query = select(t.versions).where(t.versions.c.artifact_id == art)
            if policy.alias is not None:
                check_alias(policy.alias)
                query = query.join(t.aliases, t.aliases.c.version_id == t.versions.c.id).where(
                    t.aliases.c.alias == policy.alias
                )
            rows = list(conn.execute(query.order_by(t.versions.c.number.desc())).mappings())
            versions = self._load(conn, rows)
            closure, nodes = ancestors(conn, [v.id for v in versions])
        out = []
        for version in versions:
            upstream = [nodes[i] for i in sorted(closure[version.id]) if i in nodes]
            why = policy.refusals(version, upstream)
            out.append({"version": version, "deployable": not why, "why": why})
        return out

    def _artifact_id(self, conn: Connection, ref: Ref) -> int:
        """The id of artifact ``ref`` names; NotFound naming it if there is none."""
        art = conn.execute(
            select(t.artifacts.c.id).where(
                and_(t.artifacts.c.namespace == ref.namespace, t.artifacts.c.name == ref.name)
            )
        ).scalar()
        if art is None:
            raise NotFound(f"no artifact {ref.artifact} in the registry")
        return int(art)

    def release(self, refs: Sequence[str], alias: str) -> list[Version]:
        """Point ``alias`` at every version in ``refs`` (one per artifact) in one transaction:
        a reader resolving the set after this sees all of the new versions, never a mix."""
        check_alias(alias)
        parsed = [parse_ref(r) for r in refs]
        if len({p.artifact for p in parsed}) != len(parsed):
            raise InvalidInput("a release holds one version per artifact")

        def move(conn: Connection) -> list[Any]:
            rows = [self._version_row(conn, p) for p in parsed]
            # one lock order for every writer: concurrent releases cannot deadlock
            for row in sorted(rows, key=lambda r: r["artifact_id"]):
                self._move_alias(conn, row["artifact_id"], alias, row["id"])
            for p, row in zip(parsed, rows, strict=True):
                self._audit_alias(conn, p, alias, row["number"], "release")
            return rows

        rows = self._retrying(move)
        return [self.resolve(p.at(r["number"])) for p, r in zip(parsed, rows, strict=True)]

    def resolve_many(self, refs: Sequence[str]) -> list[Version]:
        """Several references resolved in one read transaction (a consistent snapshot: with
        :meth:`release`, all of one release or all of the next)."""
        with self._read() as conn:  # one snapshot (PostgreSQL: repeatable read)
            rows = [self._version_row(conn, parse_ref(r)) for r in refs]
            return self._load(conn, rows)

    def revoke(self, ref: str, reason: str = "") -> Version:
        """Mark version ``ref`` revoked: never deployable, not downloadable, kept for audit."""
        parsed = parse_ref(ref)
        with self.engine.begin() as conn:
            row = self._version_row(conn, parsed)
            conn.execute(
                update(t.versions)
                .where(t.versions.c.id == row["id"])
                .values(revoked_at=time.time(), revoked_reason=reason)
            )
            audit.append(
                conn, self.actor, "revoke", str(parsed.at(row["number"])), {"reason": reason}
            )
        return self.resolve(parsed.at(row["number"]))

    #: A version tagged ``restricted=true`` passes its access rule to what derives from it.
    RESTRICTED = ("restricted", "true")

    def any_restricted(self) -> bool:
        """Whether any version is tagged restricted (else no lineage needs walking)."""
        key, value = self.RESTRICTED
        with self._reader.cursor() as cur:
            cur.execute(
                self._reader._sql("SELECT 1 FROM tags WHERE key = ? AND value = ? LIMIT 1"),
                (key, value),
            )
            return cur.fetchone() is not None

    def restrictions(self, ref: str) -> list[str]:
        """The restricted ancestors of version ``ref`` (tagged ``restricted=true``, any depth)
        whose access rule it inherits: only a principal who may read each of them may read
        it, unless an admin declassified it from that ancestor (:meth:`declassify`)."""
        key, value = self.RESTRICTED
        if not self.any_restricted():  # the common case: one indexed probe
            parse_ref(ref)
            return []
        with self._read() as conn:
            row = self._version_row(conn, parse_ref(ref))
            closure, nodes = ancestors(conn, [row["id"]])
            released = set(
                conn.execute(
                    select(t.declassifications.c.ancestor_id).where(
                        t.declassifications.c.child_id == row["id"]
                    )
                ).scalars()
            )
        return sorted(
            nodes[i]["ref"]
            for i in closure[row["id"]]
            if i in nodes and nodes[i]["tags"].get(key) == value and i not in released
        )

    def declassify(self, ref: str, ancestor: str, reason: str) -> None:
        """Record that version ``ref`` no longer inherits restricted ``ancestor``'s access rule
        (an admin's decision, audited with its reason)."""
        if not reason.strip():
            raise InvalidInput("a declassification needs a reason")

        def put(conn: Connection) -> None:
            child = self._version_row(conn, parse_ref(ref))
            anc = self._version_row(conn, parse_ref(ancestor))
            closure, _ = ancestors(conn, [child["id"]])
            if anc["id"] not in closure[child["id"]]:
                raise InvalidInput(f"{ancestor} is not upstream of {ref}")
            conn.execute(
                delete(t.declassifications).where(
                    and_(
                        t.declassifications.c.child_id == child["id"],
                        t.declassifications.c.ancestor_id == anc["id"],
                    )
                )
            )
            conn.execute(
                insert(t.declassifications).values(
                    child_id=child["id"],
                    ancestor_id=anc["id"],
                    at=time.time(),
                    by=self.actor,
                    reason=reason,
                )
            )
            audit.append(
                conn, self.actor, "declassify", ref, {"ancestor": ancestor, "reason": reason}
            )

        self._retrying(put)

    def hold(self, ref: str, reason: str, *, whole_artifact: bool = False) -> int:
        """Put version ``ref`` (or, with ``whole_artifact``, every version of its artifact) under
        legal hold: :meth:`delete` refuses it until the hold is released. Returns the hold id."""
        if not reason.strip():
            raise InvalidInput("a legal hold needs a reason (a case or ticket reference)")
        parsed = parse_ref(ref)

        def put(conn: Connection) -> int:
            row = self._version_row(conn, parsed)
            _lock_version(conn, row["id"])  # against a concurrent delete
            gone = conn.execute(
                select(t.deletions.c.version_id).where(t.deletions.c.version_id == row["id"])
            ).first()
            if gone is not None and not whole_artifact:
                raise InvalidInput(f"{parsed.at(row['number'])} was deleted: nothing to hold")
            hid = _new_id(
                conn,
                insert(t.holds).values(
                    artifact_id=row["artifact_id"],
                    version_id=None if whole_artifact else row["id"],
                    reason=reason,
                    created_at=time.time(),
                    created_by=self.actor,
                ),
            )
            target = parsed.artifact if whole_artifact else str(parsed.at(row["number"]))
            audit.append(conn, self.actor, "hold", target, {"hold": hid, "reason": reason})
            return hid

        return int(self._retrying(put))

    def release_hold(self, hold_id: int, name: str | None = None) -> None:
        """End legal hold ``hold_id`` (kept, with when and by whom, in the audit trail);
        ``name``: only if it is a hold on that artifact (the server's role check needs it)."""

        def end(conn: Connection) -> None:
            h = t.holds.c
            which = and_(h.id == hold_id, h.released_at.is_(None))
            if name is not None:
                which = and_(which, h.artifact_id == self._artifact_id(conn, parse_ref(name)))
            done = conn.execute(update(t.holds).where(which).values(released_at=time.time()))
            if not done.rowcount:
                raise NotFound(f"no active legal hold {hold_id}" + (f" on {name}" if name else ""))
            audit.append(conn, self.actor, "hold.release", f"hold:{hold_id}", {})

        self._retrying(end)

    def holds(self, name: str) -> list[dict[str, Any]]:
        """Active legal holds on artifact ``name`` and its versions."""
        h = t.holds.c
        with self._read() as conn:
            art = self._artifact_id(conn, parse_ref(name))
            rows = conn.execute(
                select(t.holds, t.versions.c.number)
                .outerjoin(t.versions, t.versions.c.id == h.version_id)
                .where(and_(h.artifact_id == art, h.released_at.is_(None)))
                .order_by(h.id)
            ).mappings()
            return [
                {
                    "id": r["id"],
                    "version": r["number"],
                    "reason": r["reason"],
                    "created_at": r["created_at"],
                    "created_by": r["created_by"],
                }
                for r in rows
            ]

    def delete(self, ref: str, reason: str) -> Version:
        """Delete version ``ref``'s files (its blobs become garbage for :meth:`gc`) and revoke
        it; its row, lineage and history stay for audit. Refused while a legal hold covers it."""
        from datastore.errors import PreconditionFailed

        if not reason.strip():
            raise InvalidInput("a deletion needs a reason")
        parsed = parse_ref(ref)

        def drop(conn: Connection) -> Any:
            row = self._version_row(conn, parsed)
            _lock_version(conn, row["id"])  # a hold committed meanwhile is seen below
            h = t.holds.c
            held = conn.execute(
                select(h.id, h.reason).where(
                    and_(
                        h.artifact_id == row["artifact_id"],
                        h.released_at.is_(None),
                        (h.version_id.is_(None)) | (h.version_id == row["id"]),
                    )
                )
            ).first()
            if held is not None:
                raise PreconditionFailed(
                    f"{parsed.at(row['number'])} is under legal hold {held[0]} ({held[1]}): "
                    "release the hold first"
                )
            conn.execute(delete(t.files).where(t.files.c.version_id == row["id"]))
            now = time.time()
            if row["revoked_at"] is None:
                conn.execute(
                    update(t.versions)
                    .where(t.versions.c.id == row["id"])
                    .values(revoked_at=now, revoked_reason=f"deleted: {reason}")
                )
            exists = conn.execute(
                select(t.deletions.c.version_id).where(t.deletions.c.version_id == row["id"])
            ).first()
            if exists is None:
                conn.execute(
                    insert(t.deletions).values(
                        version_id=row["id"], deleted_at=now, deleted_by=self.actor, reason=reason
                    )
                )
            audit.append(
                conn, self.actor, "delete", str(parsed.at(row["number"])), {"reason": reason}
            )
            return row

        row = self._retrying(drop)
        return self.resolve(parsed.at(row["number"]))

    def gc(self, grace: float = gcp.DEFAULT_GRACE, *, dry_run: bool = False) -> gcp.GcReport:
        """Delete blobs no version references that are older than ``grace`` seconds, safely
        against concurrent registrations and its own crashes (see :mod:`registry.gc`)."""
        return gcp.gc(self, grace, dry_run=dry_run)

    def close(self) -> None:
        self.engine.dispose()


#: PostgreSQL errors a retry can cure: unique violation (another writer took the number or
#: created the row first), deadlock, serialization failure. On SQLite writers are serialized
#: by BEGIN IMMEDIATE, so an integrity error there is the data's and is never retried.
_RETRYABLE = {"23505", "40P01", "40001"}


def alias_number_at(history: Sequence[Mapping[str, Any]], when: float) -> int | None:
    """The version number an alias pointed at, at UNIX time ``when``, from its
    :meth:`Registry.alias_history` (None: not set then)."""
    moves = [m for m in history if m["at"] <= when]
    return None if not moves or moves[-1]["version"] is None else int(moves[-1]["version"])


def _lock_version(conn: Connection, version_id: int) -> None:
    """Hold version ``version_id``'s row until the transaction ends (PostgreSQL: FOR UPDATE,
    so holds and deletions of one version serialise; SQLite: the write lock already does)."""
    if conn.dialect.name == "postgresql":
        conn.execute(select(t.versions.c.id).where(t.versions.c.id == version_id).with_for_update())


def _encrypted(
    loc: Location | None, uri: str, config: StorageConfig | None, keys: KeyProvider | None
) -> tuple[StorageConfig | None, Sealer | None]:
    """The blob store's storage config and sealer, as its declared location ``loc`` asks:
    ``sse-s3`` / ``sse-kms`` headers on every write, or ``aes-gcm`` client-side envelope
    encryption with the location's key from ``keys`` (the local key file by default; read on
    first use)."""
    if loc is None or loc.encryption == "none":
        return config, None
    if loc.encryption == "aes-gcm":
        assert loc.kms_key_id is not None
        return config, Sealer(keys or LocalKeyFile(), loc.kms_key_id)
    if not uri.startswith("s3://"):
        return config, None  # server-side encryption is the bucket's business
    base = config or StorageConfig.resolve()
    if loc.encryption == "sse-s3":
        return base.replace(sse="AES256", sse_kms_key_id=None), None
    return base.replace(sse="aws:kms", sse_kms_key_id=loc.kms_key_id), None


def _canonical(uri: str) -> str:
    """A dataset URI as the datastore spells it (``out/x`` -> ``file:///abs/out/x``), so that
    pointers recorded by different jobs compare equal."""
    from datastore.uri import parse_uri

    return parse_uri(uri).uri


def _retryable(err: DBAPIError) -> bool:
    return getattr(err.orig, "sqlstate", None) in _RETRYABLE


def _new_id(conn: Connection, statement: Any) -> int:
    """Execute an INSERT; the new row's primary key."""
    key = conn.execute(statement).inserted_primary_key
    assert key is not None
    return int(key[0])


def _whoami() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user database in some containers
        return str(os.getuid())
