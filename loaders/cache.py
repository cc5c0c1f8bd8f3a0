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
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import xxhash

__all__ = ["ShardCache", "default_cache_dir"]


def default_cache_dir() -> Path:
    """``$SHARDYARD_CACHE_DIR``, else ``<tmp>/shardyard-cache-<uid>``."""
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
        self.limit_bytes = limit_bytes
        self.next_use = next_use  # cache name -> how far ahead it is needed (inf: not again)
        self.fetches = 0  # files this process built (fetched and decoded)
        self.bytes_fetched = 0  # their sizes
        self.rebuilt = 0  # of which replaced a cached file that failed its checksum
        self.evicted = 0  # files this process removed to stay under the limit
        self._verified: set[Path] = set()

    def path(self, name: str, build: Callable[[Path], None]) -> Path:
        """The cached file ``name``; on a miss (or a cached copy that fails its checksum)
        ``build(tmp_path)`` writes it, under a lock so concurrent processes build it once, and
        it is renamed into place."""
        final = self.root / name
        if final.exists() and (final in self._verified or self._intact(final)):
            self._verified.add(final)
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        with open(final.parent / f".{final.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if final.exists():
                if self._intact(final):  # another process built it while we waited
                    self._verified.add(final)
                    return final
                self.rebuilt += 1
            fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
            os.close(fd)
            try:
                build(Path(tmp))
                _sum_path(final).write_text(_digest(Path(tmp)))
                os.replace(tmp, final)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            self.fetches += 1
            self.bytes_fetched += final.stat().st_size
        self._verified.add(final)
        if self.limit_bytes is not None:
            self._make_room(keep=final)
        return final

    def cached_bytes(self) -> int:
        """Bytes of cached files (all datasets) under the root."""
        return sum(size for _, size, _ in self._files())

    def _files(self) -> list[tuple[Path, int, float]]:
        out = []
        for path in self.root.rglob("*"):
            if path.name.startswith("."):
                continue
            try:
                st = path.stat()
            except FileNotFoundError:  # evicted by another process meanwhile
                continue
            if path.is_file():
                out.append((path, st.st_size, st.st_mtime))
        return out

    def _make_room(self, keep: Path) -> None:
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
            if path == keep:
                continue
            path.unlink(missing_ok=True)
            _sum_path(path).unlink(missing_ok=True)
            self._verified.discard(path)
            self.evicted += 1
            total -= size

    @staticmethod
    def _intact(path: Path) -> bool:
        try:
            return _sum_path(path).read_text() == _digest(path)
        except FileNotFoundError:
            return False


def _sum_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.xxh3")


def _digest(path: Path) -> str:
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()
