"""Every backend passes the shared ObjectStore conformance suite."""

from __future__ import annotations

import os
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from datastore import StorageConfig, open_store
from datastore._local import LocalStore
from datastore._s3 import S3Store
from datastore.testing.store import Backdoor, StoreConformance
from tests.conftest import BUCKET

MiB = 1024 * 1024


class LocalBackdoor(Backdoor):
    def __init__(self, root: Path) -> None:
        self.root = root

    def get(self, key: str) -> bytes | None:
        path = self.root / key
        return path.read_bytes() if path.is_file() else None

    def put(self, key: str, data: bytes) -> None:
        (self.root / key).parent.mkdir(parents=True, exist_ok=True)
        (self.root / key).write_bytes(data)

    def keys(self) -> list[str]:
        out = []
        for dirpath, _, files in os.walk(self.root):
            for name in files:
                out.append(os.path.relpath(os.path.join(dirpath, name), self.root))
        return sorted(out)


class S3Backdoor(Backdoor):
    def __init__(self, config: StorageConfig, prefix: str) -> None:
        self.client = boto3.client(
            "s3",
            endpoint_url=config.endpoint_url,
            aws_access_key_id=config.access_key_id,
            aws_secret_access_key=config.secret_access_key,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}),
        )
        self.prefix = prefix

    def get(self, key: str) -> bytes | None:
        try:
            body: bytes = self.client.get_object(Bucket=BUCKET, Key=f"{self.prefix}/{key}")[
                "Body"
            ].read()
        except self.client.exceptions.NoSuchKey:
            return None
        return body

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=BUCKET, Key=f"{self.prefix}/{key}", Body=data)

    def keys(self) -> list[str]:
        resp = self.client.list_objects_v2(Bucket=BUCKET, Prefix=self.prefix + "/")
        return sorted(o["Key"][len(self.prefix) + 1 :] for o in resp.get("Contents", []))


class TestLocalStore(StoreConformance):
    @pytest.fixture
    def store(self, tmp_path: Path) -> LocalStore:
        store = open_store(str(tmp_path / "root"))
        assert isinstance(store, LocalStore)
        return store

    @pytest.fixture
    def backdoor(self, tmp_path: Path) -> Backdoor:
        return LocalBackdoor(tmp_path / "root")


class TestS3Store(StoreConformance):
    @pytest.fixture
    def store(self, s3_uri: str, s3_config: StorageConfig) -> S3Store:
        # A small multipart threshold so the conformance suite exercises multipart uploads.
        config = s3_config.replace(multipart_threshold=6 * MiB, multipart_chunksize=5 * MiB)
        store = open_store(s3_uri, config)
        assert isinstance(store, S3Store)
        return store

    @pytest.fixture
    def backdoor(self, s3_uri: str, s3_config: StorageConfig) -> Backdoor:
        return S3Backdoor(s3_config, s3_uri.split("/", 3)[3])


def test_s3_aborted_stream_leaves_no_multipart_upload(
    s3_uri: str, s3_config: StorageConfig
) -> None:
    config = s3_config.replace(multipart_threshold=6 * MiB, multipart_chunksize=5 * MiB)
    store = open_store(s3_uri, config)
    assert isinstance(store, S3Store)
    writer = store.open_writer("big")
    writer.write(b"y" * (16 * MiB))
    writer.abort()
    prefix = store.location.join("big").path
    uploads = store.client.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix)
    assert uploads.get("Uploads", []) == []
    assert not store.exists("big")
