"""StreamingDataset over real datasets: exactly once through real DataLoaders (0 and 2
workers, 1 and 2 ranks), resume and elastic resume, token batches, S3, errors."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from datastore import DatasetWriter, StorageConfig
from datastore.errors import InvalidInput, NotFound
from loaders.streaming import StatefulLoader, StreamingDataset

N = 997


@pytest.fixture(scope="module")
def table_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A table dataset of N rows in uneven shards, each row naming itself in ``idx``."""
    rng = np.random.default_rng(0)
    uri = str(tmp_path_factory.mktemp("stream") / "docs")
    with DatasetWriter(uri, shard_size=16 * 1024, row_group_bytes=4096) as w:
        for start in range(0, N, 50):
            idx = np.arange(start, min(N, start + 50))
            text = ["w" * int(rng.integers(1, 400)) for _ in idx]
            w.write(pa.table({"idx": idx, "text": text}))
    return uri


def _ids(batches: Any) -> list[int]:
    return [int(i) for b in batches for i in np.asarray(b["idx"])]


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("world", [1, 2])
def test_exactly_once_through_dataloader(
    table_uri: str, tmp_path: Path, workers: int, world: int
) -> None:
    seen: list[int] = []
    for rank in range(world):
        ds = StreamingDataset(
            table_uri,
            batch_size=8,
            seed=3,
            block=300,
            rank=rank,
            world=world,
            cache_dir=str(tmp_path),
            columns=["idx"],
        )
        assert len(ds) == N
        seen += _ids(StatefulLoader(ds, num_workers=workers))
    assert sorted(seen) == list(range(N))
    assert seen != sorted(seen), "shuffled"


def test_resume_at_another_world_size_and_worker_count(table_uri: str, tmp_path: Path) -> None:
    kw: dict[str, Any] = {"seed": 5, "block": 200, "cache_dir": str(tmp_path)}
    first = [StreamingDataset(table_uri, batch_size=6, rank=r, world=2, **kw) for r in range(2)]
    loaders = [StatefulLoader(ds, num_workers=2) for ds in first]
    seen: list[int] = []
    iters = [iter(ld) for ld in loaders]
    for _ in range(30):  # both ranks take 30 steps
        for it in iters:
            seen += _ids([next(it)])
    state = loaders[0].state_dict()
    assert state == loaders[1].state_dict() and state["position"] == 30 * 2 * 6
    rest: list[int] = []
    for r in range(3):  # resume on 3 ranks, 1 worker, batch 10
        ds = StreamingDataset(table_uri, batch_size=10, rank=r, world=3, **kw)
        ld = StatefulLoader(ds, num_workers=1)
        ld.load_state_dict(state)
        rest += _ids(ld)
    assert sorted(seen + rest) == list(range(N)), "no sample lost or repeated"
    # the same shape resumes in exactly the uninterrupted order (in-process iteration)
    whole = StreamingDataset(table_uri, batch_size=6, **kw)
    full = _ids(whole)
    again = StreamingDataset(table_uri, batch_size=6, **kw)
    head = again.batches()
    part = _ids([next(head) for _ in range(10)])
    resumed = StreamingDataset(table_uri, batch_size=6, **kw)
    resumed.load_state_dict(again.state_dict(steps=10))
    assert part + _ids(resumed) == full
    assert whole.epoch == 1 and _ids(whole) != full, "the next epoch has another order"


def test_bad_input(table_uri: str, tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        StreamingDataset(str(tmp_path / "nope"), batch_size=2)
    with pytest.raises(InvalidInput, match="no column"):
        StreamingDataset(table_uri, batch_size=2, columns=["nope"])
    ds = StreamingDataset(table_uri, batch_size=2, seed=1)
    with pytest.raises(InvalidInput, match="not a loader state"):
        ds.load_state_dict({"epoch": 0})
    other = StreamingDataset(table_uri, batch_size=2, seed=2).state_dict()
    with pytest.raises(InvalidInput, match="resume with the dataset version and seed"):
        ds.load_state_dict(other)
    assert ds[5]["idx"] == 5 and ds[-1]["idx"] == N - 1


def test_token_batches(tmp_path: Path) -> None:
    from pipelines.config import ExecutionConfig
    from pipelines.tokenize import TokenizeConfig, tokenize

    texts = ["short doc", "a somewhat longer document " * 5, "ünïcödé ✓", "x" * 300]
    with DatasetWriter(str(tmp_path / "docs")) as w:
        w.write(pa.table({"text": texts * 20}))
    cfg = TokenizeConfig(
        seq_len=64,
        shard_rows=16,
        chunk_rows=8,
        execution=ExecutionConfig(workers=1, processes=False, progress=False),
    )
    report = tokenize(str(tmp_path / "docs"), str(tmp_path / "tok"), cfg)
    ds = StreamingDataset(
        str(tmp_path / "tok"), batch_size=4, shuffle=False, cache_dir=str(tmp_path / "cache")
    )
    from datastore.packed import open_packed

    packed = open_packed(str(tmp_path / "tok"))
    rows = 0
    for batch in StatefulLoader(ds, num_workers=0):
        ids = batch["input_ids"].numpy()
        for i, row in enumerate(ids):
            r = rows + i
            np.testing.assert_array_equal(row, packed.row(r))
            cu = packed.cu_seqlens(r)
            np.testing.assert_array_equal(batch["cu_seqlens"][i], cu)
            pos = batch["position_ids"][i].numpy()
            for a, b in itertools.pairwise(cu):
                assert pos[a:b].tolist() == list(range(b - a)), "positions restart per document"
            labels = batch["labels"][i].numpy()
            assert (labels[cu[-1] :] == -100).all() and (labels[: cu[-1]] == row[: cu[-1]]).all()
        rows += len(ids)
    assert rows == report.rows == len(ds)
    # each shard decoded into the cache once: its token rows and its segment table
    assert ds.cache.fetches == 2 * len(ds.source.sizes)


def test_s3_table(s3_uri: str, s3_config: StorageConfig, tmp_path: Path) -> None:
    with DatasetWriter(s3_uri, config=s3_config, shard_size=4096, row_group_bytes=1024) as w:
        w.write(pa.table({"idx": np.arange(300), "text": ["t" * 50] * 300}))
    ds = StreamingDataset(s3_uri, batch_size=16, config=s3_config, cache_dir=str(tmp_path))
    assert sorted(_ids(StatefulLoader(ds, num_workers=2))) == list(range(300))
