"""Governance on both SQL backends: the hash-chained audit trail (every change recorded in its
own transaction; edits, insertions, removals and a cut tail detected) and API tokens (hashed,
scoped, expiring, revocable; roles)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, insert, text, update

from datastore.errors import InvalidInput, NotFound, PermissionDenied, Unauthenticated
from registry import Registry, audit, tokens
from registry import schema as t
from tests.registry.conftest import write_files


def _activity(reg: Any, tmp_path: Path) -> None:
    src = write_files(tmp_path / "m", **{"w.bin": "weights"})
    reg.register("team/data", kind="dataset", dataset=("file:///d", 1))
    reg.register("team/model", [src], kind="model", parents=["team/data:1"])
    reg.register("team/model", [src], kind="model")
    reg.set_alias("team/model:1", "production")
    reg.release(["team/model:2", "team/data:1"], "staging")
    reg.link("team/data:1", "team/model:2")
    reg.download("team/model:2", tmp_path / "out")
    reg.revoke("team/model:1", "bad eval")


def test_every_change_is_recorded_and_the_chain_verifies(
    client: Any, reg: Registry, tmp_path: Path
) -> None:
    """In both modes; through the server, its own records (token creation, blob uploads)
    interleave."""
    _activity(client, tmp_path)
    mine = [r for r in audit.records(reg.engine) if r.action not in ("token.create", "upload")]
    got = [(r.action, r.target) for r in mine]
    assert got == [
        ("register", "team/data:1"),
        ("register", "team/model:1"),
        ("register", "team/model:2"),
        ("alias", "team/model@production"),
        ("release", "team/model@staging"),
        ("release", "team/data@staging"),
        ("link", "team/model:2"),
        ("download", "team/model:2"),
        ("revoke", "team/model:1"),
    ]
    total = len(audit.records(reg.engine))
    assert [r.seq for r in audit.records(reg.engine)] == list(range(1, total + 1))
    assert audit.verify(reg.engine) == (total, [])
    assert len({r.actor for r in mine}) == 1, "one actor: the local user, or the token's"
    regs = audit.records(reg.engine, target="team/model", action="register")
    assert [r.target for r in regs] == ["team/model:1", "team/model:2"]
    assert audit.records(reg.engine, actor="nobody") == []
    assert audit.records(reg.engine, since=time.time() + 60) == []
    assert audit.head(reg.engine)[0] == total


@pytest.mark.parametrize("tamper", ["edit", "remove", "insert", "truncate", "reorder"])
def test_tampering_with_the_table_is_detected(reg: Registry, tmp_path: Path, tamper: str) -> None:
    _activity(reg, tmp_path)
    a = t.audit.c
    with reg.engine.begin() as conn:
        if tamper == "edit":  # someone hides who revoked what
            conn.execute(update(t.audit).where(a.seq == 4).values(actor="someone-else"))
        elif tamper == "remove":
            conn.execute(delete(t.audit).where(a.seq == 5))
        elif tamper == "insert":  # a forged record with a correct-looking hash of its own
            conn.execute(update(t.audit).where(a.seq >= 6).values(seq=a.seq + 100))
            conn.execute(
                insert(t.audit).values(
                    seq=6,
                    at=time.time(),
                    actor="x",
                    action="alias",
                    target="team/model@prod",
                    detail="{}",
                    prev="0" * 64,
                    hash="f" * 64,
                )
            )
        elif tamper == "truncate":
            conn.execute(delete(t.audit).where(a.seq >= 8))
        else:
            conn.execute(text("UPDATE audit SET at = at + 1000 WHERE seq = 2"))
    _, problems = audit.verify(reg.engine)
    assert problems, tamper
    first = problems[0]
    expect = {"edit": 4, "remove": 6, "insert": 6, "truncate": 9, "reorder": 2}[tamper]
    assert first.seq == expect, (tamper, [str(p) for p in problems])


def test_tokens_scope_roles_expiry_and_revocation(reg: Registry) -> None:
    engine = reg.engine
    reader, r_info = tokens.create_token(engine, "team", "reader")
    writer, _ = tokens.create_token(engine, "team/nlp", "writer", note="ci")
    admin, a_info = tokens.create_token(engine, "team", "admin")
    short, _ = tokens.create_token(engine, "team", "reader", expires_in=0.2)
    p = tokens.authenticate(engine, reader)
    assert (p.namespace, p.role) == ("team", "reader") and p.actor == f"token:{r_info.id}"
    p.require("team/nlp", "reader")  # a sub-namespace is in scope
    with pytest.raises(PermissionDenied, match="needs writer"):
        p.require("team", "writer")
    w = tokens.authenticate(engine, writer)
    w.require("team/nlp", "writer")
    with pytest.raises(PermissionDenied, match="scoped to 'team/nlp'"):
        w.require("team", "reader")
    with pytest.raises(PermissionDenied):
        w.require("team/nlpx", "reader")  # a prefix of the name is not a parent namespace
    for bad, why in [
        (None, "no API token"),
        ("", "no API token"),
        ("Bearer xyz", "malformed"),
        (reader[:-2] + "zz", "unknown"),
        ("sy_000000000000_" + "a" * 40, "unknown"),
        ("sy_' OR 1=1 --_" + "a" * 30, "malformed"),
    ]:
        with pytest.raises(Unauthenticated, match=why):
            tokens.authenticate(engine, bad)
    time.sleep(0.3)
    with pytest.raises(Unauthenticated, match="expired"):
        tokens.authenticate(engine, short)
    boss = tokens.authenticate(engine, admin)
    tokens.revoke_token(engine, r_info.id, by=boss)
    with pytest.raises(Unauthenticated, match="revoked"):
        tokens.authenticate(engine, reader)
    with pytest.raises(PermissionDenied):
        tokens.create_token(engine, "*", "admin", by=boss)
    with pytest.raises(PermissionDenied):
        tokens.create_token(engine, "other", "reader", by=boss)
    with pytest.raises(PermissionDenied):
        tokens.revoke_token(engine, a_info.id, by=w)
    with pytest.raises(NotFound):
        tokens.revoke_token(engine, "ffffffffffff", by=boss)
    with pytest.raises(InvalidInput, match="role"):
        tokens.create_token(engine, "team", "owner")
    with pytest.raises(InvalidInput):
        tokens.create_token(engine, "../etc", "reader")
    listed = {i.id for i in tokens.list_tokens(engine, by=boss)}
    assert a_info.id in listed and len(listed) == 4
    with reg.engine.connect() as conn:
        stored = {r[0] for r in conn.execute(text("SELECT secret_sha256 FROM tokens"))}
    assert not any(admin.split("_", 2)[2] in s for s in stored), "only hashes are stored"
    actions = [r.action for r in audit.records(engine)]
    assert actions.count("token.create") == 4 and actions.count("token.revoke") == 1
    assert audit.verify(engine)[1] == []


def test_durations() -> None:
    assert tokens.parse_duration("30d") == 30 * 86400
    assert tokens.parse_duration("1w2d") == 9 * 86400
    assert tokens.parse_duration("90m") == 5400
    for bad in ("", "ten days", "5y", "3d junk"):
        with pytest.raises(InvalidInput):
            tokens.parse_duration(bad)


def test_deletion_respects_legal_holds_and_keeps_the_record(
    client: Any, reg: Registry, tmp_path: Path
) -> None:
    from datastore.errors import PreconditionFailed

    src = write_files(tmp_path / "m", **{"w.bin": "weights v1"})
    client.register("team/model", [src], kind="model")
    (src / "w.bin").write_text("weights v2")
    client.register("team/model", [src], kind="model")
    artifact_hold = client.hold("team/model:1", "case 42", whole_artifact=True)
    version_hold = client.hold("team/model:1", "ticket 7")
    assert [(h["id"], h["version"]) for h in client.holds("team/model")] == [
        (artifact_hold, None),
        (version_hold, 1),
    ]
    for ref in ("team/model:1", "team/model:2"):
        with pytest.raises(PreconditionFailed, match=f"legal hold {artifact_hold}"):
            client.delete(ref, "gdpr request")
    client.release_hold(artifact_hold, "team/model")
    with pytest.raises(NotFound):
        client.release_hold(artifact_hold, "team/model")
    with pytest.raises(PreconditionFailed, match=f"legal hold {version_hold}"):
        client.delete("team/model:1", "gdpr request")
    gone = client.delete("team/model:2", "gdpr request")
    assert gone.files == () and gone.revoked_at is not None, "files gone, version kept, revoked"
    with pytest.raises(InvalidInput, match="revoked"):
        client.download("team/model:2", tmp_path / "out")
    assert reg.gc(grace=0).deleted == 1, "its blob is garbage now"
    assert client.resolve("team/model:1").files, "the held version keeps its files"
    with pytest.raises(InvalidInput, match="reason"):
        client.delete("team/model:1", " ")
    actions = [r.action for r in audit.records(reg.engine) if r.action != "download"]
    assert actions[-5:] == ["hold", "hold", "hold.release", "delete", "gc.delete"]
    assert audit.verify(reg.engine)[1] == []


def test_residency_refuses_locations_outside_the_allowed_regions(
    registry_db: str, tmp_path: Path
) -> None:
    from registry import residency

    eu = tmp_path / "eu-blobs"
    us = tmp_path / "us-blobs"
    reg_us = Registry(registry_db, str(us))
    residency.set_location(reg_us.engine, str(eu), "eu-west-1")
    residency.set_location(reg_us.engine, str(us), "us-east-1")
    residency.set_location(reg_us.engine, "s3://eu-data/", "eu-west-1", "sse-s3")
    residency.set_residency(reg_us.engine, "health", ["eu-west-1"])
    src = write_files(tmp_path / "m", **{"w.bin": "patient model"})
    with pytest.raises(
        InvalidInput,
        match=r"namespace 'health' keeps data only in eu-west-1; "
        r"blob store .* is in us-east-1",
    ):
        reg_us.register("health/cardio/model", [src], kind="model")  # sub-namespace too
    assert not list(reg_us.blobs.list()), "refused before any byte was stored"
    with pytest.raises(InvalidInput, match="in no declared location"):
        reg_us.register("health/data", kind="dataset", dataset=("s3://other/x", 1))
    reg_us.register("health/data", kind="dataset", dataset=("s3://eu-data/x", 1))
    reg_us.register("public/model", [src], kind="model")  # no policy there
    reg_eu = Registry(registry_db, str(eu))
    assert reg_eu.register("health/cardio/model", [src], kind="model").number == 1
    with pytest.raises(InvalidInput, match="encryption"):
        residency.set_location(reg_us.engine, str(eu), "eu-west-1", "rot13")
    with pytest.raises(InvalidInput, match="KMS key"):
        residency.set_location(reg_us.engine, str(eu), "eu-west-1", "sse-kms")
    actions = [r.action for r in audit.records(reg_us.engine)]
    assert actions.count("location.set") == 3 and "residency.set" in actions


def test_a_declared_sse_location_makes_the_blob_store_send_sse(reg: Registry) -> None:
    from registry import residency
    from registry.registry import _encrypted

    residency.set_location(reg.engine, "s3://k/", "eu-west-1", "sse-kms", kms_key_id="key-1")
    residency.set_location(reg.engine, "s3://s/", "eu-west-1", "sse-s3")

    def encrypted(uri: str) -> Any:
        with reg.engine.connect() as conn:
            return _encrypted(residency.location_of(conn, uri), uri, None, None)

    kms, sealer = encrypted("s3://k/blobs")
    assert kms is not None and (kms.sse, kms.sse_kms_key_id) == ("aws:kms", "key-1")
    assert sealer is None
    sse, _ = encrypted("s3://s/blobs")
    assert sse is not None and sse.sse == "AES256"
    assert encrypted("s3://plain/blobs") == (None, None)


def test_residency_follows_lineage_to_what_is_derived(registry_db: str, tmp_path: Path) -> None:
    from registry import residency

    us = tmp_path / "us-blobs"
    reg = Registry(registry_db, str(us))
    residency.set_location(reg.engine, str(us), "us-east-1")
    residency.set_location(reg.engine, "s3://eu-data/", "eu-west-1")
    residency.set_residency(reg.engine, "health", ["eu-west-1"])
    reg.register("health/scans", kind="dataset", dataset=("s3://eu-data/scans", 1))
    # a token dataset made from it, registered elsewhere, holding no files: nothing to check
    reg.register(
        "ml/tokens", kind="dataset", dataset=("s3://eu-data/tok", 1), parents=["health/scans:1"]
    )
    src = write_files(tmp_path / "m", **{"w.bin": "trained on scans"})
    head = audit.head(reg.engine)
    for parents in (["health/scans:1"], ["ml/tokens:1"]):  # a parent, and a grandparent
        with pytest.raises(
            InvalidInput,
            match=r"namespace 'health' keeps data only in eu-west-1 \(this derives from "
            r"health/scans:1.*blob store .* is in us-east-1",
        ):
            reg.register("ml/model", [src], kind="model", parents=parents)
    with pytest.raises(InvalidInput, match="derives from health/scans:1"):
        reg.register("ml/tok2", kind="dataset", dataset=("s3://us/tok", 1), parents=parents)
    assert not list(reg.blobs.list()) and audit.head(reg.engine) == head
    # registered without lineage, then linked: the edge is refused, nothing recorded
    reg.register("ml/model", [src], kind="model")
    with pytest.raises(InvalidInput, match="derives from health/scans:1"):
        reg.link("ml/tokens:1", "ml/model:1")
    assert reg.lineage("ml/model:1").ids() == []
    # moved to where the policy allows, the same registration goes through
    residency.set_location(reg.engine, str(us), "eu-west-1")
    assert reg.register("ml/model", [src], kind="model", parents=["ml/tokens:1"]).number == 2
    reg.link("ml/tokens:1", "ml/model:1")
