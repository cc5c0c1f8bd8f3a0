"""Packing arithmetic: any split of the stream into ranges, any partitioning of the documents,
reconstructs every document exactly, with pads only where the packing mode allows them."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.packing import count_split, fill_range, footprints, stream_length, stream_starts

PAD = 9999


@st.composite
def layouts(draw: st.DrawFn) -> tuple[list[list[int]], int, str, int]:
    parts = draw(
        st.lists(st.lists(st.integers(1, 40), min_size=0, max_size=8), min_size=1, max_size=5)
    )
    seq_len = draw(st.integers(1, 16))
    packing = draw(st.sampled_from(["greedy", "padded"]))
    shard_rows = draw(st.integers(1, 7))
    return parts, seq_len, packing, shard_rows


@settings(max_examples=300, deadline=None)
@given(layouts())
def test_ranges_reassemble_every_document(case: tuple[list[list[int]], int, str, int]) -> None:
    parts, seq_len, packing, shard_rows = case
    rng = np.random.default_rng(len(parts))
    doc_no, inputs = 0, []
    expected: dict[int, np.ndarray] = {}
    for lengths in parts:
        lens = np.array(lengths, np.int64)
        docs = np.arange(doc_no, doc_no + len(lens), dtype=np.int64)
        doc_no += len(lens)
        toks = rng.integers(0, 1000, int(lens.sum())).astype(np.int64)
        bounds = np.concatenate([[0], np.cumsum(lens)])
        for d, a, b in zip(docs, bounds[:-1], bounds[1:], strict=True):
            expected[int(d)] = toks[a:b]
        inputs.append((toks, lens, docs))
    streams = [stream_length(lens, seq_len, packing) for _, lens, _ in inputs]  # type: ignore[arg-type]
    bases = np.concatenate([[0], np.cumsum(streams)]).astype(np.int64)
    rows = math.ceil(int(bases[-1]) / seq_len)
    flat = np.full(rows * seq_len, PAD, np.int64)
    all_rows, all_segs, split = [], [], 0
    for first in range(0, rows, shard_rows):
        n = min(rows, first + shard_rows) - first
        out = np.full(n * seq_len, PAD, np.int64)
        for (toks, lens, docs), base in zip(inputs, bases[:-1], strict=True):
            r, s = fill_range(out, first * seq_len, toks, lens, docs, int(base), seq_len, packing)  # type: ignore[arg-type]
            assert ((r >= first) & (r < first + n)).all()
            all_rows.append(r)
            all_segs.append(s)
            lo, hi = first * seq_len, (first + n) * seq_len
            split += count_split(lens, int(base), lo, hi, seq_len, packing)  # type: ignore[arg-type]
        flat[first * seq_len : (first + n) * seq_len] = out
    seg_rows = np.concatenate(all_rows) if all_rows else np.empty(0, np.int64)
    segs = np.concatenate(all_segs) if all_segs else np.empty((0, 3), np.int64)
    assert (np.diff(seg_rows) >= 0).all(), "segments come in row order"
    # Walk rows: segments are contiguous from position 0; rebuild each document.
    got: dict[int, list[tuple[int, np.ndarray]]] = {}
    for row in range(rows):
        mine = segs[seg_rows == row]
        pos = 0
        for doc, off, length in mine:
            assert length > 0
            piece = flat[row * seq_len + pos : row * seq_len + pos + length]
            got.setdefault(int(doc), []).append((int(off), piece))
            pos += int(length)
        assert (flat[row * seq_len + pos : (row + 1) * seq_len] == PAD).all()
        if packing == "greedy" and row < rows - 1:
            assert pos == seq_len, "greedy rows are full except the last"
        if packing == "padded":
            assert len(mine) == 1 and (mine[0][1] % seq_len == 0)
    assert set(got) == set(expected)
    assert split == sum(1 for pieces in got.values() if len(pieces) > 1)
    for doc, pieces in got.items():
        offs = [o for o, _ in pieces]
        assert offs == sorted(offs) and offs[0] == 0
        np.testing.assert_array_equal(np.concatenate([p for _, p in pieces]), expected[doc])
    assert int((flat != PAD).sum()) == sum(len(v) for v in expected.values())


def test_footprints_and_starts() -> None:
    lens = np.array([3, 5, 8, 1])
    assert footprints(lens, 4, "greedy").tolist() == [3, 5, 8, 1]
    assert footprints(lens, 4, "padded").tolist() == [4, 8, 8, 4]
    assert stream_starts(lens, 4, "padded").tolist() == [0, 4, 12, 20]
    assert stream_length(lens, 4, "greedy") == 17
