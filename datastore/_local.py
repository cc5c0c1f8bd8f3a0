"""Local and parallel-filesystem (POSIX) backend.

Writes go to a hidden temporary name in the target directory, are fsynced, then published:
``os.replace`` for overwrites, ``os.link`` for creates (link fails if the name exists, which
makes create exclusive across processes and across NFS/Lustre/GPFS clients that honour POSIX
link semantics). The directory is fsynced after publishing so the name survives a power loss.
"""

from __future__ import annotations

import errno
import fcntl
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from datastore.errors import AlreadyExists, NotFound, PreconditionFailed
from datastore.store import Data, ObjectInfo, ObjectStore, PutMode
from datastore.uri import Location

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["LocalObjectWriter", "LocalStore", "is_temporary"]

_TMP_MARK = ".tmp-"


def is_temporary(name: str) -> bool:
    """Whether a file name is an unpublished temporary of :class:`LocalStore`."""
    return name.startswith(".") and _TMP_MARK in name


def _etag(st: os.stat_result) -> str:
    return f"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"


class LocalStore(ObjectStore):
    """An :class:`ObjectStore` over a directory."""

    def __init__(self, location: Location) -> None:
        super().__init__(location)
        self.root = Path(location.path)

    def _path(self, key: str) -> Path:
        return Path(self.location.join(key).path)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"{self.uri_of(key)} does not exist") from None
        except IsADirectoryError:
            raise NotFound(f"{self.uri_of(key)} is a directory, not an object") from None

    def get_range(self, key: str, start: int, length: int) -> bytes:
        try:
            with self._path(key).open("rb") as fh:
                fh.seek(start)
                return fh.read(length)
        except FileNotFoundError:
            raise NotFound(f"{self.uri_of(key)} does not exist") from None

    def read_buffer(self, key: str, size: int | None = None) -> pa.Buffer:
        import pyarrow as pa

        try:
            with pa.OSFile(str(self._path(key)), "rb") as fh:
                return fh.read_buffer()
        except FileNotFoundError:
            raise NotFound(f"{self.uri_of(key)} does not exist") from None

    def make_durable(self, key: str) -> None:
        path = self._path(key)
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        _fsync_dir(path.parent)

    def put(
        self, key: str, data: Data, *, mode: PutMode = "overwrite", if_match: str | None = None
    ) -> ObjectInfo:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}{_TMP_MARK}{uuid.uuid4().hex}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            with os.fdopen(fd, "wb", closefd=True) as fh:
                fh.write(memoryview(data))
                fh.flush()
                os.fsync(fh.fileno())
            if mode == "create":
                self._link_exclusive(tmp, path, key)
            elif if_match is not None:
                self._replace_if_match(tmp, path, key, if_match)
            else:
                os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        _fsync_dir(path.parent)
        return ObjectInfo(key, path.stat().st_size, _etag(path.stat()))

    def open_writer(self, key: str, content_type: str | None = None) -> LocalObjectWriter:
        """A streaming writer for ``key`` (overwrite): bytes go straight to a hidden temporary
        file next to it, which :meth:`LocalObjectWriter.commit` fsyncs and publishes atomically
        (like :meth:`put`, without first holding the whole object in memory). ``content_type``
        is accepted for symmetry with S3 and ignored."""
        return LocalObjectWriter(self, key)

    def _link_exclusive(self, tmp: Path, path: Path, key: str) -> None:
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise AlreadyExists(f"{self.uri_of(key)} already exists") from None
        except OSError as err:
            if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            # Filesystems without hard links: O_EXCL create is exclusive, then rename over it.
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            except FileExistsError:
                raise AlreadyExists(f"{self.uri_of(key)} already exists") from None
            os.replace(tmp, path)

    def _replace_if_match(self, tmp: Path, path: Path, key: str, if_match: str) -> None:
        lock_path = path.with_name(f".{path.name}.lock")
        with lock_path.open("a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                current = _etag(path.stat())
            except FileNotFoundError:
                raise NotFound(f"{self.uri_of(key)} does not exist") from None
            if current != if_match:
                raise PreconditionFailed(
                    f"{self.uri_of(key)} was changed by another writer (etag {current})"
                )
            os.replace(tmp, path)

    def head(self, key: str) -> ObjectInfo:
        path = self._path(key)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise NotFound(f"{self.uri_of(key)} does not exist") from None
        if path.is_dir():
            raise NotFound(f"{self.uri_of(key)} is a directory, not an object")
        return ObjectInfo(key, st.st_size, _etag(st))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # Walk only the directory the prefix names, not the whole store.
        start = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        if not start.is_dir():
            return
        found: list[ObjectInfo] = []
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, self.root)
            for name in filenames:
                if is_temporary(name) or name.endswith(".lock"):
                    continue
                key = name if rel_dir == "." else f"{rel_dir}/{name}".replace(os.sep, "/")
                if key.startswith(prefix):
                    try:
                        st = os.stat(os.path.join(dirpath, name))
                    except FileNotFoundError:
                        continue  # deleted while listing
                    found.append(ObjectInfo(key, st.st_size, _etag(st), st.st_mtime))
        yield from sorted(found, key=lambda info: info.key)

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            pass


class LocalObjectWriter:
    """Streams one object into a temporary file; nothing is visible until :meth:`commit`."""

    def __init__(self, store: LocalStore, key: str) -> None:
        self.store = store
        self.key = key
        self.path = store._path(key)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}{_TMP_MARK}{uuid.uuid4().hex}")
        self._fd: int | None = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self.size = 0

    def write(self, data: Data) -> None:
        """Append ``data`` to the object."""
        if self._fd is None:
            raise ValueError(f"writer for {self.store.uri_of(self.key)} is closed")
        view = memoryview(data).cast("B")
        self.size += view.nbytes
        while view.nbytes:
            view = view[os.write(self._fd, view) :]

    def commit(self) -> ObjectInfo:
        """fsync the data, publish it under the key (replacing any old object), fsync the
        directory; the object is then complete and durable."""
        if self._fd is None:
            raise ValueError(f"writer for {self.store.uri_of(self.key)} is closed")
        fd, self._fd = self._fd, None
        try:
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(self.tmp, self.path)
        finally:
            if self.tmp.exists():
                self.tmp.unlink()
        _fsync_dir(self.path.parent)
        st = self.path.stat()
        return ObjectInfo(self.key, st.st_size, _etag(st))

    def abort(self) -> None:
        """Drop the temporary file; the key is left as it was. Safe to call twice."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
        try:
            self.tmp.unlink()
        except FileNotFoundError:
            pass


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
