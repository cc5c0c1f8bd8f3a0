"""Client-side envelope encryption of blobs (AES-256-GCM, a data key per blob wrapped by a key
from the local key file): the sealed format on its own, then a registry whose blob store is in
an ``aes-gcm`` location, on a local directory and on the suite's S3 server, on both SQL
backends. Storage must only ever hold ciphertext, and any change to it must fail the read."""

from __future__ import annotations

import io
import json
import os
import random
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datastore import StorageConfig
from datastore.errors import Corrupt, InvalidInput, NotFound
from registry import Registry, residency
from registry.envelope import HEADER_SIZE, LocalKeyFile, Sealer, create_key
from tests.registry.conftest import write_files

SHA = "ab" * 32


def _keys(tmp_path: Path, *ids: str) -> LocalKeyFile:
    path = tmp_path / "keys" / "keys.json"
    for key_id in ids:
        create_key(path, key_id)
    return LocalKeyFile(path)


def _seal(sealer: Sealer, data: bytes, sha: str = SHA, pieces: int = 3) -> bytes:
    out = io.BytesIO()
    w = sealer.writer(sha, out.write)
    cuts = sorted(random.Random(len(data)).sample(range(len(data) + 1), min(pieces, len(data))))
    at = 0
    for cut in [*cuts, len(data)]:
        w.write(data[at:cut])
        at = cut
    w.close()
    return out.getvalue()


def _open(sealer: Sealer, blob: bytes, size: int, sha: str = SHA) -> bytes:
    def read(offset: int, length: int) -> bytes:
        return blob[offset : offset + length]

    return b"".join(sealer.open_stream(sha, size, read, "test blob", len(blob)))


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=3500), st.integers(1, 6))
def test_sealing_round_trips_any_size_written_in_any_pieces(data: bytes, pieces: int) -> None:
    sealer = Sealer(_FIXED_KEYS, "k1", chunk=1000)
    blob = _seal(sealer, data, pieces=pieces)
    assert len(blob) == sealer.sealed_size(len(data))
    assert _open(sealer, blob, len(data)) == data


class _Fixed(LocalKeyFile):
    """A key provider with one fixed key (the property test runs without files)."""

    def __init__(self) -> None:
        super().__init__("unused")
        self._keys = {"k1": bytes(range(32)), "k2": bytes(range(1, 33))}


_FIXED_KEYS = _Fixed()


def test_any_change_to_a_sealed_blob_fails_its_read() -> None:
    sealer = Sealer(_FIXED_KEYS, "k1", chunk=1000)
    data = os.urandom(2500)  # three chunks: 1000, 1000, 500
    blob = _seal(sealer, data)
    assert data[:64] not in blob
    step = 1000 + 16
    for at in [0, 20, 50, HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + step + 7, len(blob) - 1]:
        bad = bytearray(blob)
        bad[at] ^= 1
        with pytest.raises(Corrupt):
            _open(sealer, bytes(bad), len(data))
    # the last chunk dropped, the length claimed to match: the second chunk is not marked last
    cut = blob[: HEADER_SIZE + 2 * step]
    with pytest.raises(Corrupt, match="chunk 1 of 2 fails authentication"):
        _open(sealer, cut, 2000)
    # two chunks swapped
    swapped = blob[:HEADER_SIZE] + blob[HEADER_SIZE + step : HEADER_SIZE + 2 * step]
    swapped += blob[HEADER_SIZE : HEADER_SIZE + step] + blob[HEADER_SIZE + 2 * step :]
    with pytest.raises(Corrupt, match="chunk 0 of 3"):
        _open(sealer, swapped, len(data))
    # the blob presented under another name (its header moved onto another blob's key)
    with pytest.raises(Corrupt, match="data key"):
        _open(sealer, blob, len(data), sha="cd" * 32)
    with pytest.raises(Corrupt, match="cut short, extended"):
        _open(sealer, blob + b"x", len(data))
    # a blob sealed with k1 opens through a sealer that now seals with k2 (rotation)
    assert _open(Sealer(_FIXED_KEYS, "k2", chunk=1000), blob, len(data)) == data


def test_the_key_file_is_private_and_names_its_keys(tmp_path: Path) -> None:
    keys = _keys(tmp_path, "k1")
    assert stat.S_IMODE(keys.path.stat().st_mode) == 0o600
    with pytest.raises(InvalidInput, match="already holds key 'k1'"):
        create_key(keys.path, "k1")
    with pytest.raises(InvalidInput, match="key id"):
        create_key(keys.path, "no spaces")
    with pytest.raises(NotFound, match="key 'k9' is not in key file"):
        Sealer(keys, "k9").writer(SHA, lambda b: None)
    keys.path.chmod(0o644)
    with pytest.raises(InvalidInput, match=r"readable by others .*chmod 600"):
        Sealer(LocalKeyFile(keys.path), "k1").writer(SHA, lambda b: None)
    with pytest.raises(NotFound, match=r"no key file at .*SHARDYARD_KEY_FILE"):
        Sealer(LocalKeyFile(tmp_path / "none.json"), "k1").writer(SHA, lambda b: None)


@pytest.fixture
def blob_uri(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if backend == "local":
        return str(tmp_path / "sealed-blobs")
    return f"{request.getfixturevalue('s3_uri')}/blobs"


def test_a_sealed_location_stores_only_ciphertext(
    registry_db: str,
    blob_uri: str,
    storage: StorageConfig | None,
    tmp_path: Path,
) -> None:
    keys = _keys(tmp_path, "k1")
    plain = Registry(registry_db, str(tmp_path / "unused"))
    residency.set_location(plain.engine, blob_uri, "eu-west-1", "aes-gcm", "k1")
    reg = Registry(registry_db, blob_uri, config=storage, keys=keys)
    assert reg.blobs.sealer is not None and not reg.blobs.is_local
    secret = "patient 4711: diagnosis " * 400  # ~9.6 kB, one chunk
    src = write_files(tmp_path / "m", **{"notes.txt": secret, "empty.bin": ""})
    v1 = reg.register("health/notes", [src], kind="dataset")
    objects = {o.key: reg.blobs.store.get(o.key) for o in reg.blobs.list()}
    assert len(objects) == 2
    for f in v1.files:
        raw = objects[reg.blobs.key(f.sha256)]
        assert len(raw) == reg.blobs.sealer.sealed_size(f.size)
        assert b"patient" not in raw and b"diagnosis" not in raw
    reg.download("health/notes:1", tmp_path / "out")
    assert (tmp_path / "out" / "notes.txt").read_text() == secret
    assert (tmp_path / "out" / "empty.bin").read_bytes() == b""
    # the same file again is found sealed in the store, not stored a second time
    before = {o.key: o.mtime for o in reg.blobs.list()}
    reg.register("health/notes", [src], kind="dataset")
    assert {o.key: o.mtime for o in reg.blobs.list()} == before

    # rotation: new blobs sealed with k2, old ones still open
    create_key(keys.path, "k2")
    residency.set_location(plain.engine, blob_uri, "eu-west-1", "aes-gcm", "k2")
    rotated = Registry(registry_db, blob_uri, config=storage, keys=LocalKeyFile(keys.path))
    (src / "notes.txt").write_text("second visit")
    v3 = rotated.register("health/notes", [src], kind="dataset")
    new = next(f for f in v3.files if f.path == "notes.txt")
    header = rotated.blobs.store.get(rotated.blobs.key(new.sha256))[:HEADER_SIZE]
    assert b"k2\0" in header
    rotated.download("health/notes:1", tmp_path / "old")
    assert (tmp_path / "old" / "notes.txt").read_text() == secret

    # a damaged byte in storage fails the download and leaves nothing at the destination
    key = reg.blobs.key(new.sha256)
    raw = bytearray(rotated.blobs.store.get(key))
    raw[-3] ^= 0xFF
    rotated.blobs.store.put(key, bytes(raw))
    with pytest.raises(Corrupt, match="fails authentication"):
        rotated.download("health/notes:3", tmp_path / "bad")
    assert not (tmp_path / "bad" / "notes.txt").exists()

    # no key file: the blobs cannot be read, and the error says what to do
    blind = Registry(
        registry_db, blob_uri, config=storage, keys=LocalKeyFile(tmp_path / "missing.json")
    )
    with pytest.raises(NotFound, match=r"no key file at .*SHARDYARD_KEY_FILE"):
        blind.download("health/notes:1", tmp_path / "blind")


def test_blobs_stored_before_encryption_stay_readable_and_are_sealed_when_stored_again(
    registry_db: str, tmp_path: Path
) -> None:
    blobs = str(tmp_path / "blobs")
    before = Registry(registry_db, blobs)
    src = write_files(tmp_path / "m", **{"a.txt": "plain before the policy"})
    before.register("team/a", [src], kind="dataset")
    residency.set_location(before.engine, blobs, "eu-west-1", "aes-gcm", "k1")
    reg = Registry(registry_db, blobs, keys=_keys(tmp_path, "k1"))
    reg.download("team/a:1", tmp_path / "out")
    assert (tmp_path / "out" / "a.txt").read_text() == "plain before the policy"
    reg.register("team/a", [src], kind="dataset")  # stored again, sealed this time
    (obj,) = list(reg.blobs.list())
    assert b"plain before" not in reg.blobs.store.get(obj.key)
    reg.download("team/a:1", tmp_path / "again")
    assert (tmp_path / "again" / "a.txt").read_text() == "plain before the policy"


def test_checkpoints_save_and_load_through_a_sealed_store(registry_db: str, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from registry import checkpoints

    blobs = str(tmp_path / "blobs")
    residency.set_location(Registry(registry_db, blobs).engine, blobs, "eu", "aes-gcm", "k1")
    reg = Registry(registry_db, blobs, keys=_keys(tmp_path, "k1"))
    state = {"w": torch.arange(50_000, dtype=torch.float32), "b": torch.ones(7)}
    (tmp_path / "tmp").mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
        checkpoints.save(reg, state, "team/ckpt", step=1, shard_bytes=64_000)
    assert not list((tmp_path / "tmp").iterdir()), "no plaintext staged on local disk"
    assert not list((tmp_path / "blobs").glob("staging/shardyard-stage-*"))
    for obj in reg.blobs.list():  # no plaintext shard in the store
        raw = reg.blobs.store.get(obj.key)
        assert b"safetensors" not in raw and bytes(state["w"][:64].numpy().data) not in raw
    loaded = checkpoints.load(reg, "team/ckpt:1")
    assert set(loaded) == {"w", "b"}
    assert torch.equal(loaded["w"], state["w"]) and torch.equal(loaded["b"], state["b"])


def test_location_set_for_aes_gcm_needs_a_key_id(registry_db: str, tmp_path: Path) -> None:
    reg = Registry(registry_db, str(tmp_path / "blobs"))
    with pytest.raises(InvalidInput, match="aes-gcm needs the id"):
        residency.set_location(reg.engine, str(tmp_path / "x"), "eu", "aes-gcm")
    loc = residency.set_location(reg.engine, str(tmp_path / "x"), "eu", "aes-gcm", "k1")
    assert (loc.encryption, loc.kms_key_id) == ("aes-gcm", "k1")


def test_cli_creates_keys_and_declares_a_sealed_location(tmp_path: Path) -> None:
    import subprocess
    import sys

    env = {
        **os.environ,
        "SHARDYARD_HOME": str(tmp_path / "home"),
        "SHARDYARD_KEY_FILE": str(tmp_path / "keys.json"),
    }
    run = [sys.executable, "-m", "shardyard"]

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*run, *args], env=env, capture_output=True, text=True)

    made = cli("registry", "key", "create", "k1")
    assert made.returncode == 0, made.stderr
    assert set(json.loads((tmp_path / "keys.json").read_text())["keys"]) == {"k1"}
    again = cli("registry", "key", "create", "k1")
    assert again.returncode != 0 and "already holds key 'k1'" in again.stderr
    assert "Traceback" not in again.stderr
    blobs = str(tmp_path / "home" / "blobs")
    bad = cli("registry", "location", "set", blobs, "--region", "eu", "--encryption", "aes-gcm")
    assert bad.returncode != 0 and "--key-id" in bad.stderr and "Traceback" not in bad.stderr
    ok = cli(
        "registry", "location", "set", blobs, "--region", "eu", "--encryption", "aes-gcm",
        "--key-id", "k1",
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    src = write_files(tmp_path / "m", **{"x.txt": "sealed through the CLI"})
    reg_out = cli("registry", "register", "team/x", str(src), "--kind", "dataset")
    assert reg_out.returncode == 0, reg_out.stderr
    raw = b"".join(p.read_bytes() for p in (tmp_path / "home" / "blobs").rglob("*") if p.is_file())
    assert b"sealed through" not in raw
    got = cli("registry", "download", "team/x:1", str(tmp_path / "out"))
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "out" / "x.txt").read_text() == "sealed through the CLI"


def test_a_process_opened_before_encryption_never_writes_plaintext_over_sealed_blobs(
    registry_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server or job that opened the registry before `location set --encryption aes-gcm`
    does not know to seal: it must find the sealed blob present (not overwrite it with
    plaintext) and still open it with the key file."""
    keys = _keys(tmp_path, "k1")
    monkeypatch.setenv("SHARDYARD_KEY_FILE", str(keys.path))
    blobs = str(tmp_path / "blobs")
    stale = Registry(registry_db, blobs)  # opened first: no sealer
    residency.set_location(stale.engine, blobs, "eu", "aes-gcm", "k1")
    fresh = Registry(registry_db, blobs)
    src = write_files(tmp_path / "m", **{"w.bin": "secret weights " * 100, "t.txt": "abc"})
    fresh.register("team/m", [src], kind="model")
    before = {o.key: o.size for o in fresh.blobs.list()}
    stale.register("team/m", [src], kind="model")  # same files through the stale process
    after = {o.key: o.size for o in stale.blobs.list()}
    assert after == before, "nothing rewritten"
    for o in stale.blobs.list():
        assert b"secret weights" not in stale.blobs.store.get(o.key)
    stale.download("team/m:2", tmp_path / "out")  # opened with the key file, tiny one too
    assert (tmp_path / "out" / "w.bin").read_text() == "secret weights " * 100
    assert (tmp_path / "out" / "t.txt").read_text() == "abc"
    # and a new file through the stale process is sealed: it follows the location now
    new = write_files(tmp_path / "n", **{"x.bin": "fresh secret " * 50})
    v = stale.register("team/m", [new], kind="model")
    raw = stale.blobs.store.get(stale.blobs.key(v.files[0].sha256))
    assert b"fresh secret" not in raw and stale.blobs.sealer is not None


def test_checkpoints_reuse_shards_stored_before_the_location_was_encrypted(
    registry_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch = pytest.importorskip("torch")
    from registry import checkpoints

    blobs = str(tmp_path / "blobs")
    plain = Registry(registry_db, blobs)
    state = {"a": torch.arange(30_000, dtype=torch.float32), "b": torch.zeros(30_000)}
    checkpoints.save(plain, state, "team/ckpt", step=1, shard_bytes=100_000)
    residency.set_location(plain.engine, blobs, "eu", "aes-gcm", "k1")
    sealed = Registry(registry_db, blobs, keys=_keys(tmp_path, "k1"))
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    state["b"] = torch.ones(30_000)  # shard of "a" unchanged: reused as it is (plain)
    checkpoints.save(sealed, state, "team/ckpt", step=2, shard_bytes=100_000)
    assert not list((tmp_path / "tmp").iterdir()), "no plaintext staged on local disk"
    for ref, b in (("team/ckpt:1", 0.0), ("team/ckpt:2", 1.0)):
        loaded = checkpoints.load(sealed, ref)
        assert torch.equal(loaded["a"], state["a"]) and float(loaded["b"][0]) == b
