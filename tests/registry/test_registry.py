"""Registry data model on both SQL backends (an SQLite file, a real PostgreSQL server) and a
local blob store: versions, dedup, aliases and their history, references, downloads verified,
revocation, concurrency, errors."""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path
from typing import Any

import pytest

from datastore.errors import Corrupt, InvalidInput, NotFound
from registry import Registry, parse_ref
from registry.refs import DEFAULT_NAMESPACE
from tests.registry.conftest import write_files as _files


def test_references_parse_and_refuse_bad_names() -> None:
    assert str(parse_ref("team/proj/model:7")) == "team/proj/model:7"
    r = parse_ref("model@production")
    assert (r.namespace, r.name, r.alias, r.version) == (
        DEFAULT_NAMESPACE,
        "model",
        "production",
        None,
    )
    assert parse_ref("a/b:latest").version is None and parse_ref("a/b").alias is None
    for bad in [
        "",
        "../x",
        "a/../b",
        "a/b:0",
        "a/b:x",
        "a/b@latest",
        "a b",
        "a/b:1:2",
        "/a",
        "a//b",
    ]:
        with pytest.raises(InvalidInput):
            parse_ref(bad)


def test_versions_count_up_and_identical_files_are_stored_once(
    client: Any, reg: Registry, tmp_path: Path
) -> None:
    ckpt = _files(tmp_path / "ckpt", **{"a.bin": "A" * 1000, "b.bin": "B" * 1000})
    v1 = client.register("team/ckpt", [ckpt], kind="checkpoint", metrics={"step": 100})
    (ckpt / "b.bin").write_text("C" * 1000)  # one shard changed
    v2 = client.register("team/ckpt", [ckpt], kind="checkpoint", metrics={"step": 200})
    assert (v1.number, v2.number) == (1, 2)
    assert v1.digest != v2.digest
    same = {f.path: f.sha256 for f in v1.files}
    assert same["a.bin"] == {f.path: f.sha256 for f in v2.files}["a.bin"]
    assert len(list(reg.blobs.list())) == 3, "a.bin stored once for both versions"
    assert client.resolve("team/ckpt").number == 2
    assert client.resolve("team/ckpt:latest").number == 2
    assert client.resolve("team/ckpt:1").metrics == {"step": 100.0}
    assert [v.number for v in client.versions("team/ckpt")] == [2, 1]
    out = client.download("team/ckpt:1", tmp_path / "out")
    assert (out / "b.bin").read_text() == "B" * 1000


def test_aliases_move_with_history(client: Any, tmp_path: Path) -> None:
    f = _files(tmp_path / "m", **{"w": "1"})
    client.register("m", [f], kind="model")
    client.register("m", [f], kind="model")
    client.set_alias("m:1", "production")
    t_mid = time.time()
    time.sleep(0.01)
    client.set_alias("m:2", "production")
    assert client.resolve("m@production").number == 2
    assert client.resolve("m:2").aliases == ("production",)
    history = client.alias_history("m", "production")
    assert [h["version"] for h in history] == [1, 2]
    then = client.alias_at("m", "production", t_mid)
    assert then is not None and then.number == 1
    assert client.alias_at("m", "production", history[0]["at"] - 1) is None
    with pytest.raises(NotFound, match="no alias 'staging'"):
        client.resolve("m@staging")


def test_revoked_versions_are_kept_but_not_downloadable(client: Any, tmp_path: Path) -> None:
    f = _files(tmp_path / "d", **{"x": "1"})
    client.register("d", [f], kind="dataset")
    revoked = client.revoke("d:1", "license withdrawn")
    assert revoked.revoked_at is not None and client.resolve("d:1").revoked_at is not None
    with pytest.raises(InvalidInput, match="revoked"):
        client.download("d:1", tmp_path / "out")


def test_bad_input_registers_nothing(client: Any, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        client.register("x", [tmp_path / "missing"], kind="model")
    with pytest.raises(InvalidInput, match="unknown kind"):
        client.register("x", [_files(tmp_path / "f", a="1")], kind="weights")
    with pytest.raises(InvalidInput, match="invalid"):
        client.register("../x", [tmp_path / "f"], kind="model")
    with pytest.raises(NotFound, match="no artifact default/parent"):
        client.register("x", [tmp_path / "f"], kind="model", parents=["parent:1"])
    assert client.artifacts() == [], "nothing half-registered"
    client.register("x", [tmp_path / "f"], kind="model")
    with pytest.raises(InvalidInput, match="holds model versions"):
        client.register("x", [tmp_path / "f"], kind="dataset")
    with pytest.raises(NotFound, match="no version 5"):
        client.resolve("x:5")


def test_a_corrupted_blob_fails_its_download_and_leaves_nothing(
    client: Any, reg: Registry, tmp_path: Path
) -> None:
    f = _files(tmp_path / "f", w="weights" * 100)
    v = client.register("m", [f], kind="model")
    blob = Path(reg.blob_location) / reg.blobs.key(v.files[0].sha256)
    data = bytearray(blob.read_bytes())
    data[10] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(Corrupt, match="does not match its checksum"):
        client.download("m:1", tmp_path / "out")
    assert not (tmp_path / "out" / "w").exists()


def _register_many(db: str, blobs: str, src: str, worker: int, count: int) -> None:
    reg = Registry(db, blobs)
    for _ in range(count):
        v = reg.register("team/shared", [src], kind="model", tags={"worker": str(worker)})
        reg.set_alias(str(v.ref), "latest-good")
        reg.set_alias(str(v.ref), f"w{worker}")


def test_concurrent_processes_get_distinct_versions_and_lose_no_alias_move(
    registry_db: str, tmp_path: Path
) -> None:
    db, blobs = registry_db, str(tmp_path / "blobs")
    src = _files(tmp_path / "src", w="1")
    Registry(db, blobs)  # create the schema once
    procs = [
        mp.get_context("spawn").Process(target=_register_many, args=(db, blobs, str(src), w, 5))
        for w in range(8)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    reg = Registry(db, blobs)
    numbers = [v.number for v in reg.versions("team/shared")]
    assert sorted(numbers) == list(range(1, 41)), "every version number exactly once"
    assert len(reg.alias_history("team/shared", "latest-good")) == 40, "no alias move lost"
    for w in range(8):
        assert reg.resolve(f"team/shared@w{w}").tags["worker"] == str(w)


def test_schema_matches_the_migrations(registry_db: str, tmp_path: Path) -> None:
    """The Alembic revisions build exactly the tables and columns registry.schema declares."""
    from sqlalchemy import inspect

    from registry.schema import metadata

    reg = Registry(registry_db, str(tmp_path / "blobs"))
    found = inspect(reg.engine)
    for table in metadata.sorted_tables:
        assert {c["name"] for c in found.get_columns(table.name)} == {c.name for c in table.columns}
        assert {i["name"] for i in found.get_indexes(table.name)} >= {i.name for i in table.indexes}


def test_a_database_that_does_not_answer_is_one_clear_error(tmp_path: Path) -> None:
    from datastore.errors import Unreachable
    from datastore.testing.seaweedfs import free_port

    with pytest.raises(
        Unreachable, match=r"registry database postgresql\+psycopg://.* does not answer"
    ):
        Registry(f"postgresql://nobody@127.0.0.1:{free_port()}/x", str(tmp_path / "blobs"))


def test_a_blob_store_belongs_to_one_registry(registry_db: str, tmp_path: Path) -> None:
    """A database and a blob store that do not belong together are refused: a GC through
    the wrong database would see every blob as unreferenced."""
    blobs = str(tmp_path / "blobs")
    first = Registry(registry_db, blobs)
    assert Registry(registry_db, blobs).id == first.id  # the same pair opens again
    with pytest.raises(InvalidInput, match="belongs to the registry"):
        Registry(str(tmp_path / "scratch.db"), blobs)


def test_hot_reads_match_the_general_path_and_find_combines_conditions(
    client: Any, tmp_path: Path
) -> None:
    """resolve/versions (plain SQL on the cursor) return what resolve_many (SQLAlchemy Core)
    does, field for field; find ANDs its conditions."""
    src = _files(tmp_path / "m", **{"w.bin": "w", "z.txt": "z"})
    client.register("team/data", kind="dataset", dataset=("file:///d", 3), tags={"license": "ok"})
    for i in range(5):
        client.register(
            "team/model",
            [src],
            kind="model",
            tags={"commit": f"c{i}", "team": "nlp"},
            metrics={"eval/acc": i / 10},
            metadata={"step": i},
            parents=["team/data:1"],
        )
    client.set_alias("team/model:2", "production")
    client.set_alias("team/model:2", "staging")
    client.revoke("team/model:4", "bad")
    fast = [client.resolve("team/model@production"), *client.versions("team/model")]
    slow = client.resolve_many(
        ["team/model@production", *[f"team/model:{n}" for n in (5, 4, 3, 2, 1)]]
    )
    assert fast == slow
    assert fast[0].aliases == ("production", "staging") and fast[0].metrics == {"eval/acc": 0.1}
    assert fast[0].tags == {"commit": "c1", "team": "nlp"} and fast[0].metadata == {"step": 1}
    assert [f.path for f in fast[0].files] == ["w.bin", "z.txt"]
    assert [v.number for v in client.versions("team/model", limit=2)] == [5, 4]
    assert client.versions("team/model", limit=0) == []
    with pytest.raises(NotFound, match="team/nothing"):
        client.versions("team/nothing")

    assert [v.number for v in client.find(tags={"commit": "c3"})] == [4]
    assert [v.number for v in client.find(tags={"team": "nlp"}, name="team/model", limit=2)] == [
        4,
        5,
    ]
    assert client.find(tags={"team": "nlp", "commit": "c9"}) == []
    assert [str(v.ref) for v in client.find(tags={"license": "ok"}, kind="dataset")] == [
        "team/data:1"
    ]
    assert client.find(tags={"license": "ok"}, kind="model") == []
    assert [str(v.ref) for v in client.find(dataset=("file:///d", 3))] == ["team/data:1"]
    assert client.find(dataset=("file:///d", 4)) == []
    sha = fast[0].files[0].sha256
    assert (
        len(client.find(sha256=sha, kind="model")) == 5
        and client.find(sha256=sha, kind="tokenizer") == []
    )
    with pytest.raises(InvalidInput, match="needs at least one"):
        client.find()
    with pytest.raises(InvalidInput, match="unknown kind"):
        client.find(tags={"a": "b"}, kind="weights")
