"""MinHash building blocks of fuzzy dedup: word shingles, signatures and LSH band keys.

Everything here is a pure, vectorized function of numpy/pyarrow arrays (no I/O, no Dask), so
the fuzzy-dedup stage can call it per batch and per spill bucket. Results depend only on the
input and the parameters: not on the batch a document comes in, the process, the machine or
``PYTHONHASHSEED``. The definitions, which a re-implementation must follow to get equal hashes:

* **Words** are the maximal runs of word characters of the text lower-cased by Arrow's
  ``utf8_lower``. Word characters are the code points of Unicode categories L (letters),
  M (marks, so that e.g. Devanagari vowel signs stay inside their word) and N (numbers), by
  Python's :mod:`unicodedata`; everything else separates words. (Python 3.11 has Unicode 14:
  a character assigned by a later Unicode version may split words differently on a later
  Python, and Arrow's case mapping follows the pyarrow version.)
* **Word hash** (uint64) of the UTF-8 bytes ``w`` of a word of ``len`` bytes: up to 32 bytes,
  ``h = mix(B0 ^ len * K)`` then ``h = mix(h ^ Bi)`` for the following blocks, where ``Bi`` is
  the little-endian uint64 of the i-th 8-byte block, zero-padded; longer words
  ``xxh3_64(w)``. ``mix`` is the splitmix64 finalizer, a bijection, so words of at most 8 bytes
  never collide.
* **Shingle hash** of the words ``w_0 .. w_{m-1}``: ``mix(sum(w_k * M_k) ^ m * K)`` (mod
  2**64, ``M_k`` the outputs of splitmix64 from state ``0x5348494E474C45``, forced odd). A
  document gives its word ``ngram``-grams in order (with repeats); one with ``0 < m < ngram``
  words gives the single shingle of all its words, an empty one none.
* **Signature** of a document: for each permutation ``i``, ``min over shingles x of
  ((a_i * x + b_i) mod 2**64) >> 32`` as uint32, with ``(a_i, b_i)`` the ``2i``-th and
  ``2i+1``-th raw outputs of ``numpy.random.PCG64(seed)`` (``a_i`` forced odd). Raw bit
  generator output is stable across numpy versions, unlike ``Generator`` methods, and a
  longer signature extends a shorter one (the first ``k`` permutations do not depend on
  ``num_perm``). That is the ``"minhash"`` algorithm of :func:`minhash_signatures`; its
  ``"oph"`` (one-permutation hashing, defined in :mod:`pipelines.stages.oph`) hashes each
  shingle once instead of ``num_perm`` times, for signatures of about the same accuracy.

LSH: two documents become candidates when one of their ``bands`` band keys (a hash of ``rows``
consecutive signature values) agree, which happens with probability
:func:`collision_probability` of their Jaccard similarity. A document with no words has the
all-``0xFFFFFFFF`` signature: the fuzzy stage must leave those rows out of the band table
(:func:`empty_signatures`), else all empty documents would collide with each other.
"""

from __future__ import annotations

import functools
import unicodedata
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash
from numpy.typing import NDArray

from pipelines.stages._hashing import check_shingle_sets, mix64
from pipelines.stages._tables import cached_table
from pipelines.stages.oph import DEFAULT_CHUNK_BYTES as OPH_CHUNK_BYTES
from pipelines.stages.oph import oph_signatures

__all__ = [
    "Algorithm",
    "band_keys",
    "collision_probability",
    "empty_signatures",
    "lsh_threshold",
    "minhash_signatures",
    "shingle_hashes",
]

U64 = NDArray[np.uint64]
I64 = NDArray[np.int64]
#: The signature algorithms :func:`minhash_signatures` knows.
Algorithm = Literal["minhash", "oph"]

MiB = 1024 * 1024
_ALL_ONES = np.uint64(0xFFFFFFFFFFFFFFFF)
_K = np.uint64(0x9E3779B97F4A7C15)  # 2**64 / golden ratio; salts lengths and bands
_NGRAM_STATE = 0x5348494E474C45  # splitmix64 state of the n-gram multipliers
_LONG_WORD = 32  # bytes; longer words are hashed with xxh3_64, one call each (they are rare)
#: Rows of the largest temporary of classic MinHash are sized to this by default;
#: the fastest size measured (1 MiB chunks are ~30% slower, 16 MiB ones no faster).
DEFAULT_CHUNK_BYTES = 4 * MiB
#: Texts are tokenized in groups of about this many bytes (a longer document is one group).
DEFAULT_GROUP_BYTES = 1 * MiB


def _splitmix64(state: int) -> tuple[int, int]:
    """One step of splitmix64 on Python ints: (next state, output)."""
    state = (state + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return state, z ^ (z >> 31)


def _constants(count: int, seed: int) -> U64:
    """``count`` fixed odd uint64 constants (the n-gram multipliers ``M_k``)."""
    out = []
    state = seed
    for _ in range(count):
        state, z = _splitmix64(state)
        out.append(z | 1)
    return np.array(out, dtype=np.uint64)


@functools.cache
def _word_char_table() -> NDArray[np.bool_]:
    """Which code points are word characters (Unicode categories L, M, N); 1.1 MB, built once
    per machine (see :mod:`pipelines.stages._tables`). The 128 ASCII entries double as the
    per-byte table."""

    def build() -> NDArray[np.bool_]:
        cat = unicodedata.category
        return np.fromiter(
            (cat(chr(c))[0] in "LMN" for c in range(0x110000)), dtype=np.bool_, count=0x110000
        )

    return cached_table("word-chars", 1, build).astype(np.bool_, copy=False)


def _string_chunks(texts: pa.Array | pa.ChunkedArray) -> list[pa.Array]:
    """The chunks of a string array as ``string``/``large_string`` arrays without nulls (a null
    text is treated as empty). Raises TypeError for other types."""
    if isinstance(texts, pa.ChunkedArray):
        chunks = list(texts.chunks)
    elif isinstance(texts, pa.Array):
        chunks = [texts]
    else:
        raise TypeError(f"texts must be a pyarrow string Array or ChunkedArray, not {type(texts)}")
    out = []
    for chunk in chunks:
        if pa.types.is_string_view(chunk.type):
            chunk = chunk.cast(pa.large_string())
        if not (pa.types.is_string(chunk.type) or pa.types.is_large_string(chunk.type)):
            raise TypeError(f"texts must be strings, not {chunk.type}")
        if chunk.null_count:
            chunk = pc.fill_null(chunk, "")
        out.append(chunk)
    return out


def _offsets_and_data(arr: pa.Array) -> tuple[I64, NDArray[np.uint8]]:
    """Absolute int64 offsets (``len(arr) + 1``) into the UTF-8 data buffer, and that buffer."""
    _, obuf, dbuf = arr.buffers()
    odt = np.int32 if pa.types.is_string(arr.type) else np.int64
    offsets = np.frombuffer(obuf, dtype=odt)[arr.offset : arr.offset + len(arr) + 1]
    data = np.frombuffer(dbuf, dtype=np.uint8) if dbuf is not None else np.zeros(0, np.uint8)
    return offsets.astype(np.int64), data


def _doc_groups(offsets: I64, group_bytes: int) -> list[tuple[int, int]]:
    """Split documents ``[0, n)`` into consecutive ranges of about ``group_bytes`` text bytes
    (at least one document each)."""
    n = len(offsets) - 1
    groups = []
    i = 0
    while i < n:
        j = int(np.searchsorted(offsets, offsets[i] + group_bytes, side="right")) - 1
        j = min(max(j, i + 1), n)
        groups.append((i, j))
        i = j
    return groups


def _word_bounds(data: NDArray[np.uint8], doc_offsets: I64) -> tuple[I64, I64]:
    """Start and end byte positions of every word in ``data`` (one group of documents, with
    ``doc_offsets`` relative to ``data``); a word never spans two documents."""
    table = _word_char_table()
    byte_table = table[:256].copy()
    byte_table[128:] = False  # bytes of multi-byte characters are classified below
    word = byte_table[data]
    high = np.flatnonzero(data >= 0x80)
    if high.size:
        lead = data[high] >= 0xC0
        lead_pos = high[lead]
        b0 = data[lead_pos].astype(np.uint32)
        c1, c2, c3 = (
            data.take(lead_pos + k, mode="clip").astype(np.uint32) & 0x3F for k in (1, 2, 3)
        )
        cp = np.where(
            b0 >= 0xF0,
            ((b0 & 0x07) << 18) | (c1 << 12) | (c2 << 6) | c3,
            np.where(b0 >= 0xE0, ((b0 & 0x0F) << 12) | (c1 << 6) | c2, ((b0 & 0x1F) << 6) | c1),
        )
        is_word = table[np.minimum(cp, 0x10FFFF)]
        rank = np.cumsum(lead) - 1  # which lead byte each high byte belongs to
        # a stray continuation byte before any lead byte (invalid UTF-8) separates words
        word[high] = (
            np.where(rank >= 0, is_word[np.maximum(rank, 0)], False) if lead.any() else False
        )
    n = data.size
    prev = np.empty(n, np.bool_)
    nxt = np.empty(n, np.bool_)
    if n:
        prev[0] = False
        prev[1:] = word[:-1]
        nxt[-1] = False
        nxt[:-1] = word[1:]
        inner = doc_offsets[1:-1]
        inner = inner[(inner > 0) & (inner < n)]
        prev[inner] = False
        nxt[inner - 1] = False
    starts = np.flatnonzero(word & ~prev)
    ends = np.flatnonzero(word & ~nxt) + 1
    return starts.astype(np.int64), ends.astype(np.int64)


def _byte_mask(nbytes: I64) -> U64:
    """Masks keeping the low ``min(nbytes, 8)`` bytes of a uint64."""
    bits = np.minimum(nbytes, 8).astype(np.uint64) * np.uint64(8)
    partial = (np.uint64(1) << (bits & np.uint64(63))) - np.uint64(1)
    return np.where(bits >= 64, _ALL_ONES, partial)


def _word_hashes(data: NDArray[np.uint8], starts: I64, ends: I64) -> U64:
    """The word hash (see the module docstring) of every word ``data[starts[i]:ends[i]]``."""
    n = data.size
    padded = np.zeros(n + 8, np.uint8)
    padded[:n] = data
    # unaligned little-endian uint64 loads at any byte position: a view with a 1-byte stride
    blocks = np.ndarray((n + 1,), dtype="<u8", buffer=padded, strides=(1,))
    lens = ends - starts
    h = blocks[starts].astype(np.uint64)
    h &= _byte_mask(lens)
    h ^= lens.astype(np.uint64) * _K
    mix64(h)
    sub = np.flatnonzero(lens > 8)
    k = 1
    while sub.size and 8 * k < _LONG_WORD:
        rest = lens[sub] - 8 * k
        block = blocks[starts[sub] + 8 * k].astype(np.uint64)
        block &= _byte_mask(rest)
        block ^= h[sub]
        h[sub] = mix64(block)
        sub = sub[rest > 8]
        k += 1
    if sub.size:
        long_words = np.flatnonzero(lens > _LONG_WORD)
        view = padded.data
        h[long_words] = np.array(
            [
                xxhash.xxh3_64_intdigest(view[s:e])
                for s, e in zip(starts[long_words].tolist(), ends[long_words].tolist(), strict=True)
            ],
            dtype=np.uint64,
        )
    return h


def _ngram_hashes(words: U64, word_offsets: I64, ngram: int) -> tuple[U64, I64]:
    """Shingle hashes (see the module docstring) of one group of documents whose word hashes
    are ``words[word_offsets[d]:word_offsets[d + 1]]``; returns (hashes, counts per doc)."""
    mult = _constants(ngram, _NGRAM_STATE)
    n_words = words.size
    counts = np.diff(word_offsets)
    short = np.flatnonzero((counts > 0) & (counts < ngram))
    acc = np.zeros(n_words, np.uint64)
    valid = np.zeros(n_words, np.bool_)
    if n_words >= ngram:
        full = n_words - ngram + 1
        head = acc[:full]
        np.multiply(words[:full], mult[0], out=head)
        for k in range(1, ngram):
            head += words[k : k + full] * mult[k]
        head ^= np.uint64((ngram * int(_K)) & 0xFFFFFFFFFFFFFFFF)
        # an n-gram is valid when it ends inside the document it starts in
        doc_end = np.repeat(word_offsets[1:], counts)[:full]
        valid[:full] = np.arange(ngram, full + ngram) <= doc_end
    if short.size:
        first = word_offsets[short]
        m = counts[short]
        sacc = np.zeros(short.size, np.uint64)
        for k in range(ngram - 1):
            take = m > k
            sacc[take] += words[first[take] + k] * mult[k]
        sacc ^= m.astype(np.uint64) * _K
        acc[first] = sacc
        valid[first] = True
    shingle_counts = np.where(counts >= ngram, counts - ngram + 1, np.minimum(counts, 1))
    return mix64(acc[valid]), shingle_counts.astype(np.int64)


def shingle_hashes(
    texts: pa.Array | pa.ChunkedArray, ngram: int, *, group_bytes: int = DEFAULT_GROUP_BYTES
) -> tuple[U64, I64]:
    """The uint64 hashes of each document's word ``ngram``-grams (see the module docstring).

    Returns ``(hashes, offsets)``: document ``d``'s shingles are
    ``hashes[offsets[d]:offsets[d + 1]]`` in text order, repeats included; ``offsets`` is int64
    of length ``len(texts) + 1``. Null texts count as empty. Work happens in groups of about
    ``group_bytes`` bytes of text (which changes the speed, never the result), so temporaries
    stay within about 10x that for English text, 40x at worst (one-letter words, or only
    multi-byte characters), or as much times the longest document. Raises TypeError for
    non-string arrays and ValueError for ``ngram < 1``.
    """
    if ngram < 1:
        raise ValueError(f"ngram must be at least 1, not {ngram}")
    parts: list[U64] = []
    counts: list[I64] = []
    for chunk in _string_chunks(texts):
        if len(chunk) == 0:
            continue
        offsets, data = _offsets_and_data(pc.utf8_lower(chunk))
        for i, j in _doc_groups(offsets, group_bytes):
            base = int(offsets[i])
            group = data[base : int(offsets[j])]
            doc_offsets = offsets[i : j + 1] - base
            starts, ends = _word_bounds(group, doc_offsets)
            words = _word_hashes(group, starts, ends)
            word_offsets = np.searchsorted(starts, doc_offsets).astype(np.int64)
            hashes, group_counts = _ngram_hashes(words, word_offsets, ngram)
            parts.append(hashes)
            counts.append(group_counts)
    out_offsets = np.zeros(sum(c.size for c in counts) + 1, np.int64)
    if counts:
        np.cumsum(np.concatenate(counts), out=out_offsets[1:])
    flat = np.concatenate(parts) if parts else np.zeros(0, np.uint64)
    return flat, out_offsets


def _permutations(num_perm: int, seed: int) -> tuple[U64, U64]:
    """The ``(a, b)`` of each permutation (see the module docstring)."""
    raw = np.random.PCG64(seed).random_raw(2 * num_perm)
    raw = np.asarray(raw, dtype=np.uint64).reshape(num_perm, 2)
    return raw[:, 0] | np.uint64(1), raw[:, 1].copy()


def minhash_signatures(
    hashes: U64,
    offsets: I64,
    num_perm: int,
    seed: int,
    *,
    algorithm: Algorithm = "minhash",
    chunk_bytes: int | None = None,
) -> NDArray[np.uint32]:
    """Signatures, shape ``(n_docs, num_perm)`` uint32, of the shingle sets
    ``hashes[offsets[d]:offsets[d + 1]]`` (as from :func:`shingle_hashes`), by ``algorithm``:
    ``"minhash"`` (see the module docstring) or ``"oph"``, one-permutation hashing with optimal
    densification (:mod:`pipelines.stages.oph`), which hashes each shingle once instead of
    ``num_perm`` times and is about as accurate; the two give different signatures.

    uint32 values halve the memory and spill size of uint64 ones at no cost in accuracy that
    matters: two different minima agree by chance with probability 2**-32. A document with no
    shingles gets the all-``0xFFFFFFFF`` signature (see :func:`empty_signatures`).

    ``chunk_bytes`` bounds the largest temporaries (None: each algorithm's tested default) and
    changes the speed, never the result. Raises ValueError for an unknown ``algorithm``,
    ``num_perm < 1`` (``"oph"``: or above ``MAX_BINS`` = 4096) or offsets that do not fit
    ``hashes``.
    """
    try:
        compute, default_chunk_bytes = _ALGORITHMS[algorithm]
    except KeyError:
        raise ValueError(
            f"unknown signature algorithm {algorithm!r}; expected one of {', '.join(_ALGORITHMS)}"
        ) from None
    return compute(hashes, offsets, num_perm, seed, chunk_bytes=chunk_bytes or default_chunk_bytes)


def _classic_signatures(
    hashes: U64, offsets: I64, num_perm: int, seed: int, *, chunk_bytes: int
) -> NDArray[np.uint32]:
    """MinHash: ``num_perm`` passes over the shingles. Shingles are processed in chunks whose
    ``(num_perm, rows)`` uint64 temporary holds at most ``chunk_bytes`` (or one row); documents
    spanning chunks are merged with ``np.minimum``."""
    if num_perm < 1:
        raise ValueError(f"num_perm must be at least 1, not {num_perm}")
    hashes, offsets = check_shingle_sets(hashes, offsets)
    n_docs = offsets.size - 1
    a, b = _permutations(num_perm, seed)
    a_col, b_col = a[:, None], b[:, None]
    out = np.full((n_docs, num_perm), 0xFFFFFFFF, dtype=np.uint32)
    rows = max(1, chunk_bytes // (8 * num_perm))
    buffer = np.empty(num_perm * min(rows, max(hashes.size, 1)), np.uint64)
    for start in range(0, hashes.size, rows):
        stop = min(start + rows, hashes.size)
        # (a * x + b) mod 2**64 for every permutation and shingle; the >> 32 is applied after
        # the min, which gives the same result because the shift is monotone.
        block = buffer[: num_perm * (stop - start)].reshape(num_perm, stop - start)
        np.multiply(a_col, hashes[None, start:stop], out=block)
        block += b_col
        first = int(np.searchsorted(offsets, start, side="right")) - 1
        last = int(np.searchsorted(offsets, stop, side="left"))  # docs [first, last) overlap
        seg_start = np.maximum(offsets[first:last], start) - start
        seg_stop = np.minimum(offsets[first + 1 : last + 1], stop) - start
        keep = seg_stop > seg_start
        docs = np.arange(first, last)[keep]
        mins = np.minimum.reduceat(block, seg_start[keep], axis=1)
        mins >>= np.uint64(32)
        mins32 = mins.T.astype(np.uint32)
        out[docs] = np.minimum(out[docs], mins32)
    return out


#: Each algorithm's function and default ``chunk_bytes`` (the fastest measured).
_ALGORITHMS = {
    "minhash": (_classic_signatures, DEFAULT_CHUNK_BYTES),
    "oph": (oph_signatures, OPH_CHUNK_BYTES),
}


def empty_signatures(signatures: NDArray[np.uint32]) -> NDArray[np.bool_]:
    """Which rows are signatures of documents without shingles (all ``0xFFFFFFFF``); leave
    them out of LSH so that empty documents never match (a non-empty document gets this
    signature with probability 2**-(32 * num_perm))."""
    sig = np.asarray(signatures)
    return np.asarray(np.all(sig == np.iinfo(sig.dtype).max, axis=1), dtype=np.bool_)


def band_keys(signatures: NDArray[np.uint32], bands: int, rows: int) -> U64:
    """The LSH key of each band, shape ``(n_docs, bands)`` uint64: a hash of the band's ``rows``
    signature values ``signatures[:, j*rows:(j+1)*rows]`` and of ``j``, so that keys of
    different bands differ too. Uses the first ``bands * rows`` permutations; raises
    ValueError when the signatures are shorter. Skip :func:`empty_signatures` rows."""
    sig = np.asarray(signatures)
    if sig.ndim != 2:
        raise ValueError(f"signatures must be 2-D (n_docs, num_perm), not shape {sig.shape}")
    if bands < 1 or rows < 1:
        raise ValueError(f"bands and rows must be at least 1, not {bands} and {rows}")
    if sig.shape[1] < bands * rows:
        raise ValueError(
            f"signatures have {sig.shape[1]} permutations, fewer than bands * rows = "
            f"{bands * rows}; compute them with num_perm >= {bands * rows}"
        )
    n = sig.shape[0]
    cube = sig[:, : bands * rows].reshape(n, bands, rows)
    salt = mix64(np.arange(bands, dtype=np.uint64) * _K + _K)
    keys = np.empty((n, bands), np.uint64)
    keys[:] = salt
    for k in range(rows):
        keys ^= cube[:, :, k].astype(np.uint64)
        mix64(keys)
    return keys


def lsh_threshold(bands: int, rows: int) -> float:
    """The Jaccard similarity where LSH's S-curve is steepest, about ``(1/bands)**(1/rows)``:
    pairs well above it are nearly always candidates, pairs well below nearly never."""
    return float((1.0 / bands) ** (1.0 / rows))


def collision_probability(j: float, bands: int, rows: int) -> float:
    """Probability that two documents of Jaccard similarity ``j`` share at least one band key:
    ``1 - (1 - j**rows)**bands``."""
    return float(1.0 - (1.0 - j**rows) ** bands)
