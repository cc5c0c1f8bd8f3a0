"""Bounded memory: a corpus several times larger than the worker's memory limit ingests (with
global exact dedup) without the worker being killed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from datastore import open_dataset
from pipelines import ingest
from pipelines.config import IngestConfig
from tests.pipelines.conftest import CORPUS

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("memory")]

LIMIT = 512 * 1024 * 1024  # the worker's memory limit (Dask pauses it at 80%, kills at 95%)


def _big_corpus(path: Path, size: int) -> int:
    """``size`` bytes of JSONL: the bundled real text, each copy made unique by a number, plus
    every 10th document repeated verbatim (exact duplicates spread over the whole file)."""
    texts = [json.loads(line)["text"] for line in CORPUS.read_text().splitlines()]
    n = written = 0
    with path.open("w") as f:
        while written < size:
            for text in texts:
                doc = {"id": f"d{n}", "text": f"{n}\n{text}"}
                line = json.dumps(doc) + "\n"
                f.write(line)
                written += len(line)
                if n % 10 == 0:
                    dup = json.dumps({"id": f"d{n}-dup", "text": doc["text"]}) + "\n"
                    f.write(dup)
                    written += len(dup)
                n += 1
    return n


def test_corpus_larger_than_worker_memory(tmp_path: Path) -> None:
    src = tmp_path / "big.jsonl"
    docs = _big_corpus(src, 3 * LIMIT)
    config = IngestConfig.from_dict(
        {
            "input": {"partition_bytes": 32 * 1024 * 1024},
            "filters": {"enabled": False},
            "dedup": {"fuzzy": {"enabled": False}},
            "execution": {
                "workers": 1,
                "processes": True,
                "memory_limit": str(LIMIT),
                "progress": False,
            },
        }
    )
    report = ingest([str(src)], str(tmp_path / "out"), config)
    assert report.bytes_in >= 3 * LIMIT
    assert report.workers_lost == 0
    assert report.partitions >= 40
    expected_dups = (docs + 9) // 10
    assert report.exact_duplicates == expected_dups
    assert report.docs_out == docs
    assert len(open_dataset(str(tmp_path / "out"))) == docs
