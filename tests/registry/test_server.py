"""The registry server over real HTTP (uvicorn on loopback) on both SQL backends: the remote
client against it, and every refusal the governance issue lists."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
import httpx

from datastore.errors import (
    InvalidInput,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
    Unauthenticated,
)
from registry import Registry, audit, tokens
from registry.policy import Policy, parse_condition
from registry.remote import RemoteRegistry
from tests.registry.conftest import serving, write_files


@pytest.fixture
def server(reg: Registry) -> Iterator[dict[str, Any]]:
    """The registry served on a loopback port, with tokens of each role in ``team``."""
    with serving(reg) as served:
        yield served


def test_remote_client_matches_local_mode(server: dict[str, Any], tmp_path: Path) -> None:
    reg: Registry = server["reg"]
    w = RemoteRegistry(server["url"], server["tokens"]["writer"])
    src = write_files(tmp_path / "m", **{"a.bin": "A" * 3000, "b.txt": "bee"})
    data = w.register("team/data", kind="dataset", dataset=("file:///d", 2), tags={"lic": "ok"})
    v1 = w.register(
        "team/model", [src], kind="model", metrics={"acc": 0.9}, parents=["team/data:1"]
    )
    (src / "b.txt").write_text("changed")
    v2 = w.register("team/model", [src], kind="model", metrics={"acc": 0.7})
    assert (data.number, v1.number, v2.number) == (1, 1, 2)
    assert w.resolve("team/model:1") == reg.resolve("team/model:1"), "same Version as local mode"
    assert len(list(reg.blobs.list())) == 3, "a.bin uploaded once"
    w.set_alias("team/model:1", "production")
    assert w.resolve("team/model@production").number == 1
    assert [v.number for v in w.versions("team/model")] == [2, 1]
    assert [v.number for v in w.find(tags={"lic": "ok"})] == [1]
    out = w.download("team/model@production", tmp_path / "out")
    assert (out / "a.bin").read_text() == "A" * 3000 and (out / "b.txt").read_text() == "bee"
    rows = w.deployable("team/model", Policy(conditions=(parse_condition("acc>=0.8"),)))
    assert [(r["version"].number, r["deployable"]) for r in rows] == [(2, False), (1, True)]
    assert w.lineage("team/model:1").nodes
    assert [h["version"] for h in w.alias_history("team/model", "production")] == [1]
    actor = f"token:{server['ids']['writer']}"
    mine = [(r.action, r.target) for r in audit.records(reg.engine, actor=actor)]
    assert ("download", "team/model:1") in mine and ("alias", "team/model@production") in mine
    assert reg.resolve("team/model:1").created_by == actor
    admin = RemoteRegistry(server["url"], server["tokens"]["admin"])
    admin.revoke("team/model:2", "regressed")
    with pytest.raises(InvalidInput, match="revoked"):
        w.download("team/model:2", tmp_path / "again")
    hold = admin.hold("team/model:1", "case 9")
    with pytest.raises(PreconditionFailed, match="legal hold"):
        admin.delete("team/model:1", "cleanup")
    with pytest.raises(PermissionDenied, match="admin"):
        w.delete("team/model:2", "cleanup")
    admin.release_hold(hold, "team/model")
    assert admin.delete("team/model:1", "cleanup").files == ()


def test_every_refusal_is_clear_and_changes_nothing(server: dict[str, Any], tmp_path: Path) -> None:
    reg: Registry = server["reg"]
    url = server["url"]
    t = server["tokens"]
    RemoteRegistry(url, t["writer"]).register("team/model", kind="model", dataset=("file:///x", 1))
    before = audit.head(reg.engine)
    cases: list[tuple[Any, type[Exception], str]] = [
        (lambda: RemoteRegistry(url, None).resolve("team/model:1"), Unauthenticated, "no API"),
        (
            lambda: RemoteRegistry(url, "sy_abc").resolve("team/model:1"),
            Unauthenticated,
            "malformed",
        ),
        (
            lambda: RemoteRegistry(url, t["reader"][:-3] + "xyz").resolve("team/model:1"),
            Unauthenticated,
            "unknown",
        ),
        (
            lambda: RemoteRegistry(url, t["reader"]).set_alias("team/model:1", "prod"),
            PermissionDenied,
            "needs writer",
        ),
        (
            lambda: RemoteRegistry(url, t["reader"]).register(
                "team/x", kind="model", dataset=("file:///y", 1)
            ),
            PermissionDenied,
            "needs writer",
        ),
        (
            lambda: RemoteRegistry(url, t["writer"]).revoke("team/model:1"),
            PermissionDenied,
            "admin",
        ),
        (
            lambda: RemoteRegistry(url, t["other"]).resolve("team/model:1"),
            PermissionDenied,
            "namespace 'team'",
        ),
        (
            lambda: RemoteRegistry(url, t["writer"]).register(
                "team/../etc", kind="model", dataset=("file:///y", 1)
            ),
            InvalidInput,
            "",
        ),
        (
            lambda: RemoteRegistry(url, t["reader"]).resolve("team/model'; DROP TABLE versions;--"),
            InvalidInput,
            "",
        ),
        (lambda: RemoteRegistry(url, t["reader"]).resolve("team/model:99"), NotFound, "no version"),
        (lambda: RemoteRegistry(url, t["admin"]).create_token("*", "admin"), PermissionDenied, ""),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message or None):
            call()
    # SQL in a filter is data: it matches nothing and breaks nothing
    assert RemoteRegistry(url, t["reader"]).find(tags={"k' OR '1'='1": "v"}) == []
    # oversized request body
    big = httpx.post(
        f"{url}/v1/versions",
        content=b"{" + b" " * (2 << 20) + b"}",
        headers={"authorization": f"Bearer {t['writer']}", "content-type": "application/json"},
    )
    assert big.status_code == 413
    chunked = httpx.post(
        f"{url}/v1/versions",
        content=iter([b"{}"]),
        headers={"authorization": f"Bearer {t['writer']}", "content-type": "application/json"},
    )
    assert chunked.status_code == 411, "no length, no body"
    # expired and revoked tokens
    short, _ = tokens.create_token(reg.engine, "team", "reader", expires_in=0.2)
    time.sleep(0.3)
    with pytest.raises(Unauthenticated, match="expired"):
        RemoteRegistry(url, short).resolve("team/model:1")
    admin = RemoteRegistry(url, t["admin"])
    admin.revoke_token(server["ids"]["reader"])
    with pytest.raises(Unauthenticated, match="revoked"):
        RemoteRegistry(url, t["reader"]).resolve("team/model:1")
    # nothing changed but the token revocation (and its audit record)
    assert [v.number for v in reg.versions("team/model")] == [1]
    assert reg.alias_history("team/model", "prod") == []
    after = [r.action for r in audit.records(reg.engine) if r.seq > before[0]]
    assert after == ["token.create", "token.revoke"]


def test_signed_blob_urls_are_checked(server: dict[str, Any], tmp_path: Path) -> None:
    reg: Registry = server["reg"]
    w = RemoteRegistry(server["url"], server["tokens"]["writer"])
    src = write_files(tmp_path / "m", **{"a.bin": "payload"})
    import hashlib

    sha = hashlib.sha256(b"payload").hexdigest()
    urls = w._call(
        "POST",
        "/v1/uploads",
        json={"name": "team/m", "files": [{"path": "a.bin", "sha256": sha, "size": 7}]},
    )["upload"]
    url = urls[sha]
    forged = url[:-1] + ("0" if url[-1] != "0" else "1")  # one hex digit of the signature
    assert httpx.put(forged, content=b"payload").status_code == 403
    assert httpx.put(url.replace("size=7", "size=8"), content=b"payload").status_code == 403
    wrong = httpx.put(url, content=b"PAYLOAD")
    assert wrong.status_code == 422 and not reg.blobs.has(sha, 7)
    assert httpx.put(url, content=b"payload").status_code == 200 and reg.blobs.has(sha, 7)
    w.register("team/m", [src], kind="model")
    doc = w._call("GET", "/v1/downloads/team/m:1")
    get = doc["files"][0]["url"]
    assert httpx.get(get).content == b"payload"
    assert httpx.get(get.replace("exp=", "exp=1")).status_code == 403
    spec = httpx.get(f"{server['url']}/openapi.json").json()
    assert "/v1/versions" in spec["paths"] and "/v1/tokens" in spec["paths"]


def test_restrictions_follow_lineage_until_declassified(server: dict[str, Any]) -> None:
    """A model trained on a restricted dataset of another namespace is readable only by
    principals who may read that dataset, until an admin of both declassifies it."""
    reg: Registry = server["reg"]
    reg.register(
        "health/records", kind="dataset", dataset=("file:///h", 1), tags={"restricted": "true"}
    )
    reg.register(
        "health/features", kind="dataset", dataset=("file:///f", 1), parents=["health/records:1"]
    )
    reg.register(
        "team/model", kind="model", dataset=("file:///m", 1), parents=["health/features:1"]
    )
    reg.register("team/other", kind="model", dataset=("file:///o", 1))
    assert reg.restrictions("team/model:1") == ["health/records:1"]
    team = RemoteRegistry(server["url"], server["tokens"]["reader"])
    with pytest.raises(PermissionDenied, match="derives from restricted health/records:1"):
        team.resolve("team/model:1")
    with pytest.raises(PermissionDenied, match="restricted"):
        team._call("GET", "/v1/downloads/team/model:1")
    assert team.versions("team/model") == [] and team.resolve("team/other:1").number == 1
    both, _ = tokens.create_token(reg.engine, "team", "reader")
    tokens_health, _ = tokens.create_token(reg.engine, "health", "reader")
    assert RemoteRegistry(server["url"], tokens_health).resolve("health/records:1").number == 1
    with pytest.raises(PermissionDenied):
        RemoteRegistry(server["url"], server["tokens"]["admin"]).declassify(
            "team/model:1", "health/records:1", "aggregated, reviewed"
        )  # a team admin cannot release another namespace's data
    root, _ = tokens.create_token(reg.engine, "*", "admin")
    RemoteRegistry(server["url"], root).declassify(
        "team/model:1", "health/records:1", "aggregated, reviewed by DPO"
    )
    assert RemoteRegistry(server["url"], both).resolve("team/model:1").number == 1
    assert reg.restrictions("team/model:1") == []
    assert audit.records(reg.engine, action="declassify")[0].detail["reason"].startswith("agg")


def test_a_hash_alone_does_not_grant_another_namespaces_blob(
    server: dict[str, Any], tmp_path: Path
) -> None:
    """A writer cannot attach (and then download) a blob of a namespace it may not read by
    naming its sha256; uploading the bytes proves it holds them, and then it may."""
    import hashlib

    reg: Registry = server["reg"]
    secret = write_files(tmp_path / "s", **{"payroll.csv": "name,salary\nann,1\n"})
    v = reg.register("other/payroll", [secret], kind="dataset")
    sha, size = v.files[0].sha256, v.files[0].size
    w = RemoteRegistry(server["url"], server["tokens"]["writer"])
    body = {
        "name": "team/copy",
        "kind": "dataset",
        "files": [{"path": "x.csv", "sha256": sha, "size": size}],
    }
    with pytest.raises(PermissionDenied, match=r"neither one .* uploaded nor one it may read"):
        w._call("POST", "/v1/versions", json=body)
    urls = w._call("POST", "/v1/uploads", json={"name": "team/copy", "files": body["files"]})
    assert sha in urls["upload"], "an existing blob still needs its bytes from this principal"
    wrong = httpx.put(urls["upload"][sha], content=b"x" * size)
    assert wrong.status_code == 422
    with pytest.raises(PermissionDenied):
        w._call("POST", "/v1/versions", json=body)
    ok = httpx.put(urls["upload"][sha], content=(secret / "payroll.csv").read_bytes())
    assert ok.status_code == 200 and ok.json() == {"stored": False}
    assert hashlib.sha256((secret / "payroll.csv").read_bytes()).hexdigest() == sha
    assert w._call("POST", "/v1/versions", json=body)["ref"] == "team/copy:1"
    uploads = audit.records(reg.engine, action="upload")
    assert uploads and uploads[-1].actor == f"token:{server['ids']['writer']}"


def test_a_sealed_s3_store_is_served_opened_and_never_presigned(
    registry_db: str, s3_uri: str, s3_config: Any, tmp_path: Path
) -> None:
    """Client-side encryption through the server: the server holds the key file and opens
    blobs for clients that passed the role check (a presigned S3 URL would hand out
    ciphertext); the bucket holds only ciphertext."""
    from registry import residency
    from registry.envelope import LocalKeyFile, create_key

    blobs = f"{s3_uri}/blobs"
    create_key(tmp_path / "keys.json", "k1")
    residency.set_location(
        Registry(registry_db, str(tmp_path / "x")).engine, blobs, "eu", "aes-gcm", "k1"
    )
    reg = Registry(registry_db, blobs, config=s3_config, keys=LocalKeyFile(tmp_path / "keys.json"))
    with serving(reg) as srv:
        w = RemoteRegistry(srv["url"], srv["tokens"]["writer"])
        body = "confidential weights " * 20_000  # 420 kB
        src = write_files(tmp_path / "m", **{"w.bin": body})
        v = w.register("team/model", [src], kind="model")
        listed = httpx.get(
            f"{srv['url']}/v1/downloads/team/model:1",
            headers={"Authorization": f"Bearer {srv['tokens']['reader']}"},
        ).json()
        assert all(f["url"].startswith(srv["url"]) for f in listed["files"])
        RemoteRegistry(srv["url"], srv["tokens"]["reader"]).download("team/model:1", tmp_path / "o")
        assert (tmp_path / "o" / "w.bin").read_text() == body
        raw = reg.blobs.store.get(reg.blobs.key(v.files[0].sha256))
        assert b"confidential" not in raw and len(raw) > len(body)


def test_a_shared_signing_key_must_be_long_hex(monkeypatch: pytest.MonkeyPatch) -> None:
    from registry.server import _signing_key

    for bad in ("ab", "not hex at all", "00" * 16):
        monkeypatch.setenv("SHARDYARD_SIGNING_KEY", bad)
        with pytest.raises(InvalidInput, match="at least 32 bytes in hex"):
            _signing_key()
    monkeypatch.setenv("SHARDYARD_SIGNING_KEY", "ab" * 32)
    assert _signing_key() == bytes.fromhex("ab" * 32)
    monkeypatch.delenv("SHARDYARD_SIGNING_KEY")
    assert _signing_key() is None


def test_residency_of_derived_data_is_checked_before_upload(
    registry_db: str, tmp_path: Path
) -> None:
    from registry import residency

    us = tmp_path / "us-blobs"
    reg = Registry(registry_db, str(us))
    residency.set_location(reg.engine, str(us), "us-east-1")
    residency.set_location(reg.engine, "s3://eu-data/", "eu-west-1")
    residency.set_residency(reg.engine, "team/eu", ["eu-west-1"])
    reg.register("team/eu/scans", kind="dataset", dataset=("s3://eu-data/scans", 1))
    with serving(reg) as srv:
        w = RemoteRegistry(srv["url"], srv["tokens"]["writer"])
        src = write_files(tmp_path / "m", **{"w.bin": "derived"})
        with pytest.raises(InvalidInput, match="derives from team/eu/scans:1"):
            w.register("team/model", [src], kind="model", parents=["team/eu/scans:1"])
        assert not list(reg.blobs.list()), "refused before any upload URL was issued"
        assert w.register("team/model", [src], kind="model").number == 1


def test_several_worker_processes_share_signed_urls_and_upload_proofs(
    registry_db: str, tmp_path: Path
) -> None:
    """``shardyard serve --workers 2``: a blob URL signed by one worker is honoured by the
    other, and an upload proven to one counts when the other registers the version."""
    import os
    import subprocess
    import sys

    from tests.registry.conftest import _free_port

    blobs = str(tmp_path / "blobs")
    secret, _ = tokens.create_token(Registry(registry_db, blobs).engine, "team", "writer")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "SHARDYARD_REGISTRY": registry_db, "SHARDYARD_REGISTRY_BLOBS": blobs}
    env.pop("SHARDYARD_SIGNING_KEY", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "shardyard", "serve", "--port", str(port), "--workers", "2"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        workers: set[int] = set()
        while len(workers) < 2 and time.monotonic() < deadline:
            try:  # a fresh connection each time: the kernel spreads them over the workers
                workers.add(httpx.get(f"{url}/v1/health", timeout=2).json()["worker"])
            except httpx.HTTPError:
                time.sleep(0.2)
        assert len(workers) == 2, "two worker processes answer"
        # two connections pinned to different workers: URLs signed by one are honoured by
        # the other, and the upload proven to the second lets the first register the version
        auth = {"Authorization": f"Bearer {secret}"}
        first = httpx.Client(base_url=url, headers=auth, timeout=10)
        second = httpx.Client(base_url=url, headers=auth, timeout=10)
        while second.get("/v1/health").json()["worker"] == first.get("/v1/health").json()["worker"]:
            second.close()
            second = httpx.Client(base_url=url, headers=auth, timeout=10)
        data = b"pinned weights" * 1000
        sha = hashlib.sha256(data).hexdigest()
        files = [{"path": "w.bin", "sha256": sha, "size": len(data)}]
        signed = first.post("/v1/uploads", json={"name": "team/pinned", "files": files})
        put = second.put(signed.json()["upload"][sha], content=data)
        assert put.status_code == 200, put.text
        made = first.post(
            "/v1/versions", json={"name": "team/pinned", "kind": "model", "files": files}
        )
        assert made.status_code == 200, made.text
        listed = second.get("/v1/downloads/team/pinned:1").json()["files"][0]["url"]
        assert first.get(listed).content == data
        first.close()
        second.close()
        for i in range(4):  # and the client library, over fresh connections
            src = write_files(tmp_path / f"m{i}", **{"w.bin": f"weights {i}" * 500})
            with RemoteRegistry(url, secret) as w:
                v = w.register("team/model", [src], kind="model")
            with RemoteRegistry(url, secret) as r:
                out = r.download(str(v.ref), tmp_path / f"out{i}")
            assert (out / "w.bin").read_text() == f"weights {i}" * 500
    finally:
        proc.terminate()
        proc.wait(30)
