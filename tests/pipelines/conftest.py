"""A small real-text corpus with planted duplicates, and configs that run ingest fast."""

from __future__ import annotations

import dataclasses
import json
import os
import random
from pathlib import Path
from typing import Any

import pytest

from pipelines.config import ExecutionConfig, IngestConfig

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "examples" / "corpus" / "docs.jsonl"


def cli_env() -> dict[str, str]:
    """The environment for ``python -m shardyard`` subprocesses: this checkout importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def fast_config(**execution: Any) -> IngestConfig:
    """Defaults, a small partition size (several tasks) and an in-process cluster."""
    base = IngestConfig()
    ex = {"workers": 1, "processes": False, "progress": False, **execution}
    return dataclasses.replace(
        base,
        input=dataclasses.replace(base.input, partition_bytes=256 * 1024),
        execution=ExecutionConfig(**ex),
    )


def _near_copy(text: str, rng: random.Random) -> str:
    """Change about 1% of the words: a near duplicate (word 5-gram Jaccard about 0.9)."""
    words = text.split()
    for _ in range(max(1, len(words) // 100)):
        words[rng.randrange(len(words))] = "edited"
    return " ".join(words)


def write_corpus(root: Path, bad_lines: bool = True) -> dict[str, Any]:
    """Three JSONL files of real text (Debian copyright files and man pages) with planted exact
    and near duplicates and, optionally, malformed lines. Returns the ground truth."""
    docs = [json.loads(line) for line in CORPUS.read_text().splitlines()]
    rng = random.Random(7)
    counts: dict[str, int] = {}
    for d in docs:
        counts[d["text"]] = counts.get(d["text"], 0) + 1
    originals = [d for d in docs if len(d["text"].split()) > 300 and counts[d["text"]] == 1]
    exact = rng.sample(originals, 10)
    near = rng.sample([d for d in originals if d not in exact], 10)
    truth: dict[str, Any] = {"exact": {}, "near": {}, "docs": len(docs)}
    copies: list[dict[str, Any]] = []
    for d in exact:
        copy = {**d, "id": d["id"] + "-copy"}
        copies.append(copy)
        truth["exact"][copy["id"]] = d["id"]
    for d in near:
        copy = {**d, "id": d["id"] + "-near", "text": _near_copy(d["text"], rng)}
        copies.append(copy)
        truth["near"][copy["id"]] = d["id"]
    root.mkdir(parents=True, exist_ok=True)
    # originals in three files, the planted copies last (so the originals come first in order)
    chunks = [docs[i::3] for i in range(3)] + [copies]
    for i, chunk in enumerate(chunks):
        with (root / f"part-{i}.jsonl").open("w") as f:
            for j, d in enumerate(chunk):
                f.write(json.dumps(d) + "\n")
                if bad_lines and j == 5 and i < 3:
                    f.write('{"id": "broken", "text": \n')
    truth["total"] = len(docs) + len(copies)
    truth["bad"] = 3 if bad_lines else 0
    return truth


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The planted-duplicate corpus (session-wide; tests must not modify it)."""
    root = tmp_path_factory.mktemp("corpus")
    return root, write_corpus(root)


#: Real text the bundled corpus lacks: 4-byte UTF-8, CJK, Cyrillic, combining marks, RTL.
MULTILINGUAL = [
    "Grüße aus Köln! Straße, Fußgänger und Übermut.",
    "日本語のテキストです。東京は大きな都市です。",
    "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "emoji 🚀🎉👩‍💻 and flags 🇫🇷🇯🇵 next to ASCII",
    "combining: e\u0301 a\u0308 o\u0302; precomposed: é ä ô",
    "עברית ומספרים 123 mixed with العربية",
    "a document that spells <|endoftext|> and </s> and <|pad|> as plain text",
]


@pytest.fixture(scope="session")
def text_dataset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A table dataset of real text (the bundled corpus, multilingual documents, two empty
    and one null text) in several shards; returns its URI and texts (session-wide, read-only)."""
    import pyarrow as pa

    from datastore import DatasetWriter

    docs = [json.loads(line)["text"] for line in CORPUS.read_text().splitlines()]
    texts: list[str | None] = [*docs[:40], "", *MULTILINGUAL, None, *docs[40:120], ""]
    texts += [t[:200] for t in docs[120:]]  # many short documents
    uri = str(tmp_path_factory.mktemp("text") / "docs")
    with DatasetWriter(uri, shard_size=24 * 1024) as w:
        w.write(pa.table({"id": [f"d{i}" for i in range(len(texts))], "text": texts}))
    return {"uri": uri, "texts": texts}


@pytest.fixture(scope="session")
def trained(
    text_dataset: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """A 600-id byte-level BPE tokenizer trained on ``text_dataset`` (session-wide)."""
    from pipelines.tokenizer import train_tokenizer

    path = str(tmp_path_factory.mktemp("tokenizer") / "tokenizer.json")
    result = train_tokenizer(text_dataset["uri"], path, 600)
    return {"path": path, "dataset": text_dataset["uri"], **result}
