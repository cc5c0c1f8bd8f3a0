"""One-permutation hashing (OPH) with optimal densification: signatures that estimate Jaccard
similarity like MinHash ones, in O(shingles + docs * num_perm) time instead of
O(shingles * num_perm).

OPH (Li, Owen and Zhang, NIPS 2012) hashes every shingle once and splits the hash range into
``num_perm`` bins: position ``i`` of a signature is the minimum over the shingles that fall
into bin ``i``. Bins that no shingle falls into (most of them for a document with fewer
shingles than bins) are filled by *optimal densification* (Shrivastava, ICML 2017): an empty
bin copies the first non-empty bin in a random order of the bins that is its own and shared by
all documents. Two documents whose bin ``i`` is empty in both then copy from the same bin
exactly when it is the first bin, in that order, that is non-empty in either; so each position
agrees with probability equal to the Jaccard similarity, and unlike the older rotation schemes
the empty bins pick their sources independently, which keeps the variance close to MinHash's.
(C-MinHash saves random permutations, not time: it still takes ``num_perm`` passes. Fast
similarity sketching has MinHash's exact variance on tiny sets too, but needs a per-document
number of rounds over the shingles, which vectorizes badly.)

The definition, which a re-implementation must follow to get equal signatures (``k`` is
``num_perm``, ``mix`` the splitmix64 finalizer, arithmetic mod 2**64):

* ``(a, b, c)`` are the first three raw outputs of
  ``numpy.random.PCG64(numpy.random.SeedSequence([seed, 0x4F5048]))`` (``a`` forced odd).
* A shingle hash ``x`` has ``h = mix(a * x + b)``, a bijection of uint64; it falls into bin
  ``(h >> 32) * k >> 32`` with value ``h mod 2**32``. A bin's value is the minimum value of the
  document's shingles in it.
* Bin ``i`` has an order of the bins: ``i`` itself, then the other bins ``j`` by increasing
  ``mix(c ^ (i * 2**32 + j))``. Densified, it takes the value of the first non-empty bin in
  its order (its own value if it has one).
* A document without shingles gets the all-``0xFFFFFFFF`` signature, like MinHash.

Accuracy, measured at 120 bins: with many more shingles than bins, the bins sample without
replacement and the estimate's standard deviation is about 10% below MinHash's; with 10 to 40
shingles, shingles sharing a bin hide each other and it is up to 20% above. LSH band
collisions follow MinHash's ``1 - (1 - J**rows)**bands`` within about 1.5 percentage points
either way. Unlike MinHash signatures, a longer OPH signature does not extend a shorter one
(the bins depend on ``num_perm``), and OPH signatures are not comparable with MinHash ones.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

from pipelines.stages._hashing import check_shingle_sets, mix64

__all__ = ["oph_signatures"]

U64 = NDArray[np.uint64]
I64 = NDArray[np.int64]

_TAG = 0x4F5048  # "OPH": the SeedSequence's second word, so OPH and MinHash draw apart
_EMPTY = np.uint64(1 << 32)  # an empty bin while a block is built (above every value)
_LOW32 = np.uint64(0xFFFFFFFF)
#: Densification of a document with ``m`` non-empty bins: up to ``_SMALL * sqrt(k)``, compare
#: the ranks of all of them for every bin; above, probe up to ``_PROBES`` bins of each empty
#: bin's order (a vectorized round each), then compare ranks for the bins still empty. Only
#: the speed depends on these two (measured best on 5 to 1000 shingles a document).
_PROBES = 32
_SMALL = 3.0
#: The largest num_perm: densification holds a ``(num_perm, num_perm)`` table of the bins'
#: orders (2 bytes an entry past 256 bins), built in O(num_perm**2 log num_perm) per call.
MAX_BINS = 4096
#: Bytes of the largest temporaries by default (shingles per chunk times 8).
DEFAULT_CHUNK_BYTES = 1 << 20


def _parameters(seed: int) -> tuple[np.uint64, np.uint64, np.uint64]:
    raw = np.random.PCG64(np.random.SeedSequence([seed, _TAG])).random_raw(3)
    a, b, c = (np.uint64(v) for v in np.asarray(raw, dtype=np.uint64))
    return a | np.uint64(1), b, c


class _Orders(NamedTuple):
    """Every bin's order of the bins (see the module docstring), as two ``(k, k)`` tables."""

    order: NDArray[np.unsignedinteger[Any]]  # order[i, t]: the t-th bin of bin i's order
    rank: NDArray[np.unsignedinteger[Any]]  # rank[j, i]: the position of bin j in bin i's order


def _orders(k: int, c: np.uint64, chunk_bytes: int) -> _Orders:
    """The bins' orders for parameter ``c``, built in blocks of rows of about ``chunk_bytes``."""
    dtype = np.uint8 if k <= 256 else np.uint16
    order = np.empty((k, k), dtype)
    rank = np.empty((k, k), dtype)
    step = max(1, chunk_bytes // (8 * k))
    source = np.arange(k, dtype=np.uint64)
    positions = np.arange(k, dtype=dtype)
    for start in range(0, k, step):
        stop = min(start + step, k)
        n = stop - start
        own = np.arange(start, stop, dtype=np.uint64)[:, None]
        by_priority = np.argsort(mix64(((own << np.uint64(32)) | source) ^ c), axis=1)
        block = order[start:stop]
        block[:, 0] = own[:, 0]
        block[:, 1:] = by_priority[by_priority != own].reshape(n, k - 1)
        inverse = np.empty((n, k), dtype)
        np.put_along_axis(inverse, block.astype(np.intp), np.broadcast_to(positions, (n, k)), 1)
        rank[:, start:stop] = inverse.T
    return _Orders(order, rank)


def _densify(bins: U64, orders: _Orders, chunk_bytes: int) -> None:
    """Fill the empty bins of the ``(docs, k)`` block ``bins`` in place (see the module
    docstring); rows without any non-empty bin stay empty.

    For a document with ``m`` non-empty bins, comparing the ranks of all of them costs ``m``
    per bin, probing an empty bin's order about ``k / m``: the first for small ``m``, the
    second above (then the first for the few bins still empty); see ``_SMALL``."""
    k = bins.shape[1]
    empty = bins == _EMPTY
    full_count = k - empty.sum(axis=1)
    small = (full_count > 0) & (full_count <= _SMALL * np.sqrt(k))
    for m in np.unique(full_count[small]).tolist():
        docs = np.flatnonzero(small & (full_count == m))
        step = max(1, chunk_bytes // (k * m))
        for start in range(0, docs.size, step):
            _fill_by_rank(bins, empty, docs[start : start + step], m, orders)
    large = (full_count > 0) & ~small & (full_count < k)
    cells = np.flatnonzero((empty & large[:, None]).reshape(-1))
    if cells.size == 0:
        return
    flat = bins.reshape(-1)
    values = np.empty(cells.size, np.uint64)
    todo = np.arange(cells.size)  # which cells are still empty, as positions in `cells`
    empty_bin = cells % k
    row_start = cells - empty_bin
    for t in range(1, min(_PROBES + 1, k)):
        probe = flat[row_start[todo] + orders.order[empty_bin[todo], t]]
        hit = probe != _EMPTY
        values[todo[hit]] = probe[hit]
        todo = todo[~hit]
        if todo.size == 0:
            break
    if todo.size:
        values[todo] = _least_rank_source(flat, empty.reshape(-1), cells[todo], orders.rank)
    flat[cells] = values


def _fill_by_rank(bins: U64, empty: NDArray[np.bool_], docs: I64, m: int, orders: _Orders) -> None:
    """Densify the rows ``docs`` of ``bins``, which have ``m`` non-empty bins each, by
    comparing the ranks of all ``m`` for every bin (``(docs, m, k)`` temporaries); a non-empty
    bin ranks first in its own order, so it keeps its value."""
    k = bins.shape[1]
    source = np.nonzero(~empty[docs])[1].reshape(docs.size, m)
    least = orders.rank[source].min(axis=1).astype(np.intp)  # (docs, k)
    least += np.arange(0, k * k, k)
    chosen = orders.order.reshape(-1)[least].astype(np.intp)  # where each bin's value is from
    chosen += np.arange(0, docs.size * k, k)[:, None]
    bins[docs] = bins[docs].reshape(-1)[chosen]


def _least_rank_source(
    flat: U64, empty: NDArray[np.bool_], cells: I64, rank: NDArray[np.unsignedinteger[Any]]
) -> U64:
    """For each empty cell (flat index into a ``(docs, k)`` block), the value of its
    document's non-empty bin of least rank, by comparing all of them."""
    k = rank.shape[0]
    full = np.flatnonzero(~empty)  # non-empty cells, sorted, so grouped by document
    empty_bin = cells % k
    row_start = cells - empty_bin
    begin = np.searchsorted(full, row_start)
    count = np.searchsorted(full, row_start + k) - begin
    pair_start = np.zeros(cells.size, np.int64)
    np.cumsum(count[:-1], out=pair_start[1:])
    cell_of_pair = np.repeat(np.arange(cells.size), count)
    # ragged arange: the document's non-empty cells, for each empty cell in turn
    source = full[np.arange(int(count.sum())) - np.repeat(pair_start - begin, count)]
    ranks = rank.reshape(-1)[(source - row_start[cell_of_pair]) * k + empty_bin[cell_of_pair]]
    least = np.minimum.reduceat(ranks, pair_start)
    chosen = source[ranks == least[cell_of_pair]]  # ranks differ: one per cell
    values: U64 = flat[chosen]
    return values


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
    result. Raises ValueError for ``num_perm`` outside ``[1, MAX_BINS]`` or offsets that do not fit
    ``hashes``.
    """
    if not 1 <= num_perm <= MAX_BINS:
        raise ValueError(f"num_perm must be in [1, {MAX_BINS}], not {num_perm}")
    hashes, offsets = check_shingle_sets(hashes, offsets)
    k = num_perm
    n_docs = offsets.size - 1
    a, b, c = _parameters(seed)
    orders = _orders(k, c, chunk_bytes)
    out = np.full((n_docs, k), 0xFFFFFFFF, dtype=np.uint32)
    rows = max(1, chunk_bytes // 8)  # shingles per chunk
    max_docs = max(1, chunk_bytes // (8 * k))
    buffer = np.empty(min(max_docs, n_docs) * k, np.uint64)
    d0 = 0
    while d0 < n_docs:  # blocks of documents
        d1 = int(np.searchsorted(offsets, offsets[d0] + rows, side="right")) - 1
        d1 = min(max(d1, d0 + 1), d0 + max_docs, n_docs)
        block = buffer[: (d1 - d0) * k].reshape(d1 - d0, k)
        block.fill(_EMPTY)
        for start in range(int(offsets[d0]), int(offsets[d1]), rows):
            _add_shingles(
                block, hashes, offsets, d0, start, min(start + rows, int(offsets[d1])), a, b
            )
        _densify(block, orders, chunk_bytes)
        has = offsets[d0 + 1 : d1 + 1] > offsets[d0:d1]
        out[d0:d1][has] = block[has]
        d0 = d1
    return out


def _add_shingles(
    block: U64,
    hashes: U64,
    offsets: I64,
    d0: int,
    start: int,
    stop: int,
    a: np.uint64,
    b: np.uint64,
) -> None:
    """Take the shingles ``hashes[start:stop]`` into the bins of ``block``, whose rows are the
    documents from ``d0`` on (see the module docstring)."""
    k = np.uint64(block.shape[1])
    first = int(np.searchsorted(offsets, start, side="right")) - 1
    last = int(np.searchsorted(offsets, stop, side="left"))  # documents [first, last)
    counts = np.minimum(offsets[first + 1 : last + 1], stop) - np.maximum(
        offsets[first:last], start
    )
    h = hashes[start:stop] * a
    h += b
    mix64(h)
    cell = h >> np.uint64(32)
    cell *= k
    cell >>= np.uint64(32)  # the bin
    cell += np.repeat(np.arange(first - d0, last - d0, dtype=np.uint64) * k, counts)
    h &= _LOW32  # the value
    np.minimum.at(block.reshape(-1), cell.view(np.int64), h)
