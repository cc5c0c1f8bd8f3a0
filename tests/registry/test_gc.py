"""Blob GC on both SQL backends (an SQLite file, a real PostgreSQL server) and a local blob
store: only unreferenced blobs older than the grace go; claims of registrations in progress
(or crashed) protect blobs until they expire; a GC killed with SIGKILL halfway is finished by
the next run; GC racing registrations in several processes never deletes a blob a version
references."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, insert, select, update

from registry import Registry
from registry import gc as gcp
from registry import schema as t
from tests.registry.conftest import write_files as _files

DAY = 86400.0


def _blob_path(reg: Registry, sha: str) -> Path:
    return Path(reg.blob_location) / reg.blobs.key(sha)


def _backdate(reg: Registry, seconds: float, only: list[str] | None = None) -> None:
    """Make blobs look ``seconds`` old (all, or the sha256s in ``only``)."""
    then = time.time() - seconds
    paths = (
        [_blob_path(reg, s) for s in only]
        if only is not None
        else [p for p in Path(reg.blob_location).rglob("*") if p.is_file()]
    )
    for p in paths:
        try:
            os.utime(p, (then, then))
        except FileNotFoundError:
            pass  # GC deleted it meanwhile


def _orphan(reg: Registry, content: str, age: float = 0.0) -> str:
    """A blob in the store that no version references (a crashed registration's upload)."""
    data = content.encode()
    sha = hashlib.sha256(data).hexdigest()
    path = _blob_path(reg, sha)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{sha}.orphan-tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    if age:
        _backdate(reg, age, [sha])
    return sha


def _count(reg: Registry, table: Any) -> int:
    with reg.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar() or 0)


def _download_all(reg: Registry, dest: Path) -> int:
    """Download (and so verify) every version of every artifact that is not revoked; how
    many."""
    n = 0
    for art in reg.artifacts():
        for v in reg.versions(art["artifact"]):
            if v.revoked_at is not None:
                continue
            out = reg.download(str(v.ref), dest / f"{v.ref.name}-{v.number}")
            assert {f.path for f in v.files} == {
                p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()
            }
            n += 1
    return n


def test_gc_deletes_old_unreferenced_blobs_and_keeps_referenced_and_young(
    reg: Registry, tmp_path: Path
) -> None:
    v = reg.register("team/m", [_files(tmp_path / "m", a="A" * 100, b="B" * 50)], kind="model")
    reg.revoke("team/m:1", "revoked versions keep their blobs (audit)")
    reg.register("team/m", [_files(tmp_path / "m2", a="A" * 100)], kind="model")
    _backdate(reg, 2 * DAY)
    old = _orphan(reg, "old garbage", age=2 * DAY)
    young = _orphan(reg, "young garbage")

    dry = reg.gc(dry_run=True)
    assert (dry.scanned, dry.deleted, dry.deleted_bytes) == (4, 1, len("old garbage"))
    assert _blob_path(reg, old).exists(), "a dry run deletes nothing"

    report = reg.gc()
    assert report.to_dict() | {"grace": 0} == {
        "grace": 0,
        "dry_run": False,
        "scanned": 4,
        "deleted": 1,
        "deleted_bytes": len("old garbage"),
        "kept_referenced": 2,
        "kept_young": 1,
        "kept_claimed": 0,
        "skipped": 0,
        "resumed_marks": 0,
        "staging_removed": 0,
    }
    assert not _blob_path(reg, old).exists()
    assert _blob_path(reg, young).exists()
    assert all(_blob_path(reg, f.sha256).exists() for f in v.files)
    reg.download("team/m:2", tmp_path / "out")
    assert reg.gc().deleted == 0, "nothing left to do"

    # the CLI, in a fresh process
    out = subprocess.run(
        [
            *(sys.executable, "-m", "shardyard", "registry", "gc", "--grace", "0", "--json"),
            *("--registry", reg.db_location, "--blobs", reg.blob_location),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout)["deleted"] == 1, "grace 0: the young orphan goes too"
    assert not _blob_path(reg, young).exists()
    assert _download_all(reg, tmp_path / "all") == 1, "the revoked version is not downloadable"


def test_a_crashed_registration_is_collected_only_after_the_grace(
    reg: Registry, tmp_path: Path
) -> None:
    # A registration that died after claiming an old blob it meant to reuse, and after
    # uploading a new one: both blobs and the claims stay until the grace has passed.
    reused = _orphan(reg, "reused shard", age=2 * DAY)
    fresh = _orphan(reg, "fresh shard")
    gcp.claim_blobs(reg.engine, [reused, fresh], "crashed-registration")
    report = reg.gc(grace=3600)
    assert (report.deleted, report.kept_claimed, report.kept_young) == (0, 1, 1)
    assert _blob_path(reg, reused).exists() and _blob_path(reg, fresh).exists()

    # an hour later: the claims expired, the fresh blob is old too
    with reg.engine.begin() as conn:
        conn.execute(update(t.blob_claims).values(claimed_at=time.time() - 2 * 3600))
    _backdate(reg, 2 * 3600, [fresh])
    report = reg.gc(grace=3600)
    assert (report.deleted, report.kept_claimed) == (2, 0)
    assert not _blob_path(reg, reused).exists() and not _blob_path(reg, fresh).exists()
    assert _count(reg, t.blob_claims) == 0, "expired claims are swept"

    # a registration finishes cleanly: no claims left behind, nothing collectable
    reg.register("x", [_files(tmp_path / "x", w="reused shard")], kind="model")
    assert _count(reg, t.blob_claims) == 0
    _backdate(reg, 2 * DAY)
    assert reg.gc().deleted == 0


def test_a_registration_slower_than_the_grace_claims_and_uploads_again(
    reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GC with grace 0 runs while the registration uploads: it takes the registration's claims
    and deletes its (reused and uploaded) blobs; the version transaction notices and the
    registration claims and uploads again instead of referencing deleted blobs."""
    reused = _orphan(reg, "old shard", age=2 * DAY)
    last = hashlib.sha256(b"new").hexdigest()
    real_present = reg.blobs.present
    collected: list[int] = []

    def present_then_gc(sha256: str, size: int) -> bool:
        found = real_present(sha256, size)
        if found and sha256 == last and not collected:  # the last blob is stored, verified
            collected.append(gcp.gc(reg, grace=0).deleted)
        return found

    monkeypatch.setattr(reg.blobs, "present", present_then_gc)
    v = reg.register("slow", [_files(tmp_path / "s", a="old shard", z="new")], kind="model")
    assert collected == [2], "GC took both blobs"
    assert {f.sha256 for f in v.files} >= {reused}
    reg.download("slow:1", tmp_path / "out")
    assert (tmp_path / "out" / "a").read_text() == "old shard"
    assert _count(reg, t.blob_claims) == 0


def test_gc_marks_hold_registrations_and_stale_marks_are_dropped(reg: Registry) -> None:
    busy = _orphan(reg, "being deleted", age=2 * DAY)
    dead = _orphan(reg, "left by a dead gc", age=2 * DAY)
    with reg.engine.begin() as conn:
        conn.execute(
            insert(t.gc_marks),
            [
                {"sha256": busy, "marked_at": time.time()},
                {"sha256": dead, "marked_at": time.time() - gcp.MARK_STALE - 1},
            ],
        )
    with pytest.raises(gcp.BlobsBusy, match="being deleted by `shardyard registry gc`"):
        gcp.claim_blobs(reg.engine, [busy, dead], "r1", wait=0.3)
    assert _count(reg, t.blob_claims) == 0, "a refused claim claims nothing"
    gcp.claim_blobs(reg.engine, [dead], "r2", wait=0)
    with reg.engine.connect() as conn:
        marks = set(conn.execute(select(t.gc_marks.c.sha256)).scalars())
    assert marks == {busy}, "the stale mark was dropped, the live one kept"


def test_the_blob_lock_serialises_claims_with_gc(reg: Registry) -> None:
    """While a transaction holds a blob's lock (as GC does from its re-check to its commit), a
    claim on that blob waits; on PostgreSQL a claim on another blob does not."""
    held, other = _orphan(reg, "held"), _orphan(reg, "other")
    done: list[str] = []

    def claim() -> None:
        gcp.claim_blobs(reg.engine, [held], "waiting")
        done.append("held")

    claimer = threading.Thread(target=claim)
    with reg.engine.begin() as conn:
        gcp.lock_blobs(conn, [held])
        claimer.start()
        if reg.engine.dialect.name == "postgresql":
            gcp.claim_blobs(reg.engine, [other], "elsewhere")  # not blocked
        time.sleep(0.5)
        assert not done, "the claim waited for the lock"
    claimer.join(30)
    assert done == ["held"]


def _run_gc(db: str, blobs: str, grace: float) -> None:
    Registry(db, blobs).gc(grace)


def test_a_gc_killed_halfway_is_finished_by_the_next_run(reg: Registry, tmp_path: Path) -> None:
    kept = reg.register(
        "team/kept",
        [_files(tmp_path / "k", **{f"f{i}": f"kept {i}" for i in range(20)})],
        kind="model",
    )
    orphans = [_orphan(reg, f"garbage {i}") for i in range(1500)]
    _backdate(reg, 2 * DAY)
    first = min(orphans, key=reg.blobs.key)  # GC walks the store in key order

    proc = mp.get_context("spawn").Process(
        target=_run_gc, args=(reg.db_location, reg.blob_location, 3600.0)
    )
    proc.start()
    deadline = time.monotonic() + 60
    while _blob_path(reg, first).exists() and time.monotonic() < deadline:
        time.sleep(0.001)
    os.kill(proc.pid, signal.SIGKILL)  # in the middle of deleting
    proc.join(30)
    assert proc.exitcode == -signal.SIGKILL
    left = [s for s in orphans if _blob_path(reg, s).exists()]
    assert 0 < len(left) < len(orphans), "killed halfway"

    # What a kill can leave besides: a committed mark whose object is still there, a mark
    # whose object is gone, and (never made by GC, but it must not hurt) a mark on a blob
    # a version references.
    gone = hashlib.sha256(b"deleted before the kill").hexdigest()
    with reg.engine.begin() as conn:
        conn.execute(
            insert(t.gc_marks),
            [
                {"sha256": left[-1], "marked_at": time.time()},
                {"sha256": gone, "marked_at": time.time()},
                {"sha256": kept.files[0].sha256, "marked_at": time.time()},
            ],
        )

    report = reg.gc(grace=3600)
    assert report.resumed_marks >= 3
    assert report.deleted == len(left) and report.kept_referenced == 20
    assert not [s for s in orphans if _blob_path(reg, s).exists()]
    assert _count(reg, t.gc_marks) == 0
    assert _download_all(reg, tmp_path / "out") == 1, "every referenced blob is still there"


def _register_while_gc_runs(db: str, blobs: str, src: str, worker: int, count: int) -> None:
    reg = Registry(db, blobs)
    root = Path(src) / f"w{worker}"
    for j in range(count):
        files = {
            "shared.bin": "shared by every version",
            "orphan.bin": f"orphan {worker}-{j}",  # an old unreferenced blob GC goes after
            "own.bin": f"own {worker}-{j}",
        }
        reg.register(f"team/w{worker}", [_files(root / str(j), **files)], kind="checkpoint")


def test_gc_racing_registrations_never_deletes_a_referenced_blob(
    reg: Registry, tmp_path: Path
) -> None:
    workers, count = 3, 4
    reg.register(
        "team/base",
        [_files(tmp_path / "b", **{"shared.bin": "shared by every version"})],
        kind="checkpoint",
    )
    orphan_texts = [f"orphan {w}-{j}" for w in range(workers) for j in range(count)]
    garbage = [_orphan(reg, f"never registered {i}") for i in range(10)]
    procs = [
        mp.get_context("spawn").Process(
            target=_register_while_gc_runs,
            args=(reg.db_location, reg.blob_location, str(tmp_path / "src"), w, count),
        )
        for w in range(workers)
    ]
    for p in procs:
        p.start()
    passes = deleted = 0
    while any(p.is_alive() for p in procs):
        # Orphans the workers will reuse keep reappearing (as after crashed uploads), and
        # every blob looks old: only claims and references protect them.
        with reg.engine.connect() as conn:
            referenced = set(conn.execute(select(t.files.c.sha256)).scalars())
        for text in orphan_texts:
            if hashlib.sha256(text.encode()).hexdigest() not in referenced:
                _orphan(reg, text)
        _backdate(reg, 2 * DAY)
        deleted += reg.gc(grace=600).deleted
        passes += 1
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert passes >= 2 and deleted >= len(garbage), "GC really ran alongside"
    assert not [s for s in garbage if _blob_path(reg, s).exists()]
    assert _count(reg, t.blob_claims) == 0 and _count(reg, t.gc_marks) == 0
    _backdate(reg, 2 * DAY)
    assert reg.gc(grace=600).deleted == 0, "everything left is referenced"
    assert _download_all(reg, tmp_path / "out") == 1 + workers * count
