"""Building blocks of global dedup: exact text hashes, duplicate edges, connected components,
true Jaccard similarity of candidate pairs.

Exact dedup hashes every text (:func:`text_hashes`), turns groups of equal hashes into edges
(:func:`duplicate_edges`) and keeps the minimal ordinal of each group. Fuzzy dedup does the
same with LSH band keys (:mod:`pipelines.stages.minhash`, re-exported here) as composite
``(band, key)`` keys, optionally keeps only the edges whose documents are really similar
(:func:`pairwise_jaccard`), then joins the edges of all buckets into clusters
(:func:`connected_components`); the minimal ordinal of each cluster survives.

All functions are pure and vectorized (numpy sorts, no per-document Python on hot paths), free
of I/O and Dask, and deterministic: results depend on the set of input rows, not on their order,
the process or the machine. Ordinals are uint64 document ordinals (the ``_ord`` column).
"""

from __future__ import annotations

import itertools
from typing import TypeVar

import numpy as np
import pyarrow as pa
import xxhash
from numpy.typing import ArrayLike, NDArray

from pipelines.stages._hashing import mix64
from pipelines.stages.minhash import (
    _K,
    MiB,
    _offsets_and_data,
    _string_chunks,
    band_keys,
    collision_probability,
    empty_signatures,
    lsh_threshold,
    minhash_signatures,
    shingle_hashes,
)

__all__ = [
    "band_keys",
    "collision_probability",
    "connected_components",
    "duplicate_edges",
    "empty_signatures",
    "jaccard",
    "lsh_threshold",
    "minhash_signatures",
    "pairwise_jaccard",
    "shingle_hashes",
    "text_hashes",
    "unique_shingles",
]

U64 = NDArray[np.uint64]
I64 = NDArray[np.int64]
_T = TypeVar("_T", bound=np.generic)


def text_hashes(texts: pa.Array | pa.ChunkedArray) -> tuple[U64, U64]:
    """The 128-bit xxh3 hash of each text's UTF-8 bytes, as two uint64 arrays ``(hi, lo)``
    (``hi << 64 | lo == xxhash.xxh3_128_intdigest(text.encode())``).

    128 bits make an accidental collision in a corpus of 10**12 documents about 10**-15
    likely, so equal hashes are treated as equal texts without comparing them. A null text
    hashes like the empty one. One xxhash call per text over slices of Arrow's buffer (no
    copies): xxh3 runs at memory speed, and the per-call cost (~0.25 us) is small next to a
    document. Raises TypeError for non-string arrays.
    """
    digests: list[bytes] = []
    for chunk in _string_chunks(texts):
        if len(chunk) == 0:
            continue
        offsets, data = _offsets_and_data(chunk)
        view = data.data
        digest = xxhash.xxh3_128_digest
        bounds = offsets.tolist()
        digests.extend([digest(view[s:e]) for s, e in itertools.pairwise(bounds)])
    pairs = np.frombuffer(b"".join(digests), dtype=">u8").reshape(-1, 2)
    return pairs[:, 0].astype(np.uint64), pairs[:, 1].astype(np.uint64)


def duplicate_edges(keys: ArrayLike, ords: ArrayLike) -> tuple[U64, U64]:
    """Star edges joining the documents that share a key.

    ``keys`` is 1-D ``(n,)`` or a composite key ``(n, k)`` (e.g. hash hi/lo, or band index and
    band key), row ``i`` belonging to document ``ords[i]``. For every group of equal keys with
    at least two distinct ordinals there is one edge ``(src, dst)`` from each other ordinal to
    the group's minimal ordinal; a repeated ``(key, ord)`` row adds nothing (no self edges, no
    repeats within a group). The same pair can come from several groups (e.g. two bands).

    Rows are sorted by ``(key..., ord)`` with ``np.lexsort``, so the output (ordered by key,
    then ``src``) is the same for any order of the input rows. Most keys are usually unique (LSH
    band keys), so a fast value sort of one uint64 per row (the key, or a hash of a composite
    key) first picks the rows whose key may repeat, and only those go through the exact, slower
    lexsort. Returns uint64 arrays; raises ValueError when the shapes disagree and TypeError
    for non-integer keys.
    """
    key_arr = np.asarray(keys)
    ord_arr = np.asarray(ords, dtype=np.uint64)
    if key_arr.ndim not in (1, 2):
        raise ValueError(f"keys must be 1-D or 2-D, not shape {key_arr.shape}")
    if not np.issubdtype(key_arr.dtype, np.integer):
        raise TypeError(f"keys must be integers, not {key_arr.dtype}")
    if ord_arr.ndim != 1 or key_arr.shape[0] != ord_arr.shape[0]:
        raise ValueError(f"keys {key_arr.shape} and ords {ord_arr.shape} must have equal rows")
    columns = [key_arr] if key_arr.ndim == 1 else [key_arr[:, j] for j in range(key_arr.shape[1])]
    none = np.zeros(0, np.uint64), np.zeros(0, np.uint64)
    if ord_arr.size < 2 or not columns:
        return none
    # rows whose combined key (mixed, so its top bits are uniform) occurs more than once: a
    # superset of the rows in groups, found with a value sort and a bitmap of the top bits
    combined = mix64(columns[0].astype(np.uint64))
    for column in columns[1:]:
        combined = mix64(combined * _K ^ column.astype(np.uint64))
    values = np.sort(combined)
    repeats = values[1:] == values[:-1]
    n_repeats = int(np.count_nonzero(repeats))
    if n_repeats == 0:
        return none
    if n_repeats < ord_arr.size // 4:  # else filtering costs more than it saves
        repeated = values[1:][repeats]  # sorted
        shift = np.uint64(64 - max(16, min(28, (8 * n_repeats).bit_length())))
        bitmap = np.zeros(1 << (64 - int(shift)), np.bool_)
        bitmap[(repeated >> shift).astype(np.intp)] = True
        rows = np.flatnonzero(bitmap[(combined >> shift).astype(np.intp)])
        maybe = combined[rows]
        pos = np.minimum(np.searchsorted(repeated, maybe), repeated.size - 1)
        rows = rows[repeated[pos] == maybe]
        columns = [column[rows] for column in columns]
        ord_arr = ord_arr[rows]
    n = ord_arr.size
    order = np.lexsort([ord_arr, *reversed(columns)])  # the last key is the primary one
    sorted_ords = ord_arr[order]
    same_key = np.ones(n - 1, np.bool_)
    for column in columns:
        c = column[order]
        same_key &= c[1:] == c[:-1]
    group_start = np.ones(n, np.bool_)
    group_start[1:] = ~same_key
    group = np.cumsum(group_start) - 1
    root = sorted_ords[group_start][group]  # the first row of a group has its minimal ordinal
    fresh = np.ones(n, np.bool_)
    fresh[1:] = ~same_key | (sorted_ords[1:] != sorted_ords[:-1])
    edge = fresh & (sorted_ords != root)
    return sorted_ords[edge], root[edge]


def connected_components(src: ArrayLike, dst: ArrayLike) -> tuple[U64, U64]:
    """Connected components of the undirected graph with edges ``(src[i], dst[i])``.

    Returns ``(members, roots)``: every ordinal that appears in an edge once, ascending, and
    the minimal ordinal of its component (a root maps to itself). Ordinals are uint64 of any
    range: ``np.unique`` maps them to dense ids (in the same order, so minimal id means
    minimal ordinal). Then rounds of min-hooking: the larger root of every edge whose ends
    have different roots takes the smaller one as parent (``np.minimum.at``), and pointer
    jumping flattens every tree; edges whose ends share a root are dropped for good. Parents
    only ever decrease, so this stops, and the result is unique. Rounds are few in practice
    (about log of the longest path), each a few passes over the remaining edges.
    """
    s = np.asarray(src, dtype=np.uint64)
    d = np.asarray(dst, dtype=np.uint64)
    if s.shape != d.shape or s.ndim != 1:
        raise ValueError(f"src {s.shape} and dst {d.shape} must be 1-D and of equal length")
    nodes, dense = np.unique(np.concatenate([s, d]), return_inverse=True)
    dense = dense.astype(np.int64)
    u, v = dense[: s.size], dense[s.size :]
    parent = np.arange(nodes.size, dtype=np.int64)
    while u.size:
        pu, pv = parent[u], parent[v]
        active = pu != pv
        if not active.all():
            u, v, pu, pv = u[active], v[active], pu[active], pv[active]
            if not u.size:
                break
        np.minimum.at(parent, np.maximum(pu, pv), np.minimum(pu, pv))
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
    return nodes, nodes[parent]


def jaccard(a: U64, b: U64) -> float:
    """Jaccard similarity of two sorted arrays of unique uint64 (e.g. from
    :func:`unique_shingles`); 0.0 when either is empty, so empty documents never match."""
    a = np.asarray(a, dtype=np.uint64)
    b = np.asarray(b, dtype=np.uint64)
    if a.size == 0 or b.size == 0:
        return 0.0
    if a.size > b.size:
        a, b = b, a
    pos = np.minimum(np.searchsorted(b, a), b.size - 1)
    inter = int(np.count_nonzero(b[pos] == a))
    return inter / (a.size + b.size - inter)


def _gather_segments(values: NDArray[_T], offsets: I64, docs: I64) -> tuple[NDArray[_T], I64]:
    """Concatenate ``values[offsets[d]:offsets[d + 1]]`` for each ``d`` in ``docs``; returns the
    values and the segment lengths."""
    lens = offsets[docs + 1] - offsets[docs]
    total = int(lens.sum())
    starts = np.zeros(docs.size, np.int64)
    np.cumsum(lens[:-1], out=starts[1:])
    index = np.arange(total, dtype=np.int64)
    index += np.repeat(offsets[docs] - starts, lens)
    return values[index], lens


def _ranked_sets(hashes: U64, offsets: I64) -> tuple[U64, I64, I64]:
    """Each document's shingles as a sorted set of dense ranks: ``(distinct hashes, ranks,
    rank offsets)`` where ``distinct[ranks[rank_offsets[d]:rank_offsets[d + 1]]]`` is document
    ``d``'s sorted set. Ranks let ``(document, rank)`` fit one int64, sorted by value (numpy's
    fast path) instead of by ``np.lexsort``."""
    distinct, ranks = np.unique(hashes, return_inverse=True)
    span = max(int(distinct.size), 1)
    counts = np.diff(offsets)
    keys = np.repeat(np.arange(counts.size, dtype=np.int64) * span, counts)
    keys += ranks.reshape(-1)
    keys.sort()
    keep = np.ones(keys.size, np.bool_)
    keep[1:] = keys[1:] != keys[:-1]
    keys = keys[keep]
    set_offsets = np.searchsorted(keys, np.arange(counts.size + 1, dtype=np.int64) * span)
    return distinct, keys % span, set_offsets.astype(np.int64)


def unique_shingles(hashes: U64, offsets: I64) -> tuple[U64, I64]:
    """Each document's shingles as a sorted set: ``(hashes, offsets)`` like the input, with
    every segment sorted and without repeats."""
    distinct, ranks, set_offsets = _ranked_sets(
        np.asarray(hashes, dtype=np.uint64), np.asarray(offsets, dtype=np.int64)
    )
    return distinct[ranks], set_offsets


def pairwise_jaccard(
    hashes: U64,
    offsets: I64,
    left_idx: I64,
    right_idx: I64,
    *,
    chunk_elements: int = 8 * MiB,
) -> NDArray[np.float64]:
    """True Jaccard similarity of the shingle sets of documents ``left_idx[p]`` and
    ``right_idx[p]`` (indexes into ``offsets``) for every pair ``p``, as float64.

    Repeated shingles count once; a pair with an empty side has similarity 0.0. Pairs are
    processed in chunks of about ``chunk_elements`` shingles (16 bytes of temporaries each).
    """
    left = np.asarray(left_idx, dtype=np.int64)
    right = np.asarray(right_idx, dtype=np.int64)
    if left.shape != right.shape or left.ndim != 1:
        raise ValueError("left_idx and right_idx must be 1-D and of equal length")
    out = np.zeros(left.size, np.float64)
    if left.size == 0:
        return out
    offsets = np.asarray(offsets, dtype=np.int64)
    n_docs = offsets.size - 1
    if min(left.min(), right.min()) < 0 or max(left.max(), right.max()) >= n_docs:
        raise IndexError(f"pair indexes must be in [0, {n_docs})")
    # the involved documents as sorted sets of dense ranks, so that (pair, rank) fits one
    # int64 sort key
    docs = np.unique(np.concatenate([left, right]))
    values, lens = _gather_segments(np.asarray(hashes, dtype=np.uint64), offsets, docs)
    sub_offsets = np.zeros(docs.size + 1, np.int64)
    np.cumsum(lens, out=sub_offsets[1:])
    distinct, ranks, set_offsets = _ranked_sets(values, sub_offsets)
    span = max(int(distinct.size), 1)
    lpos = np.searchsorted(docs, left)
    rpos = np.searchsorted(docs, right)
    sizes = np.diff(set_offsets)
    lsize, rsize = sizes[lpos], sizes[rpos]
    cost = np.cumsum(lsize + rsize)
    start = 0
    while start < left.size:
        base = int(cost[start - 1]) if start else 0
        stop = int(np.searchsorted(cost, base + chunk_elements, side="right"))
        stop = min(max(stop, start + 1), left.size)
        pl, pr = lpos[start:stop], rpos[start:stop]
        a, alen = _gather_segments(ranks, set_offsets, pl)
        b, blen = _gather_segments(ranks, set_offsets, pr)
        pair = np.arange(stop - start, dtype=np.int64)
        keys = np.concatenate([np.repeat(pair, alen) * span + a, np.repeat(pair, blen) * span + b])
        keys.sort()
        dup = keys[1:] == keys[:-1]
        inter = np.bincount(keys[1:][dup] // span, minlength=stop - start)
        union = alen + blen - inter
        out[start:stop] = np.divide(
            inter, union, out=np.zeros(stop - start, np.float64), where=union > 0
        )
        start = stop
    # a side with no shingles never matches, even an identical empty document
    out[(lsize == 0) | (rsize == 0)] = 0.0
    return out
