"""Input discovery, partitioning and readers: every record is read exactly once, bad records
are quarantined with their location, on local files and on S3."""

from __future__ import annotations

import dataclasses
import gzip
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from datastore import StorageConfig, open_store
from datastore.errors import NotFound
from pipelines import readers
from pipelines.config import IngestConfig
from pipelines.plan import detect_format, discover, make_plan
from pipelines.readers import read_partition


def _config(**input_kw: Any) -> IngestConfig:
    base = IngestConfig()
    return dataclasses.replace(base, input=dataclasses.replace(base.input, **input_kw))


def _read_all(
    inputs: list[str], config: IngestConfig, storage: StorageConfig | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    plan = make_plan(discover(inputs, config, storage), config)
    docs: list[dict[str, Any]] = []
    bad: list[dict[str, Any]] = []
    for p in plan.partitions:
        for block in read_partition(p, plan.files, config.input, storage):
            if block.docs is not None:
                docs.extend(block.docs.to_pylist())
            bad.extend(block.bad)
    return docs, bad


def test_detect_format() -> None:
    assert detect_format("a/b.jsonl.zst") == ("jsonl", "zstd")
    assert detect_format("x.json.gz") == ("jsonl", "gzip")
    assert detect_format("x.parquet") == ("parquet", None)
    assert detect_format("x.csv") == ("csv", None)
    assert detect_format("README") == ("text", None)
    assert detect_format("notes.txt", "jsonl") == ("jsonl", None)


@settings(max_examples=40, deadline=None)
@given(
    lines=st.lists(
        st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=60),
        min_size=1,
        max_size=60,
    ),
    part=st.integers(1024, 4096),
    blank=st.booleans(),
    block=st.sampled_from([37, 64, 300, 1 << 20]),
)
def test_byte_ranges_read_every_line_once(
    tmp_path_factory: pytest.TempPathFactory, lines: list[str], part: int, blank: bool, block: int
) -> None:
    """Cutting a JSONL file into byte ranges at arbitrary points, and reading it in blocks of
    any size (plain or gzip), loses and repeats nothing; each document's offset points at its
    line."""
    d = tmp_path_factory.mktemp("ranges")
    path = d / "c.jsonl"
    body = b""
    offsets = []
    texts: list[str] = []
    while len(body) <= 2 * part:
        for text in lines:
            offsets.append(len(body))
            body += json.dumps({"id": str(len(texts)), "text": text}).encode() + b"\n"
            if blank and len(texts) % 7 == 0:
                body += b"  \n"
            texts.append(text)
    path.write_bytes(body)
    (d / "c.jsonl.gz").write_bytes(gzip.compress(body))
    config = _config(partition_bytes=part)
    assert len(make_plan(discover([str(path)], config), config).partitions) > 1
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(readers, "BLOCK_BYTES", block)
        for name in ("c.jsonl", "c.jsonl.gz"):
            docs, bad = _read_all([str(d / name)], config)
            assert not bad
            assert [d["id"] for d in docs] == [str(i) for i in range(len(texts))]
            assert [d["source_offset"] for d in docs] == offsets
            assert [d["text"] for d in docs] == texts
    assert len({d["_ord"] for d in docs}) == len(docs)


def test_compressed_parquet_csv_text(tmp_path: Path) -> None:
    rows = [{"id": f"d{i}", "text": f"héllo wörld {i}", "n": i} for i in range(50)]
    payload = "".join(json.dumps(r) + "\n" for r in rows).encode()
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(payload))
    (tmp_path / "b.jsonl.zst").write_bytes(zstandard.compress(payload))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "c.parquet", row_group_size=7)
    (tmp_path / "d.csv").write_text(
        "id,text,n\n" + "".join(f'{r["id"]},"{r["text"]}",{r["n"]}\n' for r in rows)
    )
    (tmp_path / "e.txt").write_text("a whole document\nwith two lines\n")
    docs, bad = _read_all([str(tmp_path)], _config())
    assert not bad
    by_file: dict[str, list[dict[str, Any]]] = {}
    for d in docs:
        by_file.setdefault(d["source_uri"].rsplit("/", 1)[1], []).append(d)
    for name in ("a.jsonl.gz", "b.jsonl.zst", "c.parquet", "d.csv"):
        got = by_file[name]
        assert [d["text"] for d in got] == [r["text"] for r in rows], name
        assert [d["id"] for d in got] == [r["id"] for r in rows], name
        assert all(int(d["n"]) == i for i, d in enumerate(got)), name
    assert [d["source_offset"] for d in by_file["c.parquet"]] == list(range(50))
    assert by_file["e.txt"][0]["text"] == "a whole document\nwith two lines\n"


def test_bad_records_are_quarantined_with_location(tmp_path: Path) -> None:
    good = json.dumps({"text": "ok"}).encode() + b"\n"
    body = (
        good
        + b'{"text": "broken\n'
        + b'{"text":"bad \xff utf"}\n'
        + b'{"text": 5}\n'
        + b'{"other": 1}\n'
        + b"[1, 2]\n"
        + b'{"text":"'
        + b"x" * 5000
        + b'"}\n'
        + good
    )
    (tmp_path / "a.jsonl").write_bytes(body)
    (tmp_path / "empty.jsonl").write_bytes(b"")
    (tmp_path / "bad.txt").write_bytes(b"caf\xe9")
    docs, bad = _read_all(
        [str(tmp_path), str(tmp_path / "gone.jsonl")], _config(max_record_bytes=4096)
    )
    assert [d["text"] for d in docs] == ["ok", "ok"]
    reasons = {(b["source_uri"].rsplit("/", 1)[1], b["source_offset"]): b["reason"] for b in bad}
    assert len(bad) == 9
    off = len(good)
    assert reasons[("a.jsonl", off)].startswith("malformed JSON")
    off += len(b'{"text": "broken\n')
    assert reasons[("a.jsonl", off)].startswith("invalid UTF-8")
    assert "no string field 'text'" in reasons[("a.jsonl", off + 21)]
    assert "not an object" in "".join(reasons.values())
    assert any("exceeds input.max_record_bytes" in r for r in reasons.values())
    assert reasons[("empty.jsonl", 0)] == "empty file"
    assert reasons[("bad.txt", 0)].startswith("invalid UTF-8")
    assert reasons[("gone.jsonl", 0)].startswith("missing input")


def test_huge_single_line_is_quarantined_without_holding_it(tmp_path: Path) -> None:
    """A line far larger than max_record_bytes (and than a read block) is skipped in pieces."""
    path = tmp_path / "big.jsonl"
    with path.open("wb") as f:
        f.write(b'{"text": "before"}\n')
        f.write(b'{"text": "' + b"y" * (40 * 1024 * 1024) + b'"}\n')
        f.write(b'{"text": "after"}\n')
    (tmp_path / "big.jsonl.gz").write_bytes(gzip.compress(path.read_bytes(), compresslevel=1))
    for name in ("big.jsonl", "big.jsonl.gz"):
        docs, bad = _read_all([str(tmp_path / name)], _config(max_record_bytes=1024 * 1024))
        assert [d["text"] for d in docs] == ["before", "after"], name
        assert len(bad) == 1 and bad[0]["source_offset"] == 19
        assert bad[0]["record_bytes"] == 40 * 1024 * 1024 + 12
        assert len(bad[0]["raw"]) <= 4096


def test_globs_and_missing_inputs(tmp_path: Path) -> None:
    for name in ("a.jsonl", "b.jsonl", "c.parquet", "_SUCCESS", ".hidden.jsonl"):
        (tmp_path / name).write_text('{"text": "x"}\n')
    files = discover([str(tmp_path / "*.jsonl")], _config())
    assert [f.uri.rsplit("/", 1)[1] for f in files] == ["a.jsonl", "b.jsonl"]
    files = discover([str(tmp_path)], _config())
    assert [f.uri.rsplit("/", 1)[1] for f in files] == ["a.jsonl", "b.jsonl", "c.parquet"]
    with pytest.raises(NotFound, match="matches no files"):
        discover([str(tmp_path / "*.zzz")], _config())


def test_small_files_are_batched(tmp_path: Path) -> None:
    for i in range(30):
        (tmp_path / f"f{i:02d}.jsonl").write_text(json.dumps({"text": "t" * 90}) + "\n")
    config = _config(partition_bytes=1024)
    plan = make_plan(discover([str(tmp_path)], config), config)
    assert 2 <= len(plan.partitions) <= 5
    assert sum(len(p.pieces) for p in plan.partitions) == 30


@pytest.mark.s3
def test_s3_source_with_ranges(s3_config: StorageConfig, s3_uri: str) -> None:
    store = open_store(s3_uri, s3_config)
    body = "".join(json.dumps({"id": str(i), "text": f"doc {i}"}) + "\n" for i in range(500))
    store.put("in/part.jsonl", body.encode())
    store.put("in/more.jsonl.gz", gzip.compress(body.encode()))
    config = _config(partition_bytes=2048)
    docs, bad = _read_all([f"{s3_uri}/in/"], config, s3_config)
    assert not bad
    assert len(docs) == 1000
    plain = [d for d in docs if d["source_uri"].endswith("part.jsonl")]
    assert [d["id"] for d in plain] == [str(i) for i in range(500)]
    assert plain[3]["source_offset"] == body.index('{"id": "3"')
