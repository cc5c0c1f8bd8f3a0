"""A node-local cache of decoded shards, shared by every process on the node.

A shard is fetched (local or ``s3://``, checksum-verified by the dataset reader), decoded once
into a file a reader can memory-map (an uncompressed Arrow IPC file for tables, ``.npy`` for
token rows) and published under a name derived from the shard's checksum, so every DataLoader
worker and every job on the node reading the same shard shares one copy. A per-file lock makes
concurrent misses fetch once; the file appears by rename, so no reader ever sees half of one.
Each file's xxh3-128 is kept next to it and checked the first time a process opens it: a
truncated or corrupted cache file is rebuilt from the source instead of being read.

Not done yet (see the Loaders issue): a byte limit with eviction by the epoch's future read
order.
"""

from __future__ import annotations

import fcntl
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

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()
        self.fetches = 0  # files this process built (fetched and decoded)
        self.rebuilt = 0  # of which replaced a cached file that failed its checksum
        self._verified: set[Path] = set()

    def path(self, name: str, build: Callable[[Path], None]) -> Path:
        """The cached file ``name``; on a miss (or a cached copy that fails its checksum)
        ``build(tmp_path)`` writes it, under a lock so concurrent processes build it once, and
        it is renamed into place."""
        final = self.root / name
        if final in self._verified or (final.exists() and self._intact(final)):
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
        self._verified.add(final)
        return final

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
