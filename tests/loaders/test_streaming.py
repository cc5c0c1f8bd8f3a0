"""StreamingDataset over real datasets: exactly once through real DataLoaders (0 and 2
workers, 1 and 2 ranks), resume and elastic resume, token batches, S3, errors."""

from __future__ import annotations

import itertools
import warnings
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


@pytest.mark.parametrize("workers", [0, 2])
def test_token_batches(tmp_path: Path, workers: int) -> None:
    """Against the packed dataset row by row; with workers, runs of 3 batches per hand-off
    come back in order."""
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
    for batch in StatefulLoader(ds, num_workers=workers, transfer=3):
        ids = batch["input_ids"].numpy()
        want_lens: list[int] = []
        for i, row in enumerate(ids):
            r = rows + i
            np.testing.assert_array_equal(row, packed.row(r))
            cu = packed.cu_seqlens(r)
            want_lens += np.diff(cu).tolist() + ([64 - int(cu[-1])] if cu[-1] < 64 else [])
            assert int(batch["seq_lens"][i]) == int(cu[-1])
            pos = batch["position_ids"][i].numpy()
            for a, b in itertools.pairwise(cu):
                assert pos[a:b].tolist() == list(range(b - a)), "positions restart per document"
            labels = batch["labels"][i].numpy()
            assert (labels[cu[-1] :] == -100).all() and (labels[: cu[-1]] == row[: cu[-1]]).all()
        # flash-attention varlen form over the flattened batch, padding as its own segments
        assert batch["cu_seqlens"].tolist() == [0, *np.cumsum(want_lens).tolist()]
        assert batch["cu_seqlens"][-1] == ids.size
        rows += len(ids)
    assert rows == report.rows == len(ds)
    if not workers:  # each shard decoded into the cache once: token rows and segment table
        assert ds.cache.fetches == 2 * len(ds.source.sizes)
    lean = StreamingDataset(
        str(tmp_path / "tok"), batch_size=4, outputs=["input_ids"], cache_dir=str(tmp_path / "c")
    )
    assert set(next(iter(lean))) == {"input_ids"}
    with pytest.raises(InvalidInput, match="choose one or more of input_ids"):
        StreamingDataset(str(tmp_path / "tok"), batch_size=4, outputs=["attention"])
    with pytest.raises(InvalidInput, match="applies to token rows"):
        StreamingDataset(str(tmp_path / "docs"), batch_size=4, outputs=["input_ids"])


def test_s3_table(s3_uri: str, s3_config: StorageConfig, tmp_path: Path) -> None:
    with DatasetWriter(s3_uri, config=s3_config, shard_size=4096, row_group_bytes=1024) as w:
        w.write(pa.table({"idx": np.arange(300), "text": ["t" * 50] * 300}))
    ds = StreamingDataset(s3_uri, batch_size=16, config=s3_config, cache_dir=str(tmp_path))
    assert sorted(_ids(StatefulLoader(ds, num_workers=2))) == list(range(300))


def test_s3_prefetch_fetches_ahead_in_epoch_order_once(
    s3_uri: str, s3_config: StorageConfig, tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    texts = [rng.bytes(25).hex() for _ in range(300)]  # incompressible: several shards
    with DatasetWriter(s3_uri, config=s3_config, shard_size=2048, row_group_bytes=1024) as w:
        w.write(pa.table({"idx": np.arange(300), "text": texts}))
    ds = StreamingDataset(
        s3_uri,
        batch_size=8,
        shuffle=False,
        block=16,
        prefetch=2,
        config=s3_config,
        cache_dir=str(tmp_path / "a"),
    )
    shards = len(ds.source.sizes)
    assert shards >= 5
    batches = ds.batches()
    first = next(batches)
    assert ds._ahead is not None
    for f in list(ds._ahead.running):
        f.result()
    # the first batch needed shard 0; shards 1.. were fetched before anyone asked for them
    assert ds.cache.fetches >= 2 and first["idx"].tolist() == list(range(8))
    assert min(ds._ahead.submitted) <= 1 and len(ds._ahead.submitted) <= 3
    rest = [int(i) for b in batches for i in b["idx"]]
    assert first["idx"].tolist() + rest == list(range(300))
    assert ds.cache.fetches == shards, "every shard fetched once, prefetched or not"
    plain = StreamingDataset(
        s3_uri, batch_size=8, seed=3, prefetch=0, config=s3_config, cache_dir=str(tmp_path / "b")
    )
    ahead = StreamingDataset(
        s3_uri, batch_size=8, seed=3, prefetch=3, config=s3_config, cache_dir=str(tmp_path / "c")
    )
    assert _ids(plain.batches()) == _ids(ahead.batches())


def _gloo_rank(rank: int, world: int, init: str, uri: str, cache: str, out: str) -> None:
    import json

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        ds = StreamingDataset(uri, batch_size=5, seed=9, block=250, cache_dir=cache)
        assert (ds.rank, ds.world) == (rank, world), "rank and world come from torch.distributed"
        mine = _ids(StatefulLoader(ds, num_workers=2))
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, mine)
        if rank == 0:
            Path(out).write_text(json.dumps(gathered))
    finally:
        dist.destroy_process_group()


def test_real_two_process_gloo_run(table_uri: str, tmp_path: Path) -> None:
    import json

    import torch.multiprocessing as mp

    out = tmp_path / "ids.json"
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_gloo_rank, args=(2, init, table_uri, str(tmp_path / "c"), str(out)), nprocs=2)
    per_rank = json.loads(out.read_text())
    assert len(per_rank) == 2 and all(per_rank)
    assert sorted(per_rank[0] + per_rank[1]) == list(range(N))


def test_corrupt_cache_is_rebuilt_and_bad_sources_fail_clearly(tmp_path: Path) -> None:
    from datastore import open_dataset
    from datastore.errors import Corrupt

    uri = str(tmp_path / "d")
    with DatasetWriter(uri, shard_size=4096, row_group_bytes=1024) as w:
        w.write(pa.table({"idx": np.arange(200), "text": ["z" * 60] * 200}))
    cache = tmp_path / "cache"
    first = StreamingDataset(uri, batch_size=7, cache_dir=str(cache))
    assert sorted(_ids(first)) == list(range(200))
    victim = next(p for p in cache.rglob("*.arrow"))
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    again = StreamingDataset(uri, batch_size=7, cache_dir=str(cache))  # as a new process
    assert sorted(_ids(again)) == list(range(200))
    assert again.cache.rebuilt == 1 and again.cache.fetches == 1

    shards = open_dataset(uri).shards
    path = Path(uri) / shards[0].path
    raw = bytearray(path.read_bytes())
    raw[100] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(Corrupt, match=shards[0].path):
        _ids(StreamingDataset(uri, batch_size=7, cache_dir=str(tmp_path / "c2")))
    path.unlink()
    with pytest.raises(NotFound, match=shards[0].path):
        _ids(StreamingDataset(uri, batch_size=7, cache_dir=str(tmp_path / "c3")))


def test_mixture_is_deterministic_resumable_and_weighted(tmp_path: Path) -> None:
    web, code = str(tmp_path / "web"), str(tmp_path / "code")
    for uri, base, n in ((web, 0, 300), (code, 10_000, 90)):
        with DatasetWriter(uri, shard_size=2048, row_group_bytes=512) as w:
            w.write(pa.table({"idx": np.arange(base, base + n), "text": ["q" * 30] * n}))
    kw: dict[str, Any] = {"weights": [0.7, 0.3], "samples": 400, "block": 100, "seed": 1}
    kw["cache_dir"] = str(tmp_path / "c")
    full = _ids(StreamingDataset([web, code], batch_size=8, **kw))
    assert full == _ids(StreamingDataset([web, code], batch_size=8, **kw)), "deterministic"
    assert sum(i >= 10_000 for i in full) == 120, "30% of 400 from the code set"
    head_ds = StreamingDataset([web, code], batch_size=8, **kw)
    head = head_ds.batches()
    part = _ids([next(head) for _ in range(13)])
    rest = []
    for r in range(2):  # resume on two ranks with another batch size
        ds = StreamingDataset([web, code], batch_size=5, rank=r, world=2, **kw)
        ds.load_state_dict(head_ds.state_dict(steps=13))
        rest += _ids(ds)
    assert sorted(part + rest) == sorted(full) and part == full[: len(part)]
    with DatasetWriter(str(tmp_path / "other")) as w:
        w.write(pa.table({"idx": [1.5], "body": ["x"]}))
    with pytest.raises(InvalidInput, match=r"cannot mix .* their columns differ"):
        StreamingDataset([web, str(tmp_path / "other")], batch_size=2)


@pytest.mark.parametrize("workers", [0, 2])
def test_cache_limit_evicts_by_future_use_without_thrashing(tmp_path: Path, workers: int) -> None:
    """A cache of about a third of the dataset: every epoch still fetches each shard about
    once (bytes fetched per epoch close to the dataset's size), and the cache stays under its
    limit (plus the file just built)."""
    uri = str(tmp_path / "d")
    rng = np.random.default_rng(3)
    with DatasetWriter(uri, shard_size=4096, row_group_bytes=1024) as w:
        for start in range(0, 1200, 100):
            text = ["".join(rng.choice(list("abcdefgh"), 60)) for _ in range(100)]
            w.write(pa.table({"idx": np.arange(start, start + 100), "text": text}))
    probe = StreamingDataset(uri, batch_size=10, cache_dir=str(tmp_path / "probe"))
    assert sorted(_ids(probe)) == list(range(1200))
    sizes = [p.stat().st_size for p in (tmp_path / "probe").rglob("*.arrow")]
    whole, biggest = sum(sizes), max(sizes)
    assert len(sizes) >= 8
    limit = whole // 3
    rows_per_shard = int(np.median(probe.source.sizes))
    with pytest.warns(UserWarning, match=r"one shuffle block .* use block="):
        StreamingDataset(uri, batch_size=10, cache_dir=str(tmp_path / "w"), cache_limit=limit)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a block whose shards fit: no warning
        ds = StreamingDataset(
            uri,
            batch_size=10,
            block=2 * rows_per_shard,
            cache_dir=str(tmp_path / "c"),
            cache_limit=limit,
        )
    if workers:  # fetches happen in the workers: every sample once, the cache bounded
        loader = StatefulLoader(ds, num_workers=workers)
        for epoch in range(2):
            assert sorted(_ids(loader)) == list(range(1200)), f"epoch {epoch}"
            assert ds.cache.cached_bytes() <= limit + 2 * biggest
        return
    for epoch in range(2):
        before = ds.cache.bytes_fetched
        assert sorted(_ids(ds)) == list(range(1200)), f"epoch {epoch}"
        fetched = ds.cache.bytes_fetched - before
        assert fetched <= 1.35 * whole, (fetched, whole)
        assert ds.cache.cached_bytes() <= limit + biggest
    assert ds.cache.evicted > 0


def test_stalled_store_gives_a_clear_timeout(
    s3_uri: str, s3_config: StorageConfig, seaweedfs: Any, tmp_path: Path
) -> None:
    """A store that stops answering mid-epoch: the loader fails with an error naming the
    object after its bounded retries, instead of hanging."""
    import time

    from datastore.errors import Unreachable
    from datastore.s3 import drop_clients
    from tests.faultproxy import FaultProxy

    rng = np.random.default_rng(1)
    text = ["".join(rng.choice(list("stuvwxyz"), 50)) for _ in range(300)]
    with DatasetWriter(s3_uri, config=s3_config, shard_size=4096, row_group_bytes=1024) as w:
        w.write(pa.table({"idx": np.arange(300), "text": text}))
    with FaultProxy(("127.0.0.1", seaweedfs.ports["s3"])) as proxy:
        faulty = s3_config.replace(
            endpoint_url=proxy.url,
            read_timeout=0.5,
            connect_timeout=0.5,
            max_attempts=2,
            backoff_base=0.01,
            backoff_max=0.05,
        )
        ds = StreamingDataset(
            s3_uri,
            batch_size=16,
            shuffle=False,
            prefetch=0,  # the reader's own fetch meets the stall
            config=faulty,
            cache_dir=str(tmp_path),
        )
        assert len(ds.source.sizes) >= 3
        batches = ds.batches()
        next(batches)  # the first shard is fetched normally
        proxy.blackhole()  # then nothing answers
        drop_clients()  # pooled connections would still be open: as a fresh reader
        start = time.monotonic()
        with pytest.raises(Unreachable, match=r"s3://"):
            for _ in batches:
                pass
        assert time.monotonic() - start < 30


@pytest.mark.parametrize("workers", [0, 2])
def test_epochs_advance_once_and_states_are_strict(
    table_uri: str, tmp_path: Path, workers: int
) -> None:
    ds = StreamingDataset(table_uri, batch_size=50, seed=4, cache_dir=str(tmp_path / "c"))
    loader = StatefulLoader(ds, num_workers=workers)
    one, two = _ids(loader), _ids(loader)
    assert ds.epoch == 2 and sorted(one) == sorted(two) == list(range(N)) and one != two
    other_block = StreamingDataset(table_uri, batch_size=50, seed=4, block=10)
    with pytest.raises(InvalidInput, match="resume with the dataset version and seed"):
        other_block.load_state_dict(loader.state_dict())
    with pytest.raises(InvalidInput, match="apply to a mixture"):
        StreamingDataset(table_uri, batch_size=2, samples=10)
    with pytest.raises(InvalidInput, match="must be positive"):
        StreamingDataset(table_uri, batch_size=2, block=0)
    with pytest.raises(InvalidInput, match="in_order=True"):
        StatefulLoader(ds, in_order=False)


def test_padding_is_flagged_and_foreign_files_are_never_evicted(
    table_uri: str, tmp_path: Path
) -> None:
    mine = tmp_path / "keep.txt"
    mine.write_text("not the cache's")
    ds = StreamingDataset(
        table_uri,
        batch_size=64,
        world=3,
        rank=0,
        policy="pad",
        cache_dir=str(tmp_path),
        cache_limit=1,
    )
    flags = [b["is_padding"] for b in ds.batches()]
    steps = [
        StreamingDataset(table_uri, batch_size=64, world=3, rank=r, policy="pad").plan().steps(r)
        for r in range(3)
    ]
    assert len(set(steps)) == 1 and len(flags) == steps[0]
    assert any(f.any() for f in flags) or N % (3 * 64) == 0
    assert mine.read_text() == "not the cache's", "eviction touches only the cache's own files"


@pytest.mark.parametrize("workers", [0, 2])
def test_torchdata_stateful_dataloader_resumes_exactly(
    table_uri: str, tmp_path: Path, workers: int
) -> None:
    """Through torchdata's StatefulDataLoader (which keeps per-worker dataset states): the
    remaining batches after a resume are exactly those of an uninterrupted run."""
    from torchdata.stateful_dataloader import StatefulDataLoader

    def loader() -> tuple[StreamingDataset, Any]:
        ds = StreamingDataset(table_uri, batch_size=16, seed=9, cache_dir=str(tmp_path))
        return ds, StatefulDataLoader(ds, batch_size=None, num_workers=workers)

    _, full = loader()
    want = [b["idx"].tolist() for b in full]
    _, first = loader()
    it = iter(first)
    seen = [next(it)["idx"].tolist() for _ in range(5)]
    state = first.state_dict()
    del it
    _, second = loader()
    second.load_state_dict(state)
    it2 = iter(second)
    seen.append(next(it2)["idx"].tolist())  # saved again before every worker has yielded
    state2 = second.state_dict()
    del it2
    _, third = loader()
    third.load_state_dict(state2)
    rest = [b["idx"].tolist() for b in third]
    assert seen + rest == want
    if workers:  # a worker's state is refused at another worker count, with the fix
        ds, other = loader()
        other = StatefulDataLoader(ds, batch_size=None, num_workers=workers + 1)
        other.load_state_dict(state)
        with pytest.raises(Exception, match="StatefulLoader"):
            next(iter(other))


@pytest.mark.parametrize("keep", [False, True])
def test_worker_blocks_are_reused_only_after_release(tmp_path: Path, keep: bool) -> None:
    """Workers reuse their shared-memory blocks once the training loop has dropped a run's
    batches; a loop that keeps every batch (keep=True) must still see each one intact."""
    from pipelines.config import ExecutionConfig
    from pipelines.tokenize import TokenizeConfig, tokenize

    rng = np.random.default_rng(1)
    texts = [rng.bytes(int(n)).hex() for n in rng.integers(5, 120, 400)]
    with DatasetWriter(str(tmp_path / "docs")) as w:
        w.write(pa.table({"text": texts}))
    cfg = TokenizeConfig(
        seq_len=64,
        shard_rows=32,
        chunk_rows=8,
        execution=ExecutionConfig(workers=1, processes=False, progress=False),
    )
    tokenize(str(tmp_path / "docs"), str(tmp_path / "tok"), cfg)
    kw: dict[str, Any] = {"batch_size": 4, "seed": 2, "cache_dir": str(tmp_path / "c")}
    want = [
        {k: np.array(v, copy=True) for k, v in b.items()}
        for b in StreamingDataset(str(tmp_path / "tok"), **kw).batches()
    ]
    assert len(want) > 40
    loader = StatefulLoader(
        StreamingDataset(str(tmp_path / "tok"), **kw), num_workers=2, transfer=2, prefetch_factor=1
    )
    kept: list[dict[str, Any]] = []
    for i, batch in enumerate(loader):
        for key, value in want[i].items():
            np.testing.assert_array_equal(batch[key].numpy(), value, err_msg=f"{i} {key}")
        if keep:
            kept.append(batch)
    assert i + 1 == len(want)
    for i, batch in enumerate(kept):  # nothing overwritten while it was held
        for key, value in want[i].items():
            np.testing.assert_array_equal(batch[key].numpy(), value, err_msg=f"kept {i} {key}")
