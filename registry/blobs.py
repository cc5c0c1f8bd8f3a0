"""Content-addressed blobs in any datastore location (a local directory or ``s3://``).

A file is stored once under ``blobs/sha256/<2 hex>/<sha256>``, however many versions hold it:
a checkpoint that changed only some shards uploads only those. Uploads stream through the
store's writer (multipart with per-part checksums on S3) and publish atomically, so a blob key
either holds the whole file or nothing; downloads are verified against the sha256 before the
file appears at its destination.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from datastore import StorageConfig, open_store
from datastore.errors import Corrupt, InvalidInput, NotFound
from datastore.store import ObjectInfo

__all__ = ["BlobStore", "sha256_file"]

_CHUNK = 8 << 20


def sha256_file(path: Path) -> tuple[str, int]:
    """(hex sha256, size) of the file at ``path``."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


class BlobStore:
    """Blobs under ``uri`` (``StorageConfig`` for S3)."""

    PREFIX = "blobs/sha256/"

    def __init__(self, uri: str, config: StorageConfig | None = None) -> None:
        self.uri = uri
        self.store = open_store(uri, config)

    MARKER = "REGISTRY.json"

    def claim_for(self, registry_id: str, database: str) -> None:
        """Record that this blob store belongs to registry ``registry_id``; refuse if it
        belongs to another (a GC through the wrong database would delete its blobs)."""
        import json

        from datastore.errors import AlreadyExists

        doc = json.dumps({"registry": registry_id, "database": database}).encode()
        try:
            self.store.put(self.MARKER, doc, mode="create")
            return
        except AlreadyExists:
            pass
        found = json.loads(self.store.get(self.MARKER))
        if found.get("registry") != registry_id:
            raise InvalidInput(
                f"blob store {self.uri} belongs to the registry in {found.get('database')!r} "
                f"(id {found.get('registry')}), not to {database!r}: pass that registry's "
                "--registry, or another --blobs"
            )

    def key(self, sha256: str) -> str:
        return f"{self.PREFIX}{sha256[:2]}/{sha256}"

    def has(self, sha256: str, size: int) -> bool:
        """Whether the blob is stored whole (its size matches)."""
        try:
            return self.store.head(self.key(sha256)).size == size
        except NotFound:
            return False

    def put_file(self, path: Path, sha256: str | None = None) -> tuple[str, int, bool]:
        """Store the file at ``path``; (sha256, size, uploaded: False when already stored).
        ``sha256`` skips hashing when the caller computed it."""
        if not path.is_file():
            raise InvalidInput(f"{path} is not a file: register files or directories of them")
        if sha256 is None:
            sha256, size = sha256_file(path)
        else:
            size = path.stat().st_size
        if self.has(sha256, size):
            return sha256, size, False
        writer = self.store.open_writer(self.key(sha256), content_type="application/octet-stream")
        h = hashlib.sha256()
        try:
            with open(path, "rb") as f:
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
                    writer.write(chunk)
            if h.hexdigest() != sha256:  # the file changed while we read it
                raise InvalidInput(
                    f"{path} changed while it was uploaded (sha256 {h.hexdigest()} instead of "
                    f"{sha256}); register it again once it is complete"
                )
            writer.commit()
        except BaseException:
            writer.abort()
            raise
        return sha256, size, True

    def get_to_file(self, sha256: str, size: int, dest: Path) -> None:
        """Download the blob to ``dest``, verified: a mismatch raises Corrupt and leaves
        nothing at ``dest``."""
        try:
            data = self.store.read_buffer(self.key(sha256), size)
        except NotFound:
            raise NotFound(
                f"blob {sha256} is missing from {self.uri}: the registry's blob store lost "
                "it (deleted outside the registry?)"
            ) from None
        got = hashlib.sha256(memoryview(data)).hexdigest()
        if got != sha256 or len(data) != size:
            raise Corrupt(
                f"blob {self.store.uri_of(self.key(sha256))} does not match its checksum "
                f"(sha256 {got}, {len(data)} bytes; expected {sha256}, {size} bytes)"
            )
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(memoryview(data))
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def delete(self, sha256: str) -> None:
        self.store.delete(self.key(sha256))

    def list(self) -> Iterator[ObjectInfo]:
        """Every stored blob (key, size, mtime)."""
        yield from self.store.list(self.PREFIX)
