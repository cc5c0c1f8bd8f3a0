"""S3 backend (AWS, SeaweedFS, MinIO, Ceph RGW...).

Creates are ``PUT`` with ``If-None-Match: *`` and updates ``PUT`` with ``If-Match: <etag>``,
so the commit of a dataset version is decided by the server, not by a race between a HEAD and a
PUT. Large objects go up as a multipart upload with per-part checksums, completed with the same
condition; a failed upload is aborted, so no partial object ever becomes visible. Large reads
are split into parallel range GETs.
"""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from datastore import s3 as s3mod
from datastore.config import StorageConfig
from datastore.errors import AlreadyExists, NotFound, PreconditionFailed
from datastore.store import Data, ObjectInfo, ObjectStore, PutMode
from datastore.uri import Location

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = ["S3Store"]


class S3Store(ObjectStore):
    """An :class:`ObjectStore` over ``s3://bucket/prefix``. Picklable (the client is rebuilt)."""

    def __init__(self, location: Location, config: StorageConfig) -> None:
        super().__init__(location)
        self.config = config
        self.bucket = location.bucket
        self._client: S3Client | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_client"] = None
        return state

    @property
    def client(self) -> S3Client:
        """The boto3 client, built on first use."""
        if self._client is None:
            self._client = s3mod.make_client(self.config)
        return self._client

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
            return self.client.get_object(Bucket=self.bucket, Key=k, Range=rng)["Body"].read()

        data: bytes = self._call(fetch, key)
        return data

    def read_buffer(self, key: str, size: int | None = None) -> pa.Buffer:
        part = self.config.multipart_chunksize
        if size is None or size <= part:
            return pa.py_buffer(self.get(key))
        out = bytearray(size)
        view = memoryview(out)

        def fetch(start: int) -> None:
            chunk = self.get_range(key, start, min(part, size - start))
            view[start : start + len(chunk)] = chunk

        with cf.ThreadPoolExecutor(self.config.max_concurrency) as pool:
            list(pool.map(fetch, range(0, size, part)))
        return pa.py_buffer(out)

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
        k = self._key(key)
        cond: dict[str, Any] = {}
        if mode == "create":
            cond["IfNoneMatch"] = "*"
        elif if_match is not None:
            cond["IfMatch"] = if_match
        view = memoryview(data)
        try:
            if view.nbytes >= self.config.multipart_threshold:
                etag = self._put_multipart(k, key, view, cond)
            else:
                body = bytes(view)

                def send() -> str:
                    resp = self.client.put_object(
                        Bucket=self.bucket, Key=k, Body=body, **cond, **self._extra()
                    )
                    return str(resp["ETag"])

                etag = self._call(send, key)
        except PreconditionFailed:
            if mode == "create":
                raise AlreadyExists(f"{self.uri_of(key)} already exists") from None
            raise
        return ObjectInfo(key, view.nbytes, etag)

    def _put_multipart(self, k: str, key: str, view: memoryview, cond: dict[str, Any]) -> str:
        part = self.config.multipart_chunksize
        upload_id: str = self._call(
            lambda: self.client.create_multipart_upload(
                Bucket=self.bucket, Key=k, ChecksumAlgorithm="CRC32", **self._extra()
            )["UploadId"],
            key,
        )

        def send(index: int) -> dict[str, Any]:
            start = index * part
            body = bytes(view[start : start + part])
            resp = self._call(
                lambda: self.client.upload_part(
                    Bucket=self.bucket,
                    Key=k,
                    UploadId=upload_id,
                    PartNumber=index + 1,
                    Body=body,
                    ChecksumAlgorithm="CRC32",
                ),
                key,
            )
            return {
                "PartNumber": index + 1,
                "ETag": resp["ETag"],
                "ChecksumCRC32": resp.get("ChecksumCRC32", ""),
            }

        try:
            count = (view.nbytes + part - 1) // part
            with cf.ThreadPoolExecutor(self.config.max_concurrency) as pool:
                parts = list(pool.map(send, range(count)))
            parts = [{k2: v for k2, v in p.items() if v} for p in parts]
            resp = self._call(
                lambda: self.client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=k,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},  # type: ignore[typeddict-item]
                    **cond,
                ),
                key,
            )
        except BaseException:
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=k, UploadId=upload_id)
            except Exception:
                pass
            raise
        return str(resp["ETag"])

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
                yield ObjectInfo(obj["Key"][strip:], int(obj["Size"]), obj.get("ETag"))
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
