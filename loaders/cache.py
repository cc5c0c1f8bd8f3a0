"""A node-local cache of decoded shards, shared by every process on the node.

A shard is fetched (local or ``s3://``, checksum-verified by the dataset reader), decoded once
into a file a reader can memory-map (an uncompressed Arrow IPC file for tables, ``.npy`` for
token rows) and published under a name derived from the shard's checksum, so every DataLoader
worker and every job on the node reading the same shard shares one copy. A per-file lock makes
concurrent misses fetch once; the file appears by rename, so no reader ever sees half of one.
Each file's xxh3-128 is kept next to it and checked the first time a process opens it: a
truncated or corrupted cache file is rebuilt from the source instead of being read.

With ``limit_bytes`` the cache stays under that size (plus the file just built): after each
build it evicts the files needed furthest in the future, as ``next_use`` says (the readers know
the epoch's read order, so a cache smaller than the dataset is not thrashed the way LRU is by a
cyclic scan); files it cannot place (other datasets) go first, oldest first. A file evicted
while a process still has it memory-mapped stays readable to that process.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import stat
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import xxhash

from datastore.errors import PermissionDenied

__all__ = ["ShardCache", "default_cache_dir"]


#: The only subdirectories the cache lists, counts and evicts from (never anything else under
#: its root, which may be a shared scratch directory).
OWNED = ("tables", "tokens")


def default_cache_dir() -> Path:
    """``$SHARDYARD_CACHE_DIR``, else ``<tmp>/shardyard-cache-<uid>`` (private to the user)."""
    env = os.environ.get("SHARDYARD_CACHE_DIR")
    if env:
        return Path(env)
    return Path(tempfile.gettempdir()) / f"shardyard-cache-{os.getuid()}"


class ShardCache:
    """Decoded shard files under ``root``, built at most once per node."""

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        limit_bytes: int | None = None,
        next_use: Callable[[str], float] | None = None,
    ) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()
        _private_dir(self.root)
        self.limit_bytes = limit_bytes
        self.next_use = next_use  # cache name -> how far ahead it is needed (inf: not again)
        self.fetches = 0  # files this process built (fetched and decoded)
        self.bytes_fetched = 0  # their sizes
        self.rebuilt = 0  # of which replaced a cached file that failed its checksum
        self.evicted = 0  # files this process removed to stay under the limit
        self._verified: set[Path] = set()
        self._lock: threading.Lock | None = None  # prefetch threads build files too
        self._lock_pid = 0

    @property
    def _counting(self) -> threading.Lock:
        """This process's lock for the counters (a fork may copy one held by a thread)."""
        if self._lock is None or self._lock_pid != os.getpid():
            self._lock, self._lock_pid = threading.Lock(), os.getpid()
        return self._lock

    def __getstate__(self) -> dict[str, object]:
        state = self.__dict__.copy()
        state["_lock"] = None
        return state

    def path(self, name: str, build: Callable[[Path], None], keep: tuple[Path, ...] = ()) -> Path:
        """The cached file ``name``; on a miss (or a cached copy that fails its checksum)
        ``build(tmp_path)`` writes it, under a lock so concurrent processes build it once, and
        it is renamed into place. Making room for it never evicts the files in ``keep`` (the
        other files of the same shard)."""
        final = self.root / name
        if final.exists() and (final in self._verified or self._intact(final)):
            self._verified.add(final)
            return final
        final.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock_fd = os.open(
            final.parent / f".{final.name}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600
        )
        with os.fdopen(lock_fd, "r+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if final.exists():
                    if self._intact(final):  # another process built it while we waited
                        self._verified.add(final)
                        return final
                    with self._counting:
                        self.rebuilt += 1
                fd, tmp = tempfile.mkstemp(
                    dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"
                )
                os.close(fd)
                try:
                    build(Path(tmp))
                    size = os.stat(tmp).st_size
                    os.replace(tmp, final)
                    _write_sum(final)  # hashed once per node, here; readers compare stat fields
                except BaseException:
                    Path(tmp).unlink(missing_ok=True)
                    raise
                with self._counting:
                    self.fetches += 1
                    self.bytes_fetched += size
            finally:
                # explicitly: a process forked meanwhile shares the open file, and with it
                # the lock, which closing our descriptor alone would not release
                fcntl.flock(lock, fcntl.LOCK_UN)
        self._verified.add(final)
        if self.limit_bytes is not None:
            self._make_room(keep={final, *keep})
        return final

    def cached_bytes(self) -> int:
        """Bytes of cached files (all datasets) under the root."""
        return sum(size for _, size, _ in self._files())

    def _files(self) -> list[tuple[Path, int, float]]:
        out = []
        paths = [p for sub in OWNED for p in (self.root / sub).glob("*")]
        for path in paths:
            if path.name.startswith("."):
                continue
            try:
                st = path.stat()
            except FileNotFoundError:  # evicted by another process meanwhile
                continue
            if path.is_file():
                out.append((path, st.st_size, st.st_mtime))
        return out

    def _make_room(self, keep: set[Path]) -> None:
        assert self.limit_bytes is not None
        files = self._files()
        total = sum(size for _, size, _ in files)
        if total <= self.limit_bytes:
            return

        def distance(path: Path) -> float:
            if self.next_use is None:
                return math.inf
            return self.next_use(path.relative_to(self.root).as_posix())

        # furthest next use first; then the oldest
        for path, size, _ in sorted(files, key=lambda f: (-distance(f[0]), f[2])):
            if total <= self.limit_bytes:
                break
            if path in keep:
                continue
            path.unlink(missing_ok=True)
            _sum_path(path).unlink(missing_ok=True)
            self._verified.discard(path)
            with self._counting:
                self.evicted += 1
            total -= size

    @staticmethod
    def _intact(path: Path) -> bool:
        """The file is the one published (same inode, size and mtime as recorded then, which
        the publisher hashed), or, when those changed, its content still hashes the same."""
        try:
            doc = json.loads(_sum_path(path).read_text())
            st = path.stat()
        except (FileNotFoundError, ValueError):
            return False
        if [st.st_ino, st.st_size, st.st_mtime_ns] == doc.get("stat"):
            return True
        return bool(doc.get("xxh3") == _digest(path))


def _private_dir(root: Path) -> None:
    """Create ``root`` (mode 0700) or check that an existing one is a real directory of this
    user that nobody else may write: other users must not plant data or links in it."""
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = os.lstat(root)
    if (
        stat.S_ISLNK(st.st_mode)
        or not stat.S_ISDIR(st.st_mode)
        or st.st_uid != os.getuid()
        or st.st_mode & 0o022
    ):
        raise PermissionDenied(
            f"cache directory {root} is a link, not yours, or writable by others; "
            "set SHARDYARD_CACHE_DIR (or cache_dir=) to a private directory"
        )


def _sum_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.xxh3")


def _write_sum(path: Path) -> None:
    st = path.stat()
    doc = {"xxh3": _digest(path), "stat": [st.st_ino, st.st_size, st.st_mtime_ns]}
    tmp = path.with_name(f".{path.name}.xxh3.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, _sum_path(path))


def _digest(path: Path) -> str:
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()
