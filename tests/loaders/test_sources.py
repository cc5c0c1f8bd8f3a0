"""Token batch assembly (``loaders.sources``) against a per-row reference, on both ways of
computing position ids (few documents per row, many short ones), merged parts and subsets of
the outputs."""

from __future__ import annotations

import numpy as np
import pytest

from loaders.sources import IGNORE, TOKEN_OUTPUTS, TokenRows, assemble


def _rows(rng: np.random.Generator, n: int, seq_len: int, docs: int) -> list[np.ndarray]:
    """Random document lengths per row: up to ``docs`` pieces, some rows padded."""
    out = []
    for _ in range(n):
        k = int(rng.integers(1, docs + 1))
        cuts = np.sort(rng.choice(np.arange(1, seq_len), size=k - 1, replace=False))
        lens = np.diff(np.concatenate([[0], cuts, [seq_len]]))
        if rng.random() < 0.3:  # padded row: drop part of the last document
            lens[-1] = int(rng.integers(0, lens[-1]))
            lens = lens[lens > 0] if lens[-1] == 0 else lens
        out.append(lens.astype(np.int64))
    return out


def _reference(ids: np.ndarray, pieces: list[np.ndarray], seq_len: int) -> dict[str, np.ndarray]:
    n = len(pieces)
    pos = np.zeros((n, seq_len), np.int64)
    labels = ids.astype(np.int64).copy()
    segs: list[int] = []
    for r, p in enumerate(pieces):
        col = 0
        for length in p.tolist():
            pos[r, col : col + length] = np.arange(length)
            col += length
        labels[r, col:] = IGNORE
        segs += p.tolist() + ([seq_len - col] if col < seq_len else [])
    return {
        "input_ids": ids.astype(np.int64),
        "labels": labels,
        "position_ids": pos,
        "cu_seqlens": np.concatenate([[0], np.cumsum(segs)]).astype(np.int32),
        "seq_lens": np.array([int(p.sum()) for p in pieces], np.int64),
    }


@pytest.mark.parametrize("docs", [1, 3, 40])  # 40: many short documents, the vectorized path
@pytest.mark.parametrize("tensors", [False, True])
def test_assembly_matches_reference(docs: int, tensors: bool) -> None:
    rng = np.random.default_rng(docs)
    n, seq_len = 12, 64
    shard = rng.integers(0, 60000, (50, seq_len)).astype(np.uint16)
    rows = rng.choice(50, n, replace=False)
    pieces = _rows(rng, n, seq_len, docs)
    mine = np.arange(n)
    batch = TokenRows(seq_len, n, [(mine[::2], shard, rows[::2]), (mine[1::2], shard, rows[1::2])])
    batch.pieces = pieces
    got = assemble([batch, batch], TOKEN_OUTPUTS, tensors)  # two batches, one buffer
    want = _reference(shard[rows], pieces, seq_len)
    for out in got:
        assert set(out) == set(TOKEN_OUTPUTS)
        for key, value in want.items():
            arr = out[key].numpy() if tensors else out[key]
            assert arr.dtype == value.dtype, key
            np.testing.assert_array_equal(arr, value, err_msg=key)
    if tensors:  # one storage for the whole group: one shared-memory block per hand-off
        storages = {t.untyped_storage().data_ptr() for o in got for t in o.values()}
        assert len(storages) == 1


def test_merge_places_parts_at_their_rows() -> None:
    """A mixture batch: rows from two datasets interleaved; boundaries follow the rows."""
    rng = np.random.default_rng(7)
    seq_len = 32
    a = rng.integers(0, 100, (10, seq_len)).astype(np.uint16)
    b = rng.integers(100, 200, (10, seq_len)).astype(np.uint16)
    where_a, where_b = np.array([0, 3, 4]), np.array([1, 2, 5])
    pa_, pb_ = _rows(rng, 3, seq_len, 3), _rows(rng, 3, seq_len, 3)
    part_a = TokenRows(seq_len, 3, [(np.arange(3), a, np.array([1, 2, 3]))], pa_)
    part_b = TokenRows(seq_len, 3, [(np.arange(3), b, np.array([4, 5, 6]))], pb_)
    merged = TokenRows.merge([(where_a, part_a), (where_b, part_b)], 6)
    out = assemble([merged], TOKEN_OUTPUTS, tensors=False)[0]
    ids = np.empty((6, seq_len), np.uint16)
    ids[where_a], ids[where_b] = a[[1, 2, 3]], b[[4, 5, 6]]
    pieces: list[np.ndarray] = [np.empty(0)] * 6
    for w, p in zip([*where_a, *where_b], [*pa_, *pb_], strict=True):
        pieces[int(w)] = p
    want = _reference(ids, pieces, seq_len)
    for key, value in want.items():
        np.testing.assert_array_equal(out[key], value, err_msg=key)


@pytest.mark.parametrize("outputs", [("input_ids",), ("labels",), ("position_ids", "seq_lens")])
def test_output_subsets(outputs: tuple[str, ...]) -> None:
    rng = np.random.default_rng(3)
    seq_len = 16
    shard = rng.integers(0, 50, (8, seq_len)).astype(np.uint16)
    pieces = _rows(rng, 4, seq_len, 2)
    batch = TokenRows(seq_len, 4, [(np.arange(4), shard, np.arange(4))], pieces)
    out = assemble([batch], outputs, tensors=False)[0]
    assert tuple(out) == outputs
    want = _reference(shard[:4], pieces, seq_len)
    for key in outputs:
        np.testing.assert_array_equal(out[key], want[key], err_msg=key)
