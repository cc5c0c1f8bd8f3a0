"""DALI pipelines on the CPU (device_id=None): the same batches, partitioning and resume as the
PyTorch path, in DALI's serial and parallel external-source modes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from datastore import DatasetWriter
from datastore.errors import InvalidInput
from loaders.dali import DaliLoader
from loaders.streaming import StatefulLoader, StreamingDataset

pytest.importorskip("nvidia.dali")


@pytest.fixture(scope="module")
def uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("dali") / "d")
    with DatasetWriter(path, shard_size=2048, row_group_bytes=512) as w:
        w.write(pa.table({"idx": np.arange(203), "x": np.arange(203) * 0.5, "s": ["t"] * 203}))
    return path


def _ids(batches: Any) -> list[int]:
    out = []
    for b in batches:
        idx = np.asarray(b["idx"])
        assert idx.ndim == 1, "the same shapes as the PyTorch path"
        out += [int(i) for i in idx]
    return out


@pytest.mark.parametrize("parallel", [False, True])
def test_same_batches_as_pytorch_and_exactly_once(uri: str, tmp_path: Path, parallel: bool) -> None:
    kw: dict[str, Any] = {"batch_size": 8, "seed": 2, "block": 64, "cache_dir": str(tmp_path)}
    kw["columns"] = ["idx", "x"]
    seen = []
    for rank in range(2):
        ds = StreamingDataset(uri, rank=rank, world=2, **kw)
        torch_ids = _ids(StatefulLoader(StreamingDataset(uri, rank=rank, world=2, **kw)))
        dali_ids = _ids(DaliLoader(ds, parallel=parallel, py_num_workers=2))
        assert dali_ids == torch_ids
        seen += dali_ids
    assert sorted(seen) == list(range(203))


def test_resume_and_errors(uri: str, tmp_path: Path) -> None:
    kw: dict[str, Any] = {"batch_size": 8, "seed": 2, "cache_dir": str(tmp_path)}
    kw["columns"] = ["idx"]
    loader = DaliLoader(StreamingDataset(uri, **kw))
    it = iter(loader)
    head = _ids([next(it) for _ in range(5)])
    state = loader.state_dict()
    rest_loader = DaliLoader(StreamingDataset(uri, **{**kw, "batch_size": 5}))
    rest_loader.load_state_dict(state)
    rest = _ids(rest_loader)
    assert sorted(head + rest) == list(range(203))
    with pytest.raises(InvalidInput, match="no numeric columns"):
        iter(DaliLoader(StreamingDataset(uri, batch_size=4, columns=["s"]))).__next__()


def _tokens(tmp_path: Path, shard_rows: int | None = None) -> str:
    from pipelines.config import ExecutionConfig
    from pipelines.tokenize import TokenizeConfig, tokenize

    with DatasetWriter(str(tmp_path / "docs")) as w:
        w.write(pa.table({"text": ["one document", "another, longer document " * 4] * 10}))
    cfg = TokenizeConfig(
        seq_len=32,
        shard_rows=shard_rows,
        chunk_rows=4 if shard_rows else None,
        execution=ExecutionConfig(workers=1, processes=False, progress=False),
    )
    tokenize(str(tmp_path / "docs"), str(tmp_path / "tok"), cfg)
    return str(tmp_path / "tok")


def test_token_rows_through_dali(tmp_path: Path) -> None:
    _tokens(tmp_path)
    kw: dict[str, Any] = {"batch_size": 4, "seed": 1, "cache_dir": str(tmp_path / "c")}
    torch_batches = list(StatefulLoader(StreamingDataset(str(tmp_path / "tok"), **kw)))
    dali_batches = list(DaliLoader(StreamingDataset(str(tmp_path / "tok"), **kw)))
    assert len(dali_batches) == len(torch_batches) > 1
    for d, t in zip(dali_batches, torch_batches, strict=True):
        for key in ("input_ids", "labels", "position_ids"):
            assert d[key].shape == t[key].shape
            assert np.array_equal(d[key].numpy(), t[key].numpy())


@pytest.mark.parametrize("world", [1, 2])
def test_numpy_reader_path_reads_the_same_rows_and_resumes(tmp_path: Path, world: int) -> None:
    """fn.readers.numpy (here on the CPU; device="gpu" uses GPUDirect Storage on a GPU host)
    over the node cache's shard files: each rank's rows equal the PyTorch path's, with an
    uneven last batch, and after a resume the rest of the epoch."""
    from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

    from loaders.dali import numpy_reader_pipeline

    tok = _tokens(tmp_path, shard_rows=8)

    def rows(ds: StreamingDataset) -> list[list[int]]:
        pipe, n = numpy_reader_pipeline(ds, device="cpu", device_id=None, num_threads=1)
        it = DALIGenericIterator(
            [pipe], ["input_ids"], size=n, last_batch_policy=LastBatchPolicy.PARTIAL
        )
        return [r.tolist() for out in it for r in out[0]["input_ids"]]

    for rank in range(world):
        kw: dict[str, Any] = {"batch_size": 5, "seed": 5, "rank": rank, "world": world}
        ds = StreamingDataset(tok, cache_dir=str(tmp_path / "c"), **kw)
        assert len(ds.source.sizes) > 2 and len(ds) % (5 * world)  # several shards, uneven
        want = [r.tolist() for b in ds.batches() for r in b["input_ids"]]
        assert rows(ds) == want
        fresh = ds.state_dict(steps=0)
        ds.load_state_dict(ds.state_dict(steps=2))
        assert rows(ds) == want[2 * 5 :]
        ds.load_state_dict(fresh)
        last = ds.plan().steps(rank) - 1  # a last batch shorter than the padding it needs
        ds.load_state_dict(ds.state_dict(steps=last))
        if world == 1:  # 36 rows: one left for the last batch, padded with 4
            assert len(want) - last * 5 == 1
        assert rows(ds) == want[last * 5 :]
    with pytest.raises(InvalidInput, match="use dali_pipeline"):
        numpy_reader_pipeline(StreamingDataset(str(tmp_path / "docs"), batch_size=2))
