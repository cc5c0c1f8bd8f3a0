"""The zarr store for arrays on S3: obstore (fast, async), except in a process forked after
obstore started in its parent, where it reads through our boto3 store.

obstore runs on one tokio runtime per process, whose threads do not survive ``fork()``: a
child that touches obstore after its parent did hangs for ever (a PyTorch DataLoader worker
forked after the training script opened a token dataset, for one), whichever store object it
uses. Boto3 clients are made per process (``datastore.s3.make_client``), so after such a fork
the same reads go through them instead. A spawned process (Dask workers) starts with a fresh
interpreter and uses obstore.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterable
from typing import Any

import zarr.storage
from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, SuffixByteRequest
from zarr.core.buffer import Buffer, BufferPrototype

from datastore._s3 import S3Store
from datastore.errors import NotFound

#: The process that started obstore's runtime (None: none has, in this process's ancestry).
#: The runtime is one per process: whichever store started it, a child forked afterwards
#: must not use any.
_OBSTORE_PID: int | None = None


def _obstore_broken() -> bool:
    """Whether obstore's runtime was started before this process was forked from it."""
    return _OBSTORE_PID is not None and os.getpid() != _OBSTORE_PID


def _using_obstore() -> None:
    global _OBSTORE_PID
    if _OBSTORE_PID is None:
        _OBSTORE_PID = os.getpid()


class ForkSafeS3Store(zarr.storage.ObjectStore):  # type: ignore[type-arg]
    """A zarr ``ObjectStore`` over ``obstore_store`` that reads through ``s3`` (keys below
    ``root``) when used in a process forked from the one that made it."""

    def __init__(self, obstore_store: Any, *, read_only: bool, s3: S3Store, root: str) -> None:
        super().__init__(obstore_store, read_only=read_only)
        self._s3 = s3
        self._root = root.strip("/")

    def with_read_only(self, read_only: bool = False) -> ForkSafeS3Store:
        return type(self)(self.store, read_only=read_only, s3=self._s3, root=self._root)

    def _forked(self) -> bool:
        if _obstore_broken():
            return True
        _using_obstore()
        return False

    def _key(self, key: str) -> str:
        return f"{self._root}/{key}" if self._root else key

    def _read(self, key: str, byte_range: ByteRequest | None) -> bytes | None:
        k = self._key(key)
        try:
            if byte_range is None:
                return self._s3.get(k)
            if isinstance(byte_range, RangeByteRequest):
                return self._s3.get_range(k, byte_range.start, byte_range.end - byte_range.start)
            size = self._s3.head(k).size
            if isinstance(byte_range, OffsetByteRequest):
                return self._s3.get_range(k, byte_range.offset, size - byte_range.offset)
            if isinstance(byte_range, SuffixByteRequest):
                start = max(0, size - byte_range.suffix)
                return self._s3.get_range(k, start, size - start)
        except NotFound:
            return None
        raise TypeError(f"unexpected byte range {byte_range!r}")

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        if not self._forked():
            return await super().get(key, prototype, byte_range)
        data = await asyncio.to_thread(self._read, key, byte_range)
        return None if data is None else prototype.buffer.from_bytes(data)

    async def get_partial_values(
        self,
        prototype: BufferPrototype,
        key_ranges: Iterable[tuple[str, ByteRequest | None]],
    ) -> list[Buffer | None]:
        if not self._forked():
            return await super().get_partial_values(prototype, key_ranges)
        return list(await asyncio.gather(*(self.get(k, prototype, r) for k, r in key_ranges)))

    async def exists(self, key: str) -> bool:
        if not self._forked():
            return await super().exists(key)
        return await asyncio.to_thread(self._s3.exists, self._key(key))

    async def set(self, key: str, value: Buffer) -> None:
        if not self._forked():
            return await super().set(key, value)
        self._check_writable()
        await asyncio.to_thread(self._s3.put, self._key(key), value.to_bytes())

    async def delete(self, key: str) -> None:
        if not self._forked():
            return await super().delete(key)
        self._check_writable()
        await asyncio.to_thread(self._s3.delete, self._key(key))

    async def getsize(self, key: str) -> int:
        if not self._forked():
            return await super().getsize(key)
        info = await asyncio.to_thread(self._s3.head, self._key(key))
        return info.size

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        if not self._forked():
            return await super().set_if_not_exists(key, value)
        self._check_writable()
        if not await self.exists(key):
            await self.set(key, value)

    async def _listed(self, prefix: str) -> list[str]:
        # the root's own prefix ends with "/": no sibling array whose name extends it
        full = self._key(prefix) if prefix else (f"{self._root}/" if self._root else "")
        infos = await asyncio.to_thread(lambda: list(self._s3.list(full)))
        cut = len(self._root) + 1 if self._root else 0
        return [info.key[cut:] for info in infos]

    async def list(self) -> AsyncIterator[str]:  # type: ignore[override]
        if not self._forked():
            async for key in super().list():
                yield key
            return
        for key in await self._listed(""):
            yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:  # type: ignore[override]
        if not self._forked():
            async for key in super().list_prefix(prefix):
                yield key
            return
        for key in await self._listed(prefix):
            yield key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:  # type: ignore[override]
        if not self._forked():
            async for key in super().list_dir(prefix):
                yield key
            return
        base = prefix.rstrip("/") + "/" if prefix else ""
        seen = set()
        for key in await self._listed(base):
            child = key[len(base) :].split("/", 1)[0]
            if child and child not in seen:
                seen.add(child)
                yield child
