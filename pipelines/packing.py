"""Sequence packing as arithmetic on one virtual token stream (pure functions, no I/O).

Every document (its tokens plus EOS) has a start in a global *stream* of positions; row ``r`` of
the output is stream positions ``[r * seq_len, (r + 1) * seq_len)``. ``greedy`` packing lays
documents end to end, so a document may continue in the next row and only the very last row is
padded; ``padded`` packing starts every document on a new row (``ceil(n / seq_len)`` rows, the
last padded). Partitions tokenized in parallel only need their own stream length for the
driver to place them (a prefix sum), and any range of rows (one shard object) can then be
filled from the partitions that overlap it, on any worker, in any order, with the same bytes.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

__all__ = [
    "PACKINGS",
    "Packing",
    "count_split",
    "fill_range",
    "footprints",
    "stream_length",
    "stream_starts",
]

Packing = Literal["greedy", "padded"]
PACKINGS: tuple[Packing, ...] = ("greedy", "padded")


def footprints(lengths: np.ndarray, seq_len: int, packing: Packing) -> np.ndarray:
    """Stream positions each document occupies (its length, or whole rows when padded)."""
    lengths = np.asarray(lengths, np.int64)
    if packing == "greedy":
        return lengths
    return -(-lengths // seq_len) * seq_len


def stream_starts(lengths: np.ndarray, seq_len: int, packing: Packing) -> np.ndarray:
    """Each document's first stream position, relative to its partition's start."""
    foot = footprints(lengths, seq_len, packing)
    starts = np.zeros(len(foot), np.int64)
    np.cumsum(foot[:-1], out=starts[1:])
    return starts


def stream_length(lengths: np.ndarray, seq_len: int, packing: Packing) -> int:
    """Stream positions a partition of documents with ``lengths`` occupies."""
    return int(footprints(lengths, seq_len, packing).sum())


def fill_range(
    out: np.ndarray,
    lo: int,
    tokens: np.ndarray,
    lengths: np.ndarray,
    docs: np.ndarray,
    base: int,
    seq_len: int,
    packing: Packing,
) -> tuple[np.ndarray, np.ndarray]:
    """Copy one partition's part of stream range ``[lo, lo + out.size)`` into ``out`` (flat,
    pre-filled with the pad id) and return its segments there.

    ``tokens`` are the partition's documents back to back (EOS included), ``lengths`` their
    lengths, ``docs`` their row numbers in the source, ``base`` the partition's first stream
    position. Returns ``(rows, segments)``: the global row of each segment and an ``(k, 3)``
    int64 array of ``[doc, offset in doc, length]``, ordered by row and position.
    """
    hi = lo + out.size
    lengths = np.asarray(lengths, np.int64)
    starts = base + stream_starts(lengths, seq_len, packing)
    ends = starts + lengths
    d0 = int(np.searchsorted(ends, lo, side="right"))
    d1 = int(np.searchsorted(starts, hi, side="left"))
    if d0 >= d1:
        return np.empty(0, np.int64), np.empty((0, 3), np.int64)
    tok_starts = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=tok_starts[1:])
    s, e = starts[d0:d1], ends[d0:d1]
    piece_s, piece_e = np.maximum(s, lo), np.minimum(e, hi)
    src = tok_starts[d0:d1] + (piece_s - s)
    if packing == "greedy":  # pieces are contiguous in both the stream and the tokens
        n = int(piece_e[-1] - piece_s[0])
        out[piece_s[0] - lo : piece_s[0] - lo + n] = tokens[src[0] : src[0] + n]
    else:
        for a, b, src_a in zip(piece_s - lo, piece_e - lo, src, strict=True):
            out[a:b] = tokens[src_a : src_a + (b - a)]

    first_row, last_row = piece_s // seq_len, (piece_e - 1) // seq_len
    per_doc = last_row - first_row + 1
    which = np.repeat(np.arange(d1 - d0), per_doc)
    seg_base = np.zeros(len(per_doc), np.int64)
    np.cumsum(per_doc[:-1], out=seg_base[1:])
    rows = first_row[which] + (np.arange(int(per_doc.sum())) - seg_base[which])
    seg_s = np.maximum(piece_s[which], rows * seq_len)
    seg_e = np.minimum(piece_e[which], (rows + 1) * seq_len)
    segments = np.stack(
        [np.asarray(docs, np.int64)[d0:d1][which], seg_s - s[which], seg_e - seg_s], axis=1
    )
    return rows, segments


def count_split(
    lengths: np.ndarray, base: int, lo: int, hi: int, seq_len: int, packing: Packing
) -> int:
    """Documents that start in stream range ``[lo, hi)`` and continue past their first row
    (each split document is counted once, by the range holding its start)."""
    lengths = np.asarray(lengths, np.int64)
    starts = base + stream_starts(lengths, seq_len, packing)
    mine = (starts >= lo) & (starts < hi)
    s, n = starts[mine], lengths[mine]
    return int(((s + n - 1) // seq_len > s // seq_len).sum())
