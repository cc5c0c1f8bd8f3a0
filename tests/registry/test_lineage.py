"""Lineage (any depth, both directions, tree / DOT / OpenLineage), the deployable policy and
atomic releases, on both SQL backends."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from datastore.errors import InvalidInput
from registry import Registry
from registry.policy import Policy, parse_condition


@pytest.fixture
def reg(registry_db: str, tmp_path: Path) -> Registry:
    r = Registry(registry_db, str(tmp_path / "blobs"))
    f = tmp_path / "f"
    f.write_text("x")
    # corpus -> clean -> tokens <- tokenizer; tokens + base -> ckpt -> model
    r.register("data/corpus", [f], kind="dataset", tags={"license": "approved"})
    r.register(
        "data/clean", [f], kind="dataset", tags={"license": "approved"}, parents=["data/corpus:1"]
    )
    r.register("tok/bpe", [f], kind="tokenizer")
    r.register(
        "data/tokens",
        [f],
        kind="dataset",
        tags={"license": "approved"},
        parents=["data/clean:1", "tok/bpe:1"],
    )
    r.register("models/base", [f], kind="model")
    r.register("models/ckpt", [f], kind="checkpoint", parents=["data/tokens:1", "models/base:1"])
    for acc in (0.7, 0.85, 0.9):
        r.register(
            "models/chat", [f], kind="model", metrics={"eval/acc": acc}, parents=["models/ckpt:1"]
        )
    return r


def test_lineage_at_any_depth_both_ways(client: Any) -> None:
    up = client.lineage("models/chat:2")
    refs = {n["ref"] for n in up.nodes.values()}
    assert refs == {
        "models/chat:2",
        "models/ckpt:1",
        "data/tokens:1",
        "models/base:1",
        "data/clean:1",
        "tok/bpe:1",
        "data/corpus:1",
    }
    assert {n["ref"] for n in client.lineage("models/chat:2", depth=1).nodes.values()} == {
        "models/chat:2",
        "models/ckpt:1",
    }
    down = client.lineage("data/corpus:1", "downstream")
    assert {"models/chat:1", "models/chat:2", "models/chat:3"} <= {
        n["ref"] for n in down.nodes.values()
    }
    tree = up.tree()
    assert tree.splitlines()[0].startswith("models/chat:2 (model)")
    assert "data/corpus:1 (dataset)" in tree
    dot = up.dot()
    assert dot.startswith("digraph lineage {") and dot.count("->") == len(up.edges) == 6
    events = up.openlineage()
    by_output = {e["outputs"][0]["name"]: e for e in events}
    assert {i["name"] for i in by_output["data/tokens:1"]["inputs"]} == {
        "data/clean:1",
        "tok/bpe:1",
    }
    json.dumps(events)  # plain JSON


def test_manual_links_refuse_cycles(client: Any) -> None:
    client.link("data/corpus:1", "models/base:1")
    assert "data/corpus:1" in {n["ref"] for n in client.lineage("models/base:1").nodes.values()}
    with pytest.raises(InvalidInput, match="cycle"):
        client.link("models/chat:1", "data/corpus:1")


def test_deployable_policy(client: Any) -> None:
    policy = Policy(
        conditions=[parse_condition("eval/acc>=0.8")], upstream_tags={"license": "approved"}
    )
    ok = [a["version"].number for a in client.deployable("models/chat", policy) if a["deployable"]]
    assert ok == [3, 2]
    refused = {a["version"].number: a["why"] for a in client.deployable("models/chat", policy)}
    assert refused[1] == ["eval/acc>=0.8 fails (eval/acc=0.7)"]
    client.set_alias("models/chat:2", "production")
    aliased = Policy(alias="production", conditions=policy.conditions)
    assert [
        a["version"].number for a in client.deployable("models/chat", aliased) if a["deployable"]
    ] == [2]
    # data revoked upstream makes everything trained on it undeployable, with the reason
    client.revoke("data/clean:1", "license withdrawn")
    answers = client.deployable("models/chat", policy)
    assert not any(a["deployable"] for a in answers)
    assert "upstream data/clean:1 is revoked" in answers[0]["why"]
    with pytest.raises(InvalidInput, match="name OP number"):
        parse_condition("eval/acc => 0.8")


def test_a_release_moves_every_alias_at_once(client: Any, tmp_path: Path) -> None:
    refs_v1 = ["models/chat:1", "tok/bpe:1", "data/tokens:1"]
    client.release(refs_v1, "prod")
    f = tmp_path / "g"
    f.write_text("y")
    client.register("tok/bpe", [f], kind="tokenizer")
    client.register("data/tokens", [f], kind="dataset")
    refs_v2 = ["models/chat:3", "tok/bpe:2", "data/tokens:2"]
    names = ["models/chat@prod", "tok/bpe@prod", "data/tokens@prod"]
    seen: list[tuple[int, ...]] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            seen.append(tuple(v.number for v in client.resolve_many(names)))

    th = threading.Thread(target=reader)
    th.start()
    for _ in range(5):
        client.release(refs_v2, "prod")
        client.release(refs_v1, "prod")
    stop.set()
    th.join()
    assert set(seen) <= {(1, 1, 1), (3, 2, 2)}, "never a mix of two releases"
    with pytest.raises(InvalidInput, match="one version per artifact"):
        client.release(["tok/bpe:1", "tok/bpe:2"], "prod")
