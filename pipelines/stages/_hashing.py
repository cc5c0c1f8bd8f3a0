"""Pieces shared by the signature algorithms (:mod:`pipelines.stages.minhash`,
:mod:`pipelines.stages.oph`) and dedup: the splitmix64 finalizer and the check of a flat
``(hashes, offsets)`` shingle-set input."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = ["check_shingle_sets", "mix64"]

U64 = NDArray[np.uint64]
I64 = NDArray[np.int64]


def mix64(x: U64) -> U64:
    """The splitmix64 finalizer (a bijection of uint64), applied in place; returns ``x``."""
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def check_shingle_sets(hashes: U64, offsets: I64) -> tuple[U64, I64]:
    """``hashes`` as uint64 and ``offsets`` as int64, where document ``d``'s shingles are
    ``hashes[offsets[d]:offsets[d + 1]]``. Raises ValueError for offsets that are not 1-D,
    do not start at 0 and end at ``len(hashes)``, or decrease."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    offsets = np.asarray(offsets, dtype=np.int64)
    if offsets.ndim != 1 or offsets.size < 1 or offsets[0] != 0 or offsets[-1] != hashes.size:
        raise ValueError("offsets must be 1-D, start at 0 and end at len(hashes)")
    if np.any(np.diff(offsets) < 0):
        raise ValueError("offsets must be non-decreasing")
    return hashes, offsets
