"""Content-addressed blobs in any datastore location (a local directory or ``s3://``).

A file is stored once under ``blobs/sha256/<2 hex>/<sha256>``, however many versions hold it:
a checkpoint that changed only some shards uploads only those. Uploads stream through the
store's writer (multipart with per-part checksums on S3) and publish atomically, so a blob key
either holds the whole file or nothing; downloads are verified against the sha256 before the
file appears at its destination. A store in a location declared with client-side encryption
holds sealed blobs (:mod:`registry.envelope`): bytes are sealed on the way in and opened on the
way out, and no plaintext file is ever kept in it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from datastore import StorageConfig, open_store
from datastore.errors import Corrupt, InvalidInput, NotFound
from datastore.store import ObjectInfo
from registry.envelope import MAGIC, LocalKeyFile, Sealer, sealed_size

if TYPE_CHECKING:
    import pyarrow as pa

    from datastore._local import LocalStore

__all__ = ["BlobStore", "BlobWriter", "Staged", "sha256_file"]

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


@dataclass(frozen=True)
class Staged:
    """A file a writer already hashed, to be held by a version at ``path``.

    ``source`` is the file: copied into the blob store (checked again against the sha256 on
    the way), or, when ``owned``, a complete fsynced file the registration consumes (moved into
    a local blob store by rename, uploaded and deleted otherwise). ``produce``: instead of a
    file, a function that writes the bytes (in order) to the callable it is given, for writers
    that hold them in memory. Neither: a blob already stored (a checkpoint shard identical to the
    previous version's)."""

    path: str
    sha256: str
    size: int
    source: Path | None = None
    owned: bool = False
    produce: Callable[[Callable[[memoryview], None]], None] | None = None


class BlobStore:
    """Blobs under ``uri`` (``StorageConfig`` for S3)."""

    PREFIX = "blobs/sha256/"

    def __init__(
        self, uri: str, config: StorageConfig | None = None, sealer: Sealer | None = None
    ) -> None:
        self.uri = uri
        self.store = open_store(uri, config)
        self.sealer = sealer
        self._reader: Sealer | None = None

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
        """Whether the blob is stored whole, in the form this store writes: a sealing store
        stores a plain blob left from before its location was encrypted again, sealed; a
        plain store counts a sealed blob as present (another process sealed it) and never
        overwrites it with plaintext."""
        stored = self._stored(sha256)
        if self.sealer is not None:
            return stored == self._sealed_size(size)
        return stored in (size, self._sealed_size(size))

    def _sealed_size(self, size: int) -> int:
        return self.sealer.sealed_size(size) if self.sealer is not None else sealed_size(size)

    def _stored(self, sha256: str) -> int | None:
        try:
            return self.store.head(self.key(sha256)).size
        except NotFound:
            return None

    def present(self, sha256: str, size: int) -> bool:
        """Whether the blob is stored whole in either form (plain or sealed): readable."""
        return self._stored(sha256) in (size, self._sealed_size(size))

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
            out = self._sealing(sha256, writer.write)
            with open(path, "rb") as f:
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
                    out.write(chunk)
            out.close()
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

    def writer(self, sha256: str) -> BlobWriter:
        """A writer for blob ``sha256``'s bytes, streamed (and sealed, when the store seals)
        into the store; nothing is visible until :meth:`BlobWriter.commit`. The caller checks
        the bytes against the sha256 before committing (a server receiving an upload)."""
        raw = self.store.open_writer(self.key(sha256), content_type="application/octet-stream")
        try:
            return BlobWriter(raw, self._sealing(sha256, raw.write))
        except BaseException:
            raw.abort()
            raise

    def _sealing(self, sha256: str, sink: Callable[[memoryview | bytes], None]) -> _Sink:
        """Where to write a blob's plaintext: through the sealer, or straight to ``sink``."""
        if self.sealer is None:
            return _Plain(sink)
        return self.sealer.writer(sha256, sink)

    STAGING = "staging/"

    @property
    def is_local(self) -> bool:
        """Whether the blobs are plain files on this machine (a local or parallel filesystem,
        not sealed): readers may map them and writers may publish files by rename."""
        from datastore._local import LocalStore

        return isinstance(self.store, LocalStore) and self.sealer is None

    def _local(self) -> LocalStore | None:
        from datastore._local import LocalStore

        return self.store if isinstance(self.store, LocalStore) and self.sealer is None else None

    def local_path(self, sha256: str) -> Path | None:
        """Where blob ``sha256`` lives on this machine's filesystem as a plain file (a local,
        unsealed store), else None."""
        local = self._local()
        return local._path(self.key(sha256)) if local is not None else None

    def staging_file(self) -> Path:
        """A fresh path for a writer to build a file that :meth:`put_staged` then publishes:
        inside a local blob store (so publishing is a rename on the same filesystem), in the
        system temporary directory otherwise. Left-overs of crashed writers are removed by
        :meth:`sweep_staging`."""
        local = self._local()
        if local is not None:
            root = local._path(self.STAGING.rstrip("/"))
            root.mkdir(parents=True, exist_ok=True)
        else:
            root = Path(tempfile.gettempdir())
        return root / f"shardyard-stage-{uuid.uuid4().hex}"

    def put_staged(self, staged: Staged) -> bool:
        """Publish a :class:`Staged` file under its sha256 (True when bytes were stored);
        an owned ``source`` is gone afterwards either way."""
        if staged.produce is not None:
            return self._put_produced(staged, staged.produce)
        if staged.source is None:
            if not self.present(staged.sha256, staged.size):
                raise NotFound(
                    f"blob {staged.sha256} ({staged.path}) is not in {self.uri}: upload it "
                    "first (or save again if it was deleted meanwhile)"
                )
            return False
        if not staged.owned:
            return self.put_file(staged.source, staged.sha256)[2]
        try:
            if self.has(staged.sha256, staged.size):
                return False
            dest = self.local_path(staged.sha256)
            if dest is None:
                self.put_file(staged.source, staged.sha256)
                return True
            if staged.source.stat().st_size != staged.size:
                raise InvalidInput(f"{staged.source} is not the {staged.size} bytes staged")
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged.source, dest)  # the writer fsynced it; same filesystem
            fd = os.open(dest.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            return True
        finally:
            staged.source.unlink(missing_ok=True)

    def _put_produced(
        self, staged: Staged, produce: Callable[[Callable[[memoryview], None]], None]
    ) -> bool:
        if self.has(staged.sha256, staged.size):
            return False
        writer = self.store.open_writer(
            self.key(staged.sha256), content_type="application/octet-stream"
        )
        size = 0

        def write(view: memoryview) -> None:
            nonlocal size
            size += view.nbytes
            out.write(view)

        try:
            out = self._sealing(staged.sha256, writer.write)
            produce(write)
            out.close()
            if size != staged.size:
                raise InvalidInput(
                    f"{staged.path}: its writer produced {size} bytes, not the {staged.size} "
                    "it hashed"
                )
            writer.commit()
        except BaseException:
            writer.abort()
            raise
        return True

    def sweep_staging(self, older_than: float) -> int:
        """Delete staged files older than ``older_than`` seconds (writers that crashed before
        publishing); the number removed."""
        from datastore._local import LocalStore

        if not isinstance(self.store, LocalStore):
            return 0
        root = self.store._path(self.STAGING.rstrip("/"))
        removed = 0
        cutoff = time.time() - older_than
        for f in root.glob("shardyard-stage-*") if root.is_dir() else ():
            try:
                if f.stat().st_mtime < cutoff:
                    f.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed

    #: Blobs above this many bytes are downloaded window by window, not held in memory whole.
    STREAM_ABOVE = 256 << 20
    _WINDOW = 64 << 20

    def get_to_file(self, sha256: str, size: int, dest: Path) -> None:
        """Download the blob to ``dest``, verified: a mismatch raises Corrupt and leaves
        nothing at ``dest``. Large blobs stream through a temporary file next to ``dest``."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
        h = hashlib.sha256()
        got = 0
        try:
            with os.fdopen(fd, "wb") as f:
                for piece in self.pieces(sha256, size):
                    h.update(piece)
                    f.write(piece)
                    got += len(piece)
            if h.hexdigest() != sha256 or got != size:
                raise Corrupt(
                    f"blob {self.store.uri_of(self.key(sha256))} does not match its checksum "
                    f"(sha256 {h.hexdigest()}, {got} bytes; expected {sha256}, {size} bytes)"
                )
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def read(self, sha256: str, size: int) -> pa.Buffer | bytearray:
        """The blob's bytes in memory (opened when sealed; not checked against the sha256:
        callers that keep them check it)."""
        if self.sealer is None:
            try:
                buf = self.store.read_buffer(self.key(sha256), size)
            except NotFound:
                raise self._missing(sha256) from None
            if not _may_be_sealed(buf[: len(MAGIC)].to_pybytes()):
                return buf
            stored = self._stored(sha256)
            if stored == size:  # a plain file that starts like a sealed one
                return buf
            opened = self._open_sealed(sha256, size, stored)
        else:
            opened = self.pieces(sha256, size)
        out = bytearray(size)
        at = 0
        for piece in opened:
            out[at : at + len(piece)] = piece
            at += len(piece)
        return out

    def _missing(self, sha256: str) -> NotFound:
        return NotFound(
            f"blob {sha256} is missing from {self.uri}: the registry's blob store lost "
            "it (deleted outside the registry?)"
        )

    def pieces(self, sha256: str, size: int) -> Iterator[memoryview]:
        """The blob's bytes in order, in bounded memory (opened and authenticated chunk by
        chunk when sealed, whether or not this store seals: a blob sealed by a process that
        knew the location was encrypted opens here with the key file); not checked against
        the sha256."""
        if self.sealer is None:
            plain = self._pieces(sha256, size)
            first = next(plain, None)
            if first is None:
                return
            stored = self._stored(sha256) if _may_be_sealed(bytes(first[: len(MAGIC)])) else size
            if stored == size:
                yield first
                yield from plain
                return
            plain.close()
        else:
            stored = self._stored(sha256)
            if stored == size:  # written before the location was encrypted: plain, checked
                yield from self._pieces(sha256, size)
                return
        yield from self._open_sealed(sha256, size, stored)

    def _open_sealed(self, sha256: str, size: int, stored: int | None) -> Iterator[memoryview]:
        """The plaintext of sealed blob ``sha256`` whose object is ``stored`` bytes."""
        if stored is None:
            raise self._missing(sha256)
        key = self.key(sha256)
        where = f"blob {self.store.uri_of(key)}"

        def read(offset: int, length: int) -> bytes:
            if offset + length > stored:
                raise Corrupt(f"{where} is {stored} bytes: cut short or not this blob")
            return bytes(self.store.get_range(key, offset, length))

        yield from self._opener().open_stream(sha256, size, read, where, stored)

    def _opener(self) -> Sealer:
        """The sealer that opens this store's sealed blobs (without a sealer of its own: one
        over the default key file that only opens)."""
        if self.sealer is not None:
            return self.sealer
        if self._reader is None:
            self._reader = Sealer(LocalKeyFile(), None)
        return self._reader

    def _pieces(self, sha256: str, size: int) -> Generator[memoryview, None, None]:
        """The blob's bytes: one parallel read when small, windows of ranged reads else."""
        key = self.key(sha256)
        try:
            if size <= self.STREAM_ABOVE:
                yield memoryview(self.store.read_buffer(key, size))
                return
            for start in range(0, size, self._WINDOW):
                yield memoryview(self.store.get_range(key, start, min(self._WINDOW, size - start)))
            extra = self.store.head(key).size - size
        except NotFound:
            raise self._missing(sha256) from None
        if extra:  # a longer object: its first size bytes may hash right, it is still wrong
            yield memoryview(b"\0" * min(extra, 1))

    def delete(self, sha256: str) -> None:
        self.store.delete(self.key(sha256))

    def list(self) -> Iterator[ObjectInfo]:
        """Every stored blob (key, size, mtime)."""
        yield from self.store.list(self.PREFIX)


class BlobWriter:
    """:meth:`BlobStore.writer`'s result: write, then commit or abort."""

    def __init__(self, raw: Any, out: _Sink) -> None:
        self._raw = raw
        self._out = out

    def write(self, data: bytes | memoryview) -> None:
        self._out.write(data)

    def commit(self) -> None:
        """Publish the blob (the last sealed chunk first)."""
        self._out.close()
        self._raw.commit()

    def abort(self) -> None:
        """Drop what was written; nothing becomes visible."""
        self._raw.abort()


def _may_be_sealed(head: bytes) -> bool:
    """Whether a blob's first bytes (all of them, for a blob shorter than the magic) could
    be those of a sealed blob read as if it were plain."""
    return MAGIC.startswith(head) if len(head) < len(MAGIC) else head == MAGIC


class _Sink(Protocol):
    """Where a blob's plaintext goes on its way into the store."""

    def write(self, data: bytes | memoryview) -> None: ...

    def close(self) -> None: ...


class _Plain:
    def __init__(self, sink: Callable[[memoryview | bytes], None]) -> None:
        self._sink = sink

    def write(self, data: bytes | memoryview) -> None:
        self._sink(data)

    def close(self) -> None:
        pass
