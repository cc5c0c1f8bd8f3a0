"""The blob store on every datastore backend (a local directory and SeaweedFS S3): dedup,
verified downloads, a large file through the multipart writer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from datastore import StorageConfig
from datastore.errors import Corrupt
from registry import Registry


def test_register_and_download_on_every_backend(
    root_uri: str, storage: StorageConfig | None, tmp_path: Path
) -> None:
    reg = Registry(str(tmp_path / "r.db"), root_uri, config=storage)
    big = tmp_path / "src" / "big.bin"
    big.parent.mkdir()
    big.write_bytes(os.urandom(12 << 20))  # above the multipart part size on S3
    (tmp_path / "src" / "small.txt").write_text("hello")
    v1 = reg.register("m", [tmp_path / "src"], kind="model")
    v2 = reg.register("m", [tmp_path / "src"], kind="model")
    assert v1.digest == v2.digest and len(list(reg.blobs.list())) == 2, "stored once"
    out = reg.download("m:2", tmp_path / "out")
    assert (out / "big.bin").read_bytes() == big.read_bytes()
    assert (out / "small.txt").read_text() == "hello"
    small = next(f for f in v1.files if f.path == "small.txt")
    reg.blobs.store.put(reg.blobs.key(small.sha256), b"jello")  # same size, other bytes
    with pytest.raises(Corrupt, match="does not match its checksum"):
        reg.download("m:1", tmp_path / "again")


def test_large_blobs_stream_to_disk_verified(
    root_uri: str,
    storage: StorageConfig | None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Above STREAM_ABOVE a download goes window by window through a temporary file: same
    bytes, same checks (a same-size substitute and a longer object are both refused, and
    nothing is left at the destination)."""
    from registry.blobs import BlobStore

    monkeypatch.setattr(BlobStore, "STREAM_ABOVE", 1 << 20)
    monkeypatch.setattr(BlobStore, "_WINDOW", 300_000)
    reg = Registry(str(tmp_path / "r.db"), root_uri, config=storage)
    src = tmp_path / "w.bin"
    src.write_bytes(os.urandom(3_000_001))
    v = reg.register("m", [src], kind="model")
    out = reg.download("m:1", tmp_path / "out")
    assert (out / "w.bin").read_bytes() == src.read_bytes()
    key = reg.blobs.key(v.files[0].sha256)
    data = bytearray(src.read_bytes())
    data[2_000_000] ^= 1
    reg.blobs.store.put(key, bytes(data))
    with pytest.raises(Corrupt, match="does not match its checksum"):
        reg.download("m:1", tmp_path / "bad")
    assert not (tmp_path / "bad" / "w.bin").exists()
    assert [p.name for p in (tmp_path / "bad").iterdir()] == [], "no temporary left"
    reg.blobs.store.put(key, src.read_bytes() + b"tail")
    with pytest.raises(Corrupt):
        reg.download("m:1", tmp_path / "long")
