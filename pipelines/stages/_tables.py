"""Per-code-point tables built from :mod:`unicodedata`, cached on disk.

Building a table over all 1.1 million code points takes a few tenths of a second in Python;
every Dask worker process needs the tables, so they are built once per machine and Unicode
version and kept in ``$XDG_CACHE_HOME/shardyard`` (``~/.cache/shardyard``); a worker then
loads them in about a millisecond. The file name carries the Unicode version and the table's
revision, so a different Python (another Unicode version) or a changed table builds anew. If
the cache cannot be written (read-only home), the table is simply built in memory.
"""

from __future__ import annotations

import os
import tempfile
import unicodedata
from collections.abc import Callable
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

__all__ = ["cached_table"]


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "shardyard"


def cached_table(
    name: str, revision: int, build: Callable[[], NDArray[np.generic]]
) -> NDArray[np.generic]:
    """The table ``name`` (revision ``revision``): loaded from the cache, or built by
    ``build()`` and stored there. The returned array is read-only."""
    path = _cache_dir() / f"unicode-{name}-{unicodedata.unidata_version}-r{revision}.npy"
    table: NDArray[np.generic] | None = None
    try:
        table = np.load(path, allow_pickle=False)
        if table.shape != (0x110000,):
            table = None
    except (OSError, ValueError):
        table = None
    if table is None:
        table = build()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                np.save(f, table, allow_pickle=False)
            os.replace(tmp, path)  # atomic: concurrent workers never see half a table
        except OSError:
            pass
    table.flags.writeable = False
    return table
