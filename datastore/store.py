"""The object-store interface every backend implements, and :func:`open_store`.

A store is rooted at a URI prefix; keys are ``/``-separated paths below it. The primitives are
few (get, get_range, put, head, list, delete); ``exists`` and ``read_buffer`` are derived and
may be overridden for speed. Puts are atomic: a reader sees the old object, the whole new one,
or nothing, never a prefix. ``mode="create"`` is the commit primitive: of two concurrent creates
of one key exactly one succeeds and the other raises :class:`~datastore.errors.AlreadyExists`.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol, TypeAlias

from datastore.config import StorageConfig
from datastore.errors import NotFound
from datastore.uri import Location, parse_uri

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["ObjectInfo", "ObjectStore", "ObjectWriter", "PutMode", "open_store"]

PutMode = Literal["overwrite", "create"]
Data: TypeAlias = "bytes | bytearray | memoryview | pa.Buffer"


@dataclass(frozen=True)
class ObjectInfo:
    """What a listing or HEAD tells about one object: ``size`` in bytes, an opaque ``etag``;
    listings also give ``mtime`` (UNIX seconds of the last write; None where not known), which
    does not take part in comparisons."""

    key: str
    size: int
    etag: str | None = None
    mtime: float | None = field(default=None, compare=False)


class ObjectWriter(Protocol):
    """A streaming writer for one object: nothing is visible under its key until ``commit``
    publishes the whole object atomically; ``abort`` leaves the key as it was."""

    def write(self, data: Data) -> None:
        """Append ``data`` to the object."""

    def commit(self) -> ObjectInfo:
        """Publish the object (replacing any old one); returns its info."""

    def abort(self) -> None:
        """Discard what was written. Safe to call twice."""


class _BufferedWriter:
    """The default :class:`ObjectWriter`: collects the bytes in memory and ``put``s them."""

    def __init__(self, store: ObjectStore, key: str) -> None:
        self.store = store
        self.key = key
        self._parts: list[bytes] | None = []

    def write(self, data: Data) -> None:
        if self._parts is None:
            raise ValueError(f"writer for {self.store.uri_of(self.key)} is closed")
        self._parts.append(bytes(memoryview(data)))

    def commit(self) -> ObjectInfo:
        if self._parts is None:
            raise ValueError(f"writer for {self.store.uri_of(self.key)} is closed")
        body, self._parts = b"".join(self._parts), None
        return self.store.put(self.key, body)

    def abort(self) -> None:
        self._parts = None


class ObjectStore(abc.ABC):
    """A flat key -> bytes namespace under one URI prefix.

    Note for implementers: ``put`` must be atomic and ``mode="create"`` must be exclusive across
    processes and hosts; set ``supports_conditional_writes = False`` where the backend cannot
    promise that, and document the fallback.
    """

    supports_conditional_writes: bool = True

    def __init__(self, location: Location) -> None:
        self.location = location

    @property
    def uri(self) -> str:
        """The URI of the store's root."""
        return self.location.uri

    def uri_of(self, key: str) -> str:
        """The full URI of ``key`` (for messages and for tools outside Shardyard)."""
        return self.location.join(key).uri

    @abc.abstractmethod
    def get(self, key: str) -> bytes:
        """The whole object; raises NotFound."""

    @abc.abstractmethod
    def get_range(self, key: str, start: int, length: int) -> bytes:
        """``length`` bytes from offset ``start`` (fewer at the end of the object)."""

    @abc.abstractmethod
    def put(
        self, key: str, data: Data, *, mode: PutMode = "overwrite", if_match: str | None = None
    ) -> ObjectInfo:
        """Store ``data`` at ``key`` atomically.

        ``mode="create"`` fails with AlreadyExists if the key exists; ``if_match`` replaces only
        the version whose etag matches and otherwise fails with PreconditionFailed.
        """

    @abc.abstractmethod
    def head(self, key: str) -> ObjectInfo:
        """Size and etag of ``key``; raises NotFound."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, recursively, in key order."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; removing a missing key is not an error."""

    def exists(self, key: str) -> bool:
        """Whether ``key`` exists."""
        try:
            self.head(key)
        except NotFound:
            return False
        return True

    def open_writer(self, key: str, content_type: str | None = None) -> ObjectWriter:
        """A streaming writer for ``key`` (overwrite). ``content_type`` is stored where the
        backend keeps one.

        Note for implementers: the default buffers the whole object in memory and ``put``s it
        on commit; override it to stream (the local and S3 stores do).
        """
        return _BufferedWriter(self, key)

    def make_durable(self, key: str) -> None:
        """Ensure ``key``, written by a third party (e.g. zarr), survives a crash. Stores whose
        puts are durable when they return (S3) need nothing."""
        return None

    def read_buffer(self, key: str, size: int | None = None) -> pa.Buffer:
        """The whole object as an Arrow buffer; ``size`` (bytes), when known, allows
        backends to split the read into parallel ranges."""
        import pyarrow as pa

        return pa.py_buffer(self.get(key))


def open_store(uri: str | Location, config: StorageConfig | None = None) -> ObjectStore:
    """The store rooted at ``uri``: local directory or S3 prefix.

    ``config`` is only used for S3; when omitted it is resolved from the environment
    (see :mod:`datastore.config`).
    """
    loc = uri if isinstance(uri, Location) else parse_uri(uri)
    if loc.scheme == "file":
        from datastore._local import LocalStore

        return LocalStore(loc)
    from datastore._s3 import S3Store

    return S3Store(loc, config or StorageConfig.resolve())
