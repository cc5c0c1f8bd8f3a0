"""S3 backend (AWS, SeaweedFS, MinIO, Ceph RGW...).

Creates are ``PUT`` with ``If-None-Match: *`` and updates ``PUT`` with ``If-Match: <etag>``,
so the commit of a dataset version is decided by the server, not by a race between a HEAD and a
PUT. Large objects go up as a multipart upload with per-part checksums, completed with the same
condition; a failed upload is aborted, so no partial object ever becomes visible. Large reads
are split into parallel range GETs.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import botocore.exceptions as bex
import pyarrow as pa

from datastore import s3 as s3mod
from datastore.config import StorageConfig
from datastore.errors import AlreadyExists, NotFound, PreconditionFailed
from datastore.store import Data, ObjectInfo, ObjectStore, PutMode
from datastore.uri import Location

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = ["S3ObjectWriter", "S3Store"]

log = logging.getLogger("shardyard.retry")


class S3Store(ObjectStore):
    """An :class:`ObjectStore` over ``s3://bucket/prefix``. Picklable (it holds no client)."""

    def __init__(self, location: Location, config: StorageConfig) -> None:
        super().__init__(location)
        self.config = config
        self.bucket = location.bucket

    @property
    def client(self) -> S3Client:
        """The process's boto3 client for this store's config (see ``s3.make_client``)."""
        return s3mod.make_client(self.config)

    def _key(self, key: str) -> str:
        return self.location.join(key).path

    def _call(self, fn: Any, key: str) -> Any:
        return s3mod.s3_call(fn, what=self.uri_of(key), config=self.config)

    def get(self, key: str) -> bytes:
        k = self._key(key)

        def fetch() -> bytes:
            return self.client.get_object(Bucket=self.bucket, Key=k)["Body"].read()

        data: bytes = self._call(fetch, key)
        return data

    def get_range(self, key: str, start: int, length: int) -> bytes:
        if length <= 0:
            return b""
        k = self._key(key)
        rng = f"bytes={start}-{start + length - 1}"

        def fetch() -> bytes:
            try:
                return self.client.get_object(Bucket=self.bucket, Key=k, Range=rng)["Body"].read()
            except bex.ClientError as err:
                # A range that starts at or past the end: no bytes, as a local read gives.
                if s3mod.error_code(err) == "InvalidRange":
                    return b""
                raise

        data: bytes = self._call(fetch, key)
        return data

    def read_buffer(self, key: str, size: int | None = None) -> pa.Buffer:
        part = self.config.multipart_chunksize
        if size is None or size <= part:
            return pa.py_buffer(self.get(key))
        # Parallel range GETs, each streamed straight into one Arrow buffer (no per-range copy,
        # no zero-filling). Should the object not be `size` bytes, read it whole instead, so
        # that the caller sees its true size.
        out = pa.allocate_buffer(size)
        view = memoryview(out).cast("B")
        k = self._key(key)

        def fetch(start: int) -> bool:
            end = min(start + part, size)

            def run() -> bool:
                resp = self.client.get_object(
                    Bucket=self.bucket, Key=k, Range=f"bytes={start}-{end - 1}"
                )
                pos = start
                for chunk in resp["Body"].iter_chunks(1 << 20):
                    n = min(len(chunk), end - pos)
                    view[pos : pos + n] = memoryview(chunk)[:n]
                    pos += n
                total = str(resp.get("ContentRange", "")).rpartition("/")[2]
                return pos == end and total == str(size)

            ok: bool = self._call(run, key)
            return ok

        with cf.ThreadPoolExecutor(self.config.max_concurrency) as pool:
            if not all(pool.map(fetch, range(0, size, part))):
                return pa.py_buffer(self.get(key))
        return out

    def _extra(self) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if self.config.sse:
            extra["ServerSideEncryption"] = self.config.sse
        if self.config.sse_kms_key_id:
            extra["SSEKMSKeyId"] = self.config.sse_kms_key_id
        return extra

    def put(
        self, key: str, data: Data, *, mode: PutMode = "overwrite", if_match: str | None = None
    ) -> ObjectInfo:
        condition: dict[str, str] = {}
        if mode == "create":
            condition["IfNoneMatch"] = "*"
        elif if_match is not None:
            condition["IfMatch"] = if_match
        view = memoryview(data)
        writer = S3ObjectWriter(self, key, condition=condition)
        try:
            writer.write(view)
            return writer.commit()
        except PreconditionFailed:
            # A retried conditional write can lose to itself: the first attempt was applied but
            # its answer was lost, so the retry sees the object and fails the condition. If the
            # object now holds exactly our bytes, that earlier attempt was ours.
            if writer.final_attempts > 1:
                mine = self._holds(key, view)
                if mine is not None:
                    log.info(
                        "%s: a retried conditional write found its own earlier attempt applied",
                        self.uri_of(key),
                    )
                    return mine
            if mode == "create":
                raise AlreadyExists(f"{self.uri_of(key)} already exists") from None
            raise

    def _holds(self, key: str, view: memoryview) -> ObjectInfo | None:
        """The object's info if ``key`` holds exactly the bytes of ``view``, else None."""
        try:
            info = self.head(key)
            if info.size != view.nbytes:
                return None
            stored = self.read_buffer(key, info.size)
        except NotFound:
            return None
        return info if stored.equals(pa.py_buffer(view)) else None

    def head(self, key: str) -> ObjectInfo:
        k = self._key(key)
        resp = self._call(lambda: self.client.head_object(Bucket=self.bucket, Key=k), key)
        return ObjectInfo(key, int(resp["ContentLength"]), str(resp.get("ETag")))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        root = self._key("")
        full = self._key(prefix) if prefix else (root + "/" if root else "")
        if prefix.endswith("/") and not full.endswith("/"):
            full += "/"
        strip = len(root) + 1 if root else 0
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": full}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call(lambda kw=kwargs: self.client.list_objects_v2(**kw), prefix)
            for obj in page.get("Contents", []):
                modified = obj.get("LastModified")
                yield ObjectInfo(
                    obj["Key"][strip:],
                    int(obj["Size"]),
                    obj.get("ETag"),
                    modified.timestamp() if modified is not None else None,
                )
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")

    def delete(self, key: str) -> None:
        k = self._key(key)
        try:
            self._call(lambda: self.client.delete_object(Bucket=self.bucket, Key=k), key)
        except NotFound:
            pass

    def presign(self, key: str, expires: int = 3600) -> str:
        """A presigned GET URL for ``key``, valid ``expires`` seconds."""
        return s3mod.presign_get(self.client, self.bucket, self._key(key), expires)

    def open_writer(self, key: str, content_type: str | None = None) -> S3ObjectWriter:
        """A streaming writer for ``key`` (overwrite): parts are uploaded while the caller is
        still writing; the object appears only when :meth:`S3ObjectWriter.commit` completes it
        (an object under the multipart threshold goes up as one PUT at commit).

        ``content_type`` is stored with the object. Naming the real type matters beyond
        metadata: SeaweedFS, for one, gzips objects it sniffs as text (an Arrow IPC file with
        string columns is) unless told their type, which costs CPU on every PUT and GET."""
        return S3ObjectWriter(self, key, content_type)


class S3ObjectWriter:
    """Streams one object to S3 as a multipart upload; nothing is visible until :meth:`commit`.

    ``condition`` (``IfNoneMatch`` / ``IfMatch``) is sent with the request that publishes the
    object (the single PUT or the multipart completion); ``final_attempts`` counts its tries.

    Bytes are buffered until the multipart threshold, then sent in ``multipart_chunksize`` parts
    (with CRC32 part checksums) by up to ``max_concurrency`` threads; writing blocks while that
    many parts are in flight, so memory stays bounded. A failed or aborted upload is aborted on
    the server, so no partial object is ever visible.
    """

    def __init__(
        self,
        store: S3Store,
        key: str,
        content_type: str | None = None,
        condition: dict[str, str] | None = None,
    ) -> None:
        self.store = store
        self.condition: dict[str, Any] = dict(condition or {})
        self.final_attempts = 0
        self.key = key
        self._k = store._key(key)
        self._headers: dict[str, Any] = store._extra()
        if content_type:
            self._headers["ContentType"] = content_type
            store.client.meta.events.register(
                "before-sign.s3.UploadPart", _part_content_type, unique_id=_PART_CT_HANDLER
            )
        self._part = store.config.multipart_chunksize
        self._pending: list[memoryview] = []  # written, not yet sent
        self._pending_bytes = 0
        self._upload_id: str | None = None
        self._pool: cf.ThreadPoolExecutor | None = None
        self._parts: list[cf.Future[dict[str, Any]]] = []
        self._closed = False
        self.size = 0

    def write(self, data: Data) -> None:
        """Append ``data``; full parts are handed to the upload threads."""
        if self._closed:
            raise ValueError(f"writer for {self.store.uri_of(self.key)} is closed")
        view = memoryview(data).cast("B")
        if not view.readonly:
            view = memoryview(bytes(view))  # the caller may reuse a mutable buffer
        self._pending.append(view)
        self._pending_bytes += view.nbytes
        self.size += view.nbytes
        if self._upload_id is None and self._pending_bytes < self.store.config.multipart_threshold:
            return
        try:
            while self._pending_bytes >= self._part:
                self._send(self._take(self._part))
        except BaseException:
            self.abort()
            raise

    def _take(self, n: int) -> list[memoryview]:
        """The first ``n`` pending bytes (views, not copies)."""
        pieces: list[memoryview] = []
        need = n
        while need:
            head = self._pending[0]
            if head.nbytes <= need:
                pieces.append(self._pending.pop(0))
                need -= head.nbytes
            else:
                pieces.append(head[:need])
                self._pending[0] = head[need:]
                need = 0
        self._pending_bytes -= n
        return pieces

    def _send(self, pieces: list[memoryview]) -> None:
        store = self.store
        if self._upload_id is None:
            self._upload_id = store._call(
                lambda: store.client.create_multipart_upload(
                    Bucket=store.bucket, Key=self._k, ChecksumAlgorithm="CRC32", **self._headers
                )["UploadId"],
                self.key,
            )
            self._pool = cf.ThreadPoolExecutor(
                store.config.max_concurrency, thread_name_prefix="shardyard-part"
            )
        # backpressure: at most max_concurrency parts (of part size) wait or travel at once
        busy = [f for f in self._parts if not f.done()]
        if len(busy) >= store.config.max_concurrency:
            cf.wait(busy, return_when=cf.FIRST_COMPLETED)
        for f in self._parts:
            if f.done():
                f.result()  # raise a failed part now
        assert self._pool is not None
        number, upload_id = len(self._parts) + 1, self._upload_id

        content_type = self._headers.get("ContentType")

        def send() -> dict[str, Any]:
            body = b"".join(pieces)  # the one copy, made here rather than in the writer's thread
            _part_headers.content_type = content_type
            try:
                resp = store._call(
                    lambda: store.client.upload_part(
                        Bucket=store.bucket,
                        Key=self._k,
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=body,
                        ChecksumAlgorithm="CRC32",
                    ),
                    self.key,
                )
            finally:
                _part_headers.content_type = None
            part = {
                "PartNumber": number,
                "ETag": resp["ETag"],
                "ChecksumCRC32": resp.get("ChecksumCRC32", ""),
            }
            return {k: v for k, v in part.items() if v}

        self._parts.append(self._pool.submit(send))

    def commit(self) -> ObjectInfo:
        """Upload what is left and complete the object (replacing any old one)."""
        if self._closed:
            raise ValueError(f"writer for {self.store.uri_of(self.key)} is closed")
        store = self.store
        try:
            if self._upload_id is None:
                body = b"".join(self._take(self._pending_bytes))
                self._closed = True

                def put() -> str:
                    self.final_attempts += 1
                    resp = store.client.put_object(
                        Bucket=store.bucket,
                        Key=self._k,
                        Body=body,
                        **self._headers,
                        **self.condition,
                    )
                    return str(resp["ETag"])

                return ObjectInfo(self.key, self.size, store._call(put, self.key))
            if self._pending_bytes:
                self._send(self._take(self._pending_bytes))
            parts = [f.result() for f in self._parts]
            upload_id = self._upload_id

            def complete() -> dict[str, Any]:
                self.final_attempts += 1
                return store.client.complete_multipart_upload(  # type: ignore[return-value]
                    Bucket=store.bucket,
                    Key=self._k,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},  # type: ignore[typeddict-item]
                    **self.condition,
                )

            resp = store._call(complete, self.key)
        except BaseException:
            self.abort()
            raise
        self._closed = True
        self._shutdown()
        return ObjectInfo(self.key, self.size, str(resp["ETag"]))

    def abort(self) -> None:
        """Abandon the upload (server side too); the key is left as it was. Safe to call twice."""
        self._closed = True
        self._pending, self._pending_bytes = [], 0
        for f in self._parts:
            f.cancel()
        self._shutdown()
        if self._upload_id is not None:
            upload_id, self._upload_id = self._upload_id, None
            try:
                self.store.client.abort_multipart_upload(
                    Bucket=self.store.bucket, Key=self._k, UploadId=upload_id
                )
            except Exception:
                pass

    def _shutdown(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.shutdown(wait=True)


# UploadPart has no ContentType parameter, but servers may look at the header of each part:
# SeaweedFS sniffs every part that comes without one and gzips those that look like text (an
# Arrow IPC shard with string columns does), paying CPU on upload and again on every GET. The
# part's upload thread names the type here; a request hook copies it into the header.
_part_headers = threading.local()
_PART_CT_HANDLER = "shardyard-part-content-type"


def _part_content_type(request: Any, **_: Any) -> None:
    content_type = getattr(_part_headers, "content_type", None)
    if content_type:
        request.headers["Content-Type"] = content_type
