"""A node-local cache of decoded shards, shared by every process on the node.

A shard is fetched (local or ``s3://``, checksum-verified by the dataset reader), decoded once
into a file a reader can memory-map (an uncompressed Arrow IPC file for tables, ``.npy`` for
token rows) and published under a name derived from the shard's checksum, so every DataLoader
worker and every job on the node reading the same shard shares one copy. A per-file lock makes
concurrent misses fetch once; the file appears by rename, so no reader ever sees half of one.

Not done yet (see the Loaders issue): a byte limit with eviction by the epoch's future read
order, and re-verification of cached files.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

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
        self.fetches = 0  # shards this process decoded into the cache

    def path(self, name: str, build: Callable[[Path], None]) -> Path:
        """The cached file ``name``; on a miss ``build(tmp_path)`` writes it (under a lock, so
        concurrent processes build it once) and it is renamed into place."""
        final = self.root / name
        if final.exists():
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        with open(final.parent / f".{final.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if final.exists():  # another process built it while we waited
                return final
            fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
            os.close(fd)
            try:
                build(Path(tmp))
                os.replace(tmp, final)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            self.fetches += 1
        return final
