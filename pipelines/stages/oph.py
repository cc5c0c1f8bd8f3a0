"""One-permutation hashing (OPH) with optimal densification: signatures that estimate Jaccard
similarity like MinHash ones, in O(shingles + docs * num_perm) time instead of
O(shingles * num_perm).

OPH (Li, Owen and Zhang, NIPS 2012) hashes every shingle once and splits the hash range into
``num_perm`` bins: position ``i`` of a signature is the minimum over the shingles that fall
into bin ``i``. Bins that no shingle falls into (most of them for a document with fewer
shingles than bins) are filled by *optimal densification* (Shrivastava, ICML 2017): an empty
bin copies a non-empty bin picked by a random order of the bins that is bin-specific and shared
by all documents. Two documents whose bin ``i`` is empty in both then copy from the same bin
exactly when it is the first bin, in that order, that is non-empty in either; so each position
agrees with probability equal to the Jaccard similarity, and unlike the older rotation schemes
the empty bins pick their sources independently, which keeps the variance close to MinHash's.

The definition, which a re-implementation must follow to get equal signatures (``k`` is
``num_perm``, ``mix`` the splitmix64 finalizer, arithmetic mod 2**64):

* ``(a, b, c)`` are the first three raw outputs of
  ``numpy.random.PCG64(numpy.random.SeedSequence([seed, 0x4F5048]))`` (``a`` forced odd).
* A shingle hash ``x`` has ``h = mix(a * x + b)``, a bijection of uint64; it falls into bin
  ``(h >> 32) * k >> 32`` with value ``h mod 2**32``. A bin's value is the minimum value of the
  document's shingles in it.
* An empty bin ``i`` takes the value of the non-empty bin ``j`` with the least
  ``mix(c ^ (i * 2**32 + j))``.
* A document without shingles gets the all-``0xFFFFFFFF`` signature, like MinHash.

Unlike MinHash signatures, a longer OPH signature does not extend a shorter one (the bins
depend on ``num_perm``), and OPH signatures are not comparable with MinHash ones. For
documents with fewer shingles than bins, several positions copy the same bin, so positions are
positively correlated: the agreement stays an unbiased Jaccard estimate, but an LSH band of
``rows`` positions of such a document matches more often than ``J ** rows``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from pipelines.stages._hashing import check_shingle_sets, mix64

__all__ = ["oph_signatures"]

U64 = NDArray[np.uint64]
I64 = NDArray[np.int64]

_TAG = 0x4F5048  # "OPH": the SeedSequence's second word, so OPH and MinHash draw apart
_EMPTY = np.uint64(1 << 32)  # an empty bin while a block is built (above every value)
_LOW32 = np.uint64(0xFFFFFFFF)
#: Empty bins first probe this many bins of their order, one vectorized round each; those
#: still empty then take the exact minimum over the document's non-empty bins. Only the speed
#: depends on it (tiny documents need many probes; big ones have few empty bins).
_PROBES = 8
#: The largest num_perm: bin numbers must fit in the low half of ``i * 2**32 + j``.
MAX_BINS = 1 << 32
#: Bytes of the largest temporaries by default (shingles per chunk times 8).
DEFAULT_CHUNK_BYTES = 1 << 20


def _parameters(seed: int) -> tuple[np.uint64, np.uint64, np.uint64]:
    raw = np.random.PCG64(np.random.SeedSequence([seed, _TAG])).random_raw(3)
    a, b, c = (np.uint64(v) for v in np.asarray(raw, dtype=np.uint64))
    return a | np.uint64(1), b, c


def _priority(c: np.uint64, empty_bin: U64, source_bin: U64) -> U64:
    """``mix(c ^ (i * 2**32 + j))``: the lower, the earlier empty bin ``i`` tries bin ``j``."""
    return mix64(((empty_bin << np.uint64(32)) | source_bin) ^ c)


def _probe_order(k: int, c: np.uint64, probes: int, chunk_bytes: int) -> NDArray[np.intp]:
    """``(k, probes)``: the first ``probes`` bins of each bin's order (least priority first)."""
    order = np.empty((k, probes), np.intp)
    source = np.arange(k, dtype=np.uint64)
    step = max(1, chunk_bytes // (8 * k))
    for start in range(0, k, step):
        stop = min(start + step, k)
        empty = np.arange(start, stop, dtype=np.uint64)
        prio = _priority(c, empty[:, None], source[None, :])
        if probes < k:
            part = np.argpartition(prio, probes - 1, axis=1)[:, :probes]
        else:
            part = np.broadcast_to(np.arange(k), prio.shape)
        ranked = np.argsort(np.take_along_axis(prio, part, axis=1), axis=1)
        order[start:stop] = np.take_along_axis(part, ranked, axis=1)
    return order


def _densify(bins: U64, c: np.uint64, order: NDArray[np.intp]) -> None:
    """Fill the empty bins of the ``(docs, k)`` block ``bins`` in place (see the module
    docstring); rows without any non-empty bin stay empty."""
    n, k = bins.shape
    flat = bins.reshape(-1)
    empty = flat == _EMPTY
    n_empty = empty.reshape(n, k).sum(axis=1)
    fill = n_empty < k  # documents with shingles
    cells = np.flatnonzero((empty.reshape(n, k) & fill[:, None]).reshape(-1))
    if cells.size == 0:
        return
    values = np.empty(cells.size, np.uint64)
    todo = np.arange(cells.size)  # which cells are still empty, as positions in `cells`
    empty_bin = cells % k
    row_start = cells - empty_bin
    for t in range(order.shape[1]):
        probe = flat[row_start[todo] + order[empty_bin[todo], t]]
        hit = probe != _EMPTY
        values[todo[hit]] = probe[hit]
        todo = todo[~hit]
        if todo.size == 0:
            break
    if todo.size:
        values[todo] = _least_priority_source(flat, empty, cells[todo], k, c)
    flat[cells] = values


def _least_priority_source(
    flat: U64, empty: NDArray[np.bool_], cells: I64, k: int, c: np.uint64
) -> U64:
    """For each empty cell (flat index into the ``(docs, k)`` block), the value of its
    document's non-empty bin of least priority, by comparing all of them."""
    full = np.flatnonzero(~empty)  # non-empty cells, sorted, so grouped by document
    row_start = cells - cells % k
    first = np.searchsorted(full, row_start)
    count = np.searchsorted(full, row_start + k) - first
    pair_start = np.zeros(cells.size, np.int64)
    np.cumsum(count[:-1], out=pair_start[1:])
    cell_of_pair = np.repeat(np.arange(cells.size), count)
    # ragged arange: the document's non-empty cells, for each empty cell in turn
    pos = np.arange(int(count.sum())) - np.repeat(pair_start - first, count)
    source = full[pos]
    empty_bin = (cells % k).astype(np.uint64)
    prio = _priority(
        c, empty_bin[cell_of_pair], (source - row_start[cell_of_pair]).astype(np.uint64)
    )
    least = np.minimum.reduceat(prio, pair_start)
    chosen = source[prio == least[cell_of_pair]]  # priorities are distinct: one per cell
    return flat[chosen]


def oph_signatures(
    hashes: U64,
    offsets: I64,
    num_perm: int,
    seed: int,
    *,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> NDArray[np.uint32]:
    """OPH signatures, shape ``(n_docs, num_perm)`` uint32, of the shingle sets
    ``hashes[offsets[d]:offsets[d + 1]]`` (as from
    :func:`~pipelines.stages.minhash.shingle_hashes`); see the module docstring.

    Each shingle is hashed once; documents are processed in blocks whose ``(docs, num_perm)``
    uint64 bins and per-shingle temporaries hold about ``chunk_bytes`` each (or one document, or
    one chunk of a longer document's shingles). The chunk size changes the speed, never the
    result. Raises ValueError for ``num_perm`` outside ``[1, 2**32]`` or offsets that do not fit
    ``hashes``.
    """
    if not 1 <= num_perm <= MAX_BINS:
        raise ValueError(f"num_perm must be in [1, 2**32], not {num_perm}")
    hashes, offsets = check_shingle_sets(hashes, offsets)
    k = num_perm
    n_docs = offsets.size - 1
    a, b, c = _parameters(seed)
    order = _probe_order(k, c, min(_PROBES, k), chunk_bytes)
    out = np.full((n_docs, k), 0xFFFFFFFF, dtype=np.uint32)
    rows = max(1, chunk_bytes // 8)  # shingles per chunk
    max_docs = max(1, chunk_bytes // (8 * k))
    k64 = np.uint64(k)
    d0 = 0
    while d0 < n_docs:
        d1 = int(np.searchsorted(offsets, offsets[d0] + rows, side="right")) - 1
        d1 = min(max(d1, d0 + 1), d0 + max_docs, n_docs)
        bins = np.full((d1 - d0) * k, _EMPTY, np.uint64)
        for start in range(int(offsets[d0]), int(offsets[d1]), rows):
            stop = min(start + rows, int(offsets[d1]))
            first = int(np.searchsorted(offsets, start, side="right")) - 1
            last = int(np.searchsorted(offsets, stop, side="left"))  # docs [first, last)
            counts = np.minimum(offsets[first + 1 : last + 1], stop) - np.maximum(
                offsets[first:last], start
            )
            row_start = np.repeat(np.arange(first - d0, last - d0, dtype=np.uint64) * k64, counts)
            h = hashes[start:stop] * a
            h += b
            mix64(h)
            cell = h >> np.uint64(32)
            cell *= k64
            cell >>= np.uint64(32)
            cell += row_start
            h &= _LOW32
            np.minimum.at(bins, cell.view(np.int64), h)
        block = bins.reshape(d1 - d0, k)
        _densify(block, c, order)
        has = offsets[d0 + 1 : d1 + 1] > offsets[d0:d1]
        out[d0:d1][has] = block[has]
        d0 = d1
    return out
