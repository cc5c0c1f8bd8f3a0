"""Blob garbage collection: ``shardyard registry gc`` removes blobs no version references once
they are older than a grace period, and never a referenced one, even when it is killed halfway
or runs while versions are being registered.

Why it needs a protocol: a registration uploads (or finds and reuses) its blobs *before* the
transaction that writes the ``files`` rows referencing them, so for a while a blob that is
about to be referenced looks exactly like garbage; and the blob store cannot take part in a
database transaction. Two tables and one lock per blob close the gap:

* **Lock.** Every transaction below first takes the blob's lock: on PostgreSQL a transaction
  advisory lock per sha256 (64-bit key from the hash, taken in sorted order so that two
  registrations cannot deadlock); on SQLite every transaction already starts with ``BEGIN
  IMMEDIATE``, which serialises all writers.
* **Claim** (registration, before uploading or reusing a blob): under the lock, if the blob
  has a ``gc_marks`` row, GC is deleting it: wait and retry (up to :data:`CLAIM_WAIT`
  seconds). A mark older than :data:`MARK_STALE` is from a GC that died: drop it and go on
  (if the object is gone the upload puts it back). Otherwise insert a ``blob_claims`` row
  (holder: a random token of this registration). Then upload or reuse the blobs as before.
* **Commit** (the registration's version transaction): under the locks of all its blobs,
  check that every claim of the holder is still there, write the rows and delete the claims,
  in one commit. A claim GC took away (it had outlived the grace period: a registration
  slower than the grace, or a clock behind by more) makes the registration claim and upload
  again (:class:`ClaimsLost`) instead of referencing a blob that may be gone. On failure the
  claims are deleted too; a crashed registration's claims expire after the grace period.
* **Mark** (GC, per candidate: a listed blob older than the grace period that no ``files``
  row references): under the lock, re-check that no ``files`` row references it and no claim
  younger than the grace period exists; delete the expired claims; insert the ``gc_marks``
  row; commit. From here on no registration can start using the blob.
* **Delete** (GC): under the lock again, check that the mark is still the one it wrote (a
  registration may have dropped it as stale, or another GC taken it over: then leave the
  blob alone) and younger than :data:`MARK_STALE` / 2; delete the object; delete the mark;
  commit. The lock is held across the object delete, so no registration can drop the mark
  and reuse the blob between the check and the delete.

Crashes: a GC killed after marking (before or after the object delete) leaves marks;
registrations wait for them (or, after :data:`MARK_STALE`, drop them: by then any delete
request the dead GC had in flight has long landed), and the next GC run finishes them,
re-checked like new candidates (a mark of a blob that is gone or no longer garbage is just
removed). An object is only deleted under its lock, after a committed mark and a re-check
that found no reference and no live claim; a registration only references blobs it still
claims when it commits. So a referenced blob is never deleted, whatever the timing; clock
skew only costs re-uploads.

What remains: on PostgreSQL the lock lives in GC's database session. If the server ends that
session (network cut, ``pg_terminate_backend``) while GC is inside the delete step and GC
sends the object delete more than :data:`MARK_STALE` later (it re-checks the mark's age just
before, so the delete call itself must stall over half that), a registration may meanwhile have
dropped the mark as stale and reused the blob. SQLite's lock is the process's own.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, insert, select, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from datastore.errors import InvalidInput, ShardyardError
from registry import audit
from registry import schema as t
from registry.blobs import BlobStore, Staged

if TYPE_CHECKING:
    from registry.registry import Registry

__all__ = [
    "CLAIM_WAIT",
    "DEFAULT_GRACE",
    "MARK_STALE",
    "BlobsBusy",
    "ClaimsLost",
    "GcReport",
    "check_claims",
    "claim_and_store",
    "claim_blobs",
    "drop_claims",
    "gc",
    "lock_blobs",
    "new_holder",
    "release_claims",
]

log = logging.getLogger("shardyard.registry.gc")

#: Default grace period (seconds): younger blobs and claims are never collected.
DEFAULT_GRACE = 86400.0
#: A GC mark older than this (seconds) is from a GC that died; registrations drop it.
MARK_STALE = 600.0
#: How long (seconds) a registration waits for GC to finish with a blob it needs.
CLAIM_WAIT = 60.0

_SHA = re.compile(r"[0-9a-f]{64}")
_CHUNK = 500  # values per IN (...) list


class BlobsBusy(ShardyardError):
    """A blob a registration needs is being deleted by GC, for longer than it waits."""


class ClaimsLost(ShardyardError):
    """A registration's blob claims were taken away by GC (they outlived the grace period)."""


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


def _lock_key(sha256: str) -> int:
    return int.from_bytes(bytes.fromhex(sha256[:16]), "big", signed=True)


def lock_blobs(conn: Connection, shas: Iterable[str]) -> None:
    """Take the GC lock of every blob in ``shas`` until ``conn``'s transaction ends: on
    PostgreSQL transaction advisory locks in sorted order; on SQLite nothing to do (the
    transaction began with ``BEGIN IMMEDIATE`` and so holds the database's write lock)."""
    if conn.dialect.name != "postgresql":
        return
    keys = sorted({_lock_key(s) for s in shas})
    if keys:
        conn.execute(
            text(
                "SELECT count(pg_advisory_xact_lock(k)) FROM "
                "(SELECT unnest(CAST(:keys AS BIGINT[])) AS k ORDER BY k) AS ordered"
            ),
            {"keys": keys},
        )


def new_holder() -> str:
    """A random claim holder token for one registration."""
    return uuid.uuid4().hex


def claim_blobs(
    engine: Engine, shas: Iterable[str], holder: str, *, wait: float = CLAIM_WAIT
) -> None:
    """Claim ``shas`` for ``holder`` before uploading or reusing them (waits while GC is
    deleting one of them; raises :class:`BlobsBusy` after ``wait`` seconds)."""
    wanted = sorted(set(shas))
    if not wanted:
        return
    deadline = time.monotonic() + wait
    pause = 0.05
    while True:
        with engine.begin() as conn:
            lock_blobs(conn, wanted)
            now = time.time()
            marks: dict[str, float] = {}
            for part in _chunks(wanted):
                marks.update(
                    conn.execute(
                        select(t.gc_marks.c.sha256, t.gc_marks.c.marked_at).where(
                            t.gc_marks.c.sha256.in_(part)
                        )
                    ).all()
                )
            busy = {s: at for s, at in marks.items() if now - at < MARK_STALE}
            if not busy:
                stale = sorted(marks)  # left by a GC that died: the upload puts back what it took
                for part in _chunks(stale):
                    conn.execute(delete(t.gc_marks).where(t.gc_marks.c.sha256.in_(part)))
                if stale:
                    log.warning("dropped %d stale GC mark(s) (a GC died?)", len(stale))
                conn.execute(
                    insert(t.blob_claims),
                    [{"sha256": s, "claimed_at": now, "holder": holder} for s in wanted],
                )
                return
        if time.monotonic() >= deadline:
            sha, at = min(busy.items(), key=lambda item: item[1])
            raise BlobsBusy(
                f"{len(busy)} blob(s) of this version (e.g. sha256 {sha}, marked "
                f"{now - at:.0f} s ago) are being deleted by `shardyard registry gc`; nothing "
                "was registered: register again once it is done"
            )
        time.sleep(pause)
        pause = min(pause * 2, 1.0)


def claim_and_store(engine: Engine, blobs: BlobStore, files: Sequence[Staged], holder: str) -> None:
    """A registration's blob part: claim the blobs of ``files`` for ``holder``, then upload,
    publish or reuse each one and verify it landed; on failure the claims are released
    before the error propagates."""
    try:
        claim_blobs(engine, [f.sha256 for f in files], holder)
        for f in files:
            blobs.put_staged(f)
            if not blobs.present(f.sha256, f.size):
                raise InvalidInput(f"{f.path}: its blob did not land in {blobs.uri}")
    except BaseException:
        release_claims(engine, holder)
        raise


def check_claims(conn: Connection, holder: str, shas: Iterable[str]) -> None:
    """In the registration's version transaction: lock ``shas`` and check that ``holder``
    still claims every one; raises :class:`ClaimsLost` (claim and upload again) if not."""
    wanted = set(shas)
    if not wanted:
        return
    lock_blobs(conn, wanted)
    held = set(
        conn.execute(
            select(t.blob_claims.c.sha256).where(t.blob_claims.c.holder == holder)
        ).scalars()
    )
    missing = wanted - held
    if missing:
        raise ClaimsLost(
            f"{len(missing)} blob claim(s) of this registration expired and were collected "
            "(the registration took longer than the GC grace period)"
        )


def drop_claims(conn: Connection, holder: str) -> None:
    """Delete ``holder``'s claims inside the version transaction (they commit with the rows
    that reference the blobs)."""
    conn.execute(delete(t.blob_claims).where(t.blob_claims.c.holder == holder))


def release_claims(engine: Engine, holder: str) -> None:
    """Delete ``holder``'s claims (best effort: left over, they expire after the grace)."""
    try:
        with engine.begin() as conn:
            conn.execute(delete(t.blob_claims).where(t.blob_claims.c.holder == holder))
    except SQLAlchemyError as err:
        log.warning("could not release blob claims %s (they expire): %s", holder, err)


@dataclass
class GcReport:
    """What a GC run found and did (with ``dry_run``, ``deleted`` is what it would delete)."""

    grace: float
    dry_run: bool = False
    scanned: int = 0
    deleted: int = 0
    deleted_bytes: int = 0
    kept_referenced: int = 0
    kept_young: int = 0
    kept_claimed: int = 0
    skipped: int = 0  # its mark was dropped or taken over meanwhile: left to the next run
    resumed_marks: int = 0  # marks a killed GC had left, finished by this run
    staging_removed: int = 0  # files of writers that died before publishing them

    def to_dict(self) -> dict[str, Any]:
        """Plain data (``--json``)."""
        return asdict(self)


def _sha_of(key: str, blobs_key: Any) -> str | None:
    sha = key.rsplit("/", 1)[-1]
    if _SHA.fullmatch(sha) and blobs_key(sha) == key:
        return sha
    return None  # not a blob key: never touched


def _clear_mark(engine: Engine, sha: str, marked_at: float) -> None:
    with engine.begin() as conn:
        lock_blobs(conn, [sha])
        conn.execute(
            delete(t.gc_marks).where(
                t.gc_marks.c.sha256 == sha, t.gc_marks.c.marked_at == marked_at
            )
        )


def _mark(engine: Engine, sha: str, grace: float) -> str | float:
    """Mark ``sha`` for deletion if it is still garbage: its mark time, or why it is kept."""
    with engine.begin() as conn:
        lock_blobs(conn, [sha])
        now = time.time()
        referenced = conn.execute(
            select(t.files.c.sha256).where(t.files.c.sha256 == sha).limit(1)
        ).first()
        claimed = conn.execute(
            select(func.count())
            .select_from(t.blob_claims)
            .where(t.blob_claims.c.sha256 == sha, t.blob_claims.c.claimed_at > now - grace)
        ).scalar()
        conn.execute(delete(t.gc_marks).where(t.gc_marks.c.sha256 == sha))
        if referenced is not None:
            return "referenced"
        if claimed:
            return "claimed"
        # Expired claims go: a registration still holding one must claim again (ClaimsLost).
        conn.execute(delete(t.blob_claims).where(t.blob_claims.c.sha256 == sha))
        conn.execute(insert(t.gc_marks).values(sha256=sha, marked_at=now))
        return now


def _delete(registry: Registry, sha: str, marked_at: float) -> bool:
    """Delete the marked blob if the mark is still ours and young enough."""
    with registry.engine.begin() as conn:
        lock_blobs(conn, [sha])
        current = conn.execute(
            select(t.gc_marks.c.marked_at).where(t.gc_marks.c.sha256 == sha)
        ).scalar()
        if current != marked_at or time.time() - marked_at > MARK_STALE / 2:
            return False  # dropped as stale, taken over, or we were too slow: next run
        registry.blobs.delete(sha)
        conn.execute(delete(t.gc_marks).where(t.gc_marks.c.sha256 == sha))
        audit.append(conn, registry.actor, "gc.delete", f"blob:{sha}", {})
    return True


def gc(registry: Registry, grace: float = DEFAULT_GRACE, *, dry_run: bool = False) -> GcReport:
    """Delete the blobs of ``registry`` that no version references and that are older than
    ``grace`` seconds (their last write), finishing what a killed GC left marked.
    ``dry_run``: only report."""
    if grace < 0:
        raise InvalidInput(f"grace must be >= 0 seconds, not {grace}")
    engine = registry.engine
    report = GcReport(grace=grace, dry_run=dry_run)
    start = time.time()
    with engine.connect() as conn:
        leftover = dict(conn.execute(select(t.gc_marks.c.sha256, t.gc_marks.c.marked_at)).all())
        referenced = set(conn.execute(select(t.files.c.sha256).distinct()).scalars())
        claimed = set(
            conn.execute(
                select(t.blob_claims.c.sha256)
                .where(t.blob_claims.c.claimed_at > start - grace)
                .distinct()
            ).scalars()
        )
    report.resumed_marks = len(leftover)
    for info in registry.blobs.list():
        sha = _sha_of(info.key, registry.blobs.key)
        if sha is None:
            continue
        report.scanned += 1
        old_mark = leftover.pop(sha, None)
        verdict: str | float
        if sha in referenced:
            verdict = "referenced"
        elif info.mtime is None or start - info.mtime < grace:
            verdict = "young"
        elif sha in claimed:
            verdict = "claimed"
        elif dry_run:
            verdict = "garbage"
        else:
            verdict = _mark(engine, sha, grace)
            if isinstance(verdict, float):
                verdict = "deleted" if _delete(registry, sha, verdict) else "skipped"
        if verdict in ("garbage", "deleted"):
            report.deleted += 1
            report.deleted_bytes += info.size
        elif verdict == "referenced":
            report.kept_referenced += 1
        elif verdict == "young":
            report.kept_young += 1
        elif verdict == "claimed":
            report.kept_claimed += 1
        else:
            report.skipped += 1
        if old_mark is not None and not dry_run and verdict in ("referenced", "young", "claimed"):
            _clear_mark(engine, sha, old_mark)  # kept: stop it blocking registrations
    if not dry_run:
        for sha, marked_at in leftover.items():  # the object is gone already
            _clear_mark(engine, sha, marked_at)
        with engine.begin() as conn:  # claims of crashed registrations
            conn.execute(delete(t.blob_claims).where(t.blob_claims.c.claimed_at <= start - grace))
        report.staging_removed = registry.blobs.sweep_staging(grace)
    return report
