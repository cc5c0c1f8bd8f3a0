"""End-to-end ingest on a real cluster: counts, dedup against planted duplicates, side tables,
explain, lineage, determinism, quarantine and max-errors, S3 in and out."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pytest

from datastore import StorageConfig, open_dataset, open_store
from datastore.dataset import TableDataset
from datastore.errors import InvalidInput
from pipelines import explain, ingest
from pipelines.config import IngestConfig
from tests.pipelines.conftest import fast_config, write_corpus


def _no_filters(config: IngestConfig, **fuzzy: Any) -> IngestConfig:
    return dataclasses.replace(
        config,
        filters=dataclasses.replace(config.filters, enabled=False),
        fuzzy_dedup=dataclasses.replace(config.fuzzy_dedup, **fuzzy),
    )


def _checksums(uri: str, storage: StorageConfig | None = None) -> list[tuple[str, str, int]]:
    ds = open_dataset(uri, config=storage)
    return [(s.path, s.checksum, s.rows) for s in ds.manifest.shards]


def test_dedup_finds_planted_duplicates(
    corpus: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    root, truth = corpus
    out = str(tmp_path / "out")
    report = ingest([str(root)], out, _no_filters(fast_config(), verify_jaccard=True))
    d = report.to_dict()
    for key in (
        "docs_in",
        "docs_out",
        "exact_duplicates",
        "fuzzy_duplicates",
        "quarantined",
        "output_uri",
        "output_version",
    ):
        assert key in d
    assert report.docs_in == truth["total"]
    assert report.quarantined == truth["bad"]
    ds = open_dataset(out)
    assert isinstance(ds, TableDataset)
    ids = set(ds.to_table(columns=["id"]).column("id").to_pylist())
    removed = open_dataset(f"{out}/_removed").to_table()
    reasons = dict(
        zip(removed.column("id").to_pylist(), removed.column("reason").to_pylist(), strict=True)
    )
    # every planted copy is gone and its original kept
    for copy, orig in truth["exact"].items():
        assert reasons.get(copy) == "exact_duplicate", copy
        assert orig in ids
    for copy, orig in truth["near"].items():
        assert reasons.get(copy) == "fuzzy_duplicate", copy
        assert orig in ids
    # the corpus has a few natural duplicates too (Debian copyright files); nothing else is lost
    assert report.docs_out == len(ids) == truth["total"] - len(removed)
    assert report.exact_duplicates >= len(truth["exact"])
    assert report.fuzzy_duplicates >= len(truth["near"])
    # explain: kept, removed with its survivor, unknown
    copy, orig = next(iter(truth["near"].items()))
    assert explain(out, orig)["status"] == "kept"
    why = explain(out, copy)
    assert why["status"] == "removed" and why["reason"] == "fuzzy_duplicate"
    assert why["detail"] == f"survivor {orig}" and why["value"] >= 0.8
    assert explain(out, "no-such-doc")["status"] == "not found"
    # quarantine: the malformed lines with their location
    q = open_dataset(f"{out}/_quarantine").to_table().to_pylist()
    assert len(q) == truth["bad"]
    assert all(r["reason"].startswith("malformed JSON") for r in q)
    text = (root / "part-0.jsonl").read_bytes()
    first = next(r for r in q if r["source_uri"].endswith("part-0.jsonl"))
    assert text[first["source_offset"] :].startswith(b'{"id": "broken"')
    # lineage in the manifest
    meta = ds.manifest.metadata["ingest"]
    assert meta["job_id"] == report.job_id
    assert {i["uri"].rsplit("/", 1)[1] for i in meta["inputs"]} == {
        "part-0.jsonl",
        "part-1.jsonl",
        "part-2.jsonl",
        "part-3.jsonl",
    }
    assert all(i["size"] > 0 and i["etag"] for i in meta["inputs"])
    assert meta["config"]["dedup"]["fuzzy"]["verify_jaccard"] is True
    assert len(meta["config_hash"]) == 64 and meta["shardyard_version"]
    assert set(meta["timings"]) >= {"plan", "prepare", "finalize", "total"}
    # the work directory is gone, and no stray shard is left under data/
    assert not (tmp_path / "out" / "_work" / report.job_id).exists()
    named = {s.path for s in ds.manifest.shards}
    listed = {i.key for i in open_store(out).list("data/")}
    assert listed == named


def test_filters_and_stage_counts(corpus: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    root, truth = corpus
    out = str(tmp_path / "out")
    report = ingest([str(root)], out, fast_config())
    f = report.stages["filters"]
    assert f["docs_in"] == truth["total"]
    assert 0 < f["docs_out"] < f["docs_in"]
    dropped = f["docs_in"] - f["docs_out"]
    assert sum(f["counters"].values()) == dropped
    removed = open_dataset(f"{out}/_removed").to_table()
    filtered = [r for r in removed.column("reason").to_pylist() if r.startswith("filters:")]
    assert len(filtered) == dropped
    assert report.docs_out == report.docs_in - len(removed)
    # explain names the rule and its measured value
    row = removed.filter(pc.equal(removed.column("reason"), filtered[0])).slice(0, 1).to_pylist()[0]
    why = explain(out, row["id"])
    assert why["reason"] == filtered[0] and why["value"] == row["value"]


def test_same_output_whatever_the_workers(
    corpus: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """Byte-identical shards (same paths and checksums) with 1 thread or 2 worker processes,
    and a rerun of a committed job does nothing."""
    root, _ = corpus
    one = ingest([str(root)], str(tmp_path / "a"), fast_config(workers=1))
    two = ingest([str(root)], str(tmp_path / "b"), fast_config(workers=2, processes=True))
    assert one.job_id == two.job_id
    assert _checksums(str(tmp_path / "a")) == _checksums(str(tmp_path / "b"))
    assert _checksums(str(tmp_path / "a") + "/_removed") == _checksums(
        str(tmp_path / "b") + "/_removed"
    )
    again = ingest([str(root)], str(tmp_path / "a"), fast_config())
    assert again.output_version == one.output_version == 1
    assert open_dataset(str(tmp_path / "a")).version == 1


def test_max_errors_fails_and_commits_nothing(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_corpus(src)
    out = str(tmp_path / "out")
    config = dataclasses.replace(
        fast_config(), errors=dataclasses.replace(IngestConfig().errors, max_errors=2)
    )
    with pytest.raises(InvalidInput, match="3 records were quarantined, more than"):
        ingest([str(src)], out, config)
    assert not (tmp_path / "out" / "_manifests").exists()
    assert len(open_dataset(f"{out}/_quarantine").to_table()) == 3
    frac = dataclasses.replace(config, errors=dataclasses.replace(config.errors, max_errors=0.5))
    assert ingest([str(src)], out, frac).quarantined == 3


def test_user_stage_and_pii(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    rows = [
        {"id": "a", "text": "write to alice@example.com or call +1 415 555 0100 today", "k": 1},
        {"id": "b", "text": "drop me please", "k": 2},
        {"id": "c", "text": "server at 10.0.0.12 is fine", "k": 3},
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    doc = {
        "filters": {"enabled": False},
        "dedup": {"fuzzy": {"enabled": False}},
        "pii": {"enabled": True},
        "stages": [
            {
                "function": "tests.pipelines.user_stages:drop_if",
                "mode": "document",
                "options": {"word": "drop"},
            },
            {"function": "tests.pipelines.user_stages:add_length", "mode": "batch"},
        ],
        "execution": {"workers": 1, "processes": False, "progress": False},
    }
    config = IngestConfig.from_dict(doc)
    out = str(tmp_path / "out")
    report = ingest([str(src)], out, config)
    table = open_dataset(out).to_table()
    assert table.column("id").to_pylist() == ["a", "c"]
    texts = table.column("text").to_pylist()
    assert "alice@example.com" not in texts[0] and "<EMAIL>" in texts[0]
    assert "<PHONE>" in texts[0] and "<IP_ADDRESS>" in texts[1]
    assert table.column("length").to_pylist() == [len(t) for t in texts]
    assert report.stages["pii"]["counters"]["emails"] == 1
    assert explain(out, "b")["reason"] == "user:drop_if"


@pytest.mark.s3
def test_s3_in_and_out(
    corpus: tuple[Path, dict[str, Any]], s3_config: StorageConfig, s3_uri: str
) -> None:
    root, truth = corpus
    store = open_store(f"{s3_uri}/raw", s3_config)
    for p in sorted(root.iterdir()):
        store.put(p.name, p.read_bytes())
    out = f"{s3_uri}/clean"
    report = ingest([f"{s3_uri}/raw/"], out, _no_filters(fast_config()), storage=s3_config)
    assert report.docs_in == truth["total"]
    ds = open_dataset(out, config=s3_config)
    assert len(ds) == report.docs_out and ds.verify().ok
    assert report.exact_duplicates >= len(truth["exact"])
    etags = [i["etag"] for i in ds.manifest.metadata["ingest"]["inputs"]]
    assert all(e and e.strip('"') for e in etags)
    assert not list(open_store(out, s3_config).list("_work/"))


def test_many_inputs_go_to_a_lineage_object(
    corpus: tuple[Path, dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past INLINE_INPUTS files the manifest names a checksummed lineage object instead."""
    import zstandard

    from datastore.manifest import checksum

    ingest_module = sys.modules["pipelines.ingest"]  # the module (the package exports the function)
    monkeypatch.setattr(ingest_module, "INLINE_INPUTS", 2)
    root, _ = corpus
    out = str(tmp_path / "out")
    ingest([str(root)], out, _no_filters(fast_config(), enabled=False))
    meta = open_dataset(out).manifest.metadata["ingest"]
    assert "inputs" not in meta and meta["input_files"] == 4
    ref = meta["inputs_object"]
    body = open_store(out).get(ref["path"])
    assert len(body) == ref["bytes"] and checksum(body) == ref["checksum"]
    rows = [json.loads(line) for line in zstandard.decompress(body).splitlines()]
    assert sorted(r["uri"].rsplit("/", 1)[1] for r in rows) == [f"part-{i}.jsonl" for i in range(4)]


@pytest.mark.s3
def test_s3_slowdown_backs_off(
    corpus: tuple[Path, dict[str, Any]], seaweedfs: Any, s3_config: StorageConfig, s3_uri: str
) -> None:
    """S3 throttling (503 SlowDown) on listing and reads is retried, not fatal."""
    from tests.faultproxy import FaultProxy

    root, truth = corpus
    store = open_store(f"{s3_uri}/raw", s3_config)
    for p in sorted(root.iterdir()):
        store.put(p.name, p.read_bytes())
    with FaultProxy(("127.0.0.1", seaweedfs.ports["s3"])) as proxy:
        config = s3_config.replace(endpoint_url=proxy.url, backoff_base=0.05, backoff_max=0.2)
        key = s3_uri.removeprefix("s3://") + "/raw/part-0.jsonl"
        proxy.slowdown_next(3, match=f"GET /{key}".encode())  # 3 of 4 attempts of a read
        report = ingest(
            [f"{s3_uri}/raw/"], f"{s3_uri}/clean", _no_filters(fast_config()), storage=config
        )
        assert proxy.faulted == 3
    assert report.docs_in == truth["total"]
