"""Access-controlled search over chunk tables, without the model: tables of random unit
vectors with random access groups, checked against exact numpy search; filters that try to
escape the access check; errors."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

pytest.importorskip("lancedb")

from datastore.errors import InvalidInput, NotFound
from pipelines.retrieval import VectorIndex, open_index
from pipelines.vectors import (
    EVERYONE,
    IndexSpec,
    TableRef,
    acl_filter,
    check_filter,
    chunk_schema,
    create_vector_index,
    open_db,
)

DIM = 32
GROUPS = ["eng", "hr", "legal", "ml", "ops", "sales"]
WORDS = ["apple", "banana", "cherry", "delta", "echo", "falcon", "zebra"]


def _table(root: Path, n: int, seed: int, index: str = "flat") -> tuple[Any, np.ndarray, list]:
    """A chunk table of ``n`` random unit vectors, each with 0-3 random groups (some public)."""
    rnd = random.Random(seed)
    rng = np.random.default_rng(seed)
    vecs = rng.standard_normal((n, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    groups = []
    for _ in range(n):
        r = rnd.random()
        groups.append([EVERYONE] if r < 0.05 else sorted(rnd.sample(GROUPS, rnd.randint(0, 3))))
    meta = {"model": "none", "model_digest": "0", "dim": DIM, "precision": "float32"}
    schema = chunk_schema(DIM, meta)
    data = pa.table(
        {
            "chunk_id": [f"d{i}#0" for i in range(n)],
            "doc_id": [f"d{i}" for i in range(n)],
            "chunk": pa.array([0] * n, pa.int32()),
            "text": [f"chunk {i} about {WORDS[i % len(WORDS)]}" for i in range(n)],
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vecs.ravel()), DIM),
            "source": ["mem"] * n,
            "access_groups": pa.array(groups, pa.list_(pa.string())),
            "metadata": ["{}"] * n,
            "doc_hash": ["h"] * n,
            "job": ["j"] * n,
        },
        schema=schema,
    )
    db = open_db(str(root))
    table = db.create_table("chunks", data=data, schema=schema)
    if index != "flat":
        create_vector_index(table, IndexSpec(kind=index, partitions=8), DIM)
    from lancedb.index import FTS, LabelList

    table.create_index("text", config=FTS(), replace=True)
    table.create_index("access_groups", config=LabelList(), replace=True)
    return table, vecs, groups


def _allowed(groups: list[list[str]], principal: list[str]) -> np.ndarray:
    have = {EVERYONE, *principal}
    return np.array([bool(have & set(g)) for g in groups])


@pytest.mark.parametrize("index", ["flat", "hnsw", "ivf_pq"])
def test_a_principal_sees_only_its_chunks_and_always_k_of_them(tmp_path: Path, index: str) -> None:
    """Many random principals and queries: every hit is readable by the principal; exactly
    min(k, readable) hits come back (pre-filter: even a group holding 1% of the chunks fills
    k); with an exact (flat) table the hits are the exact top k of the readable chunks."""
    table, vecs, groups = _table(tmp_path, 3000, seed=7, index=index)
    idx = VectorIndex(table, TableRef(str(tmp_path), "chunks"))
    assert idx.kind == index
    rnd = random.Random(1)
    rng = np.random.default_rng(2)
    for trial in range(40):
        principal = sorted(rnd.sample(GROUPS, rnd.randint(0, 2)))
        q = rng.standard_normal(DIM).astype(np.float32)
        k = rnd.choice([1, 10, 50])
        hits = idx.search(q, k, groups=principal)
        allowed = _allowed(groups, principal)
        for h in hits:
            assert set(h.access_groups) & {EVERYONE, *principal}, (trial, h.chunk_id, principal)
        assert len(hits) == min(k, int(allowed.sum())), (trial, principal, k)
        if index == "flat":
            sims = vecs @ (q / np.linalg.norm(q))
            sims[~allowed] = -np.inf
            want = [f"d{i}#0" for i in np.argsort(-sims, kind="stable")[:k]]
            assert [h.chunk_id for h in hits] == want, trial
            assert hits[0].score == pytest.approx(float(sims.max()), abs=1e-4)
    none = idx.search(vecs[0], 10, groups=["nobody"])
    assert all(EVERYONE in h.access_groups for h in none), "only public chunks for a stranger"
    assert len(idx.search(vecs[0], 5)) == 5, "no principal: operator access, no filter"


def test_text_and_hybrid_search_respect_groups_and_filters(tmp_path: Path) -> None:
    table, vecs, groups = _table(tmp_path, 400, seed=3)
    idx = VectorIndex(table, TableRef(str(tmp_path), "chunks"))
    for mode in ("text", "hybrid"):
        with pytest.raises(InvalidInput, match="query text"):
            idx.search(vecs[0], 5, mode=mode)
    hits = idx.search("zebra", 20, mode="text", groups=["hr"])
    readable = sum(1 for i, g in enumerate(groups) if i % 7 == 6 and {"hr", EVERYONE} & set(g))
    assert len(hits) == min(20, readable) and readable > 0
    assert all({"hr", EVERYONE} & set(h.access_groups) for h in hits)
    assert all("zebra" in h.text for h in hits)
    one = next(i for i, g in enumerate(groups) if i % 7 == 6 and "hr" in g)
    narrowed = idx.search("zebra", 50, mode="text", groups=["hr"], where=f"doc_id = 'd{one}'")
    assert [h.doc_id for h in narrowed] == [f"d{one}"]
    # hybrid embeds the query text with the table's model: this table names none, which is
    # one clear error (real models: tests/pipelines/test_embed.py)
    with pytest.raises(NotFound, match="model 'none' is neither a directory"):
        idx.search("zebra", 5, mode="hybrid", groups=["hr"])


@pytest.mark.parametrize(
    "bad",
    [
        "1=1) OR (1=1",
        "doc_id = 'x') OR (true",
        "true -- ",
        "true; DROP TABLE chunks",
        "doc_id = 'unterminated",
        "((doc_id = 'a')",
        "  ",
    ],
)
def test_filters_that_could_escape_the_access_check_are_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(InvalidInput):
        check_filter(bad)


def test_filters_and_groups_that_are_fine(tmp_path: Path) -> None:
    assert check_filter("doc_id = 'it''s (fine)'") == "doc_id = 'it''s (fine)'"
    assert check_filter("(chunk < 3) AND (doc_id != 'x')")
    assert acl_filter(["eng"]) == "array_has_any(access_groups, ['*', 'eng'])"
    assert acl_filter(None) is None
    for bad in ("it's", "*", "", "a b", "x" * 200):
        with pytest.raises(InvalidInput, match="access group"):
            acl_filter([bad])
    table, vecs, _ = _table(tmp_path, 200, seed=5)
    idx = VectorIndex(table, TableRef(str(tmp_path), "chunks"))
    with pytest.raises(InvalidInput, match="32-dimensional"):
        idx.search(np.zeros(12, np.float32), 5)
    with pytest.raises(InvalidInput, match="NaN"):
        idx.search(np.full(DIM, np.nan, np.float32), 5)
    with pytest.raises(InvalidInput, match="k=0"):
        idx.search(vecs[0], 0)
    with pytest.raises(InvalidInput, match="mode"):
        idx.search(vecs[0], 5, mode="semantic")
    hits = idx.search(vecs[0], 100, where="chunk_id IN ('d0#0', 'd1#0')")
    assert {h.chunk_id for h in hits} <= {"d0#0", "d1#0"}
    with pytest.raises(InvalidInput, match="failed"):
        idx.search(vecs[0], 5, where="no_such_column = 1")


def test_missing_tables_versions_and_references(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="no vector table"):
        open_index(str(tmp_path / "db" / "nothing.lance"))
    _table(tmp_path / "db", 50, seed=1)
    uri = str(tmp_path / "db" / "chunks.lance")
    assert open_index(uri).version >= 1
    with pytest.raises(NotFound, match="version 999"):
        open_index(uri, version=999)
    with pytest.raises(InvalidInput):  # neither a table URI nor a registry reference
        open_index(str(tmp_path / "db"), registry=str(tmp_path / "r.db"))
    reg_args = {"registry": str(tmp_path / "r.db"), "blobs": str(tmp_path / "b")}
    with pytest.raises(NotFound, match="no artifact"):
        open_index("team/none@production", **reg_args)  # type: ignore[arg-type]


def test_search_through_the_server_uses_the_tokens_groups(tmp_path: Path) -> None:
    """A registered index searched through ``shardyard serve``: the access groups are the
    ones recorded on the token (the client cannot name others), exact top-k of what they may
    read, every search audited; the CLI goes through the server with --registry http://."""
    pytest.importorskip("fastapi")
    import os
    import subprocess
    import sys

    from datastore.errors import PermissionDenied
    from registry import Registry, audit, tokens
    from registry.remote import RemoteRegistry
    from tests.registry.conftest import serving

    roots = tmp_path / "indexes"
    table, vecs, groups = _table(roots / "team" / "db", 400, seed=3)
    other, _, _ = _table(tmp_path / "elsewhere", 20, seed=4)
    reg = Registry(str(tmp_path / "r.db"), str(tmp_path / "b"))
    uri = str(roots / "team" / "db" / "chunks.lance")
    reg.register("team/idx", kind="vector-index", dataset=(uri, int(table.version)))
    reg.register("team/data", kind="dataset", dataset=("file:///x", 1))
    # a writer of team pointing an index at a table outside team's directory (another
    # team's, read with the server's credentials) is refused at search time
    stray = str(tmp_path / "elsewhere" / "chunks.lance")
    reg.register("team/stray", kind="vector-index", dataset=(stray, int(other.version)))
    with serving(reg) as bare, pytest.raises(InvalidInput, match="--search-root"):
        RemoteRegistry(bare["url"], bare["tokens"]["reader"]).search("team/idx:1", [0.0] * 32)
    with serving(reg, (str(roots),)) as srv:
        eng, _ = tokens.create_token(reg.engine, "team", "reader", groups=["eng"])
        nobody = srv["tokens"]["reader"]  # no groups: public chunks only
        q = vecs[5] + 0.1
        for secret, principal in ((eng, ["eng"]), (nobody, [])):
            hits = RemoteRegistry(srv["url"], secret).search("team/idx:1", q.tolist(), 10)
            allowed = _allowed(groups, principal)
            sims = vecs @ (q / np.linalg.norm(q))
            sims[~allowed] = -np.inf
            want = [f"d{i}#0" for i in np.argsort(-sims, kind="stable")[:10]]
            assert [h["chunk_id"] for h in hits] == want[: int(allowed.sum())]
            assert all({EVERYONE, *principal} & set(h["access_groups"]) for h in hits)
        with pytest.raises(PermissionDenied):
            RemoteRegistry(srv["url"], srv["tokens"]["other"]).search("team/idx:1", q.tolist())
        with pytest.raises(PermissionDenied, match="not under its namespace's directory"):
            RemoteRegistry(srv["url"], eng).search("team/stray:1", q.tolist())
        with pytest.raises(InvalidInput, match="team/data:1 is a dataset: this server searches"):
            RemoteRegistry(srv["url"], eng).search("team/data:1", q.tolist())
        with pytest.raises(InvalidInput, match="filter"):
            RemoteRegistry(srv["url"], eng).search("team/idx:1", q.tolist(), where="1=1) OR (1=1")
        for scope in ("team", "*"):  # a token admin, even of every namespace, grants only its own
            admin = tokens.Principal("token:x", scope, "admin", ("eng",))
            with pytest.raises(PermissionDenied, match="does not hold: legal"):
                tokens.create_token(reg.engine, "team", "reader", by=admin, groups=["legal"])
        searches = audit.records(reg.engine, action="search")
        assert len(searches) == 2 and searches[0].target == "team/idx:1"
        assert searches[0].detail["groups"] == ["eng"] and searches[1].detail["groups"] == []

        env = {**os.environ, "SHARDYARD_TOKEN": eng}
        cli = [sys.executable, "-m", "shardyard", "index", "search", "team/idx:1"]
        out = subprocess.run(
            [*cli, "zebra", "--mode", "text", "--registry", srv["url"], "--json"],
            env=env,
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, out.stderr
        found = json.loads(out.stdout)
        assert found and all("zebra" in h["text"] for h in found)
        assert all({EVERYONE, "eng"} & set(h["access_groups"]) for h in found)
        bad = subprocess.run(
            [*cli, "zebra", "--registry", srv["url"], "--groups", "legal"],
            env=env,
            capture_output=True,
            text=True,
        )
        assert bad.returncode != 0 and "--groups: not through a registry server" in bad.stderr
        assert "Traceback" not in bad.stderr
