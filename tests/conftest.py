"""Suite-wide fixtures: a real SeaweedFS S3 server (one per xdist worker) and per-test roots.

``root_uri`` is parametrized over the backends every storage test must pass on: a local
directory and an S3 prefix on the SeaweedFS server.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from datastore import ObjectStore, StorageConfig, open_store
from datastore.testing import SeaweedFS

BUCKET = "shardyard-tests"


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """A SeaweedFS server with S3 gateway and credentials, alive for the whole session."""
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    try:
        server.create_bucket(BUCKET)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_config(seaweedfs: SeaweedFS) -> StorageConfig:
    """StorageConfig reaching the suite's SeaweedFS server."""
    return seaweedfs.config


@pytest.fixture
def s3_uri(s3_config: StorageConfig) -> str:
    """A fresh, empty S3 prefix for one test."""
    return f"s3://{BUCKET}/t-{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest) -> str:
    """Name of the backend a parametrized storage test runs on."""
    return str(request.param)


@pytest.fixture
def root_uri(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A fresh, empty dataset root on the test's backend."""
    if backend == "local":
        return str(tmp_path / "root")
    request.getfixturevalue("s3_config")
    return f"s3://{BUCKET}/t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def storage(backend: str, request: pytest.FixtureRequest) -> StorageConfig | None:
    """The StorageConfig for the test's backend (None for local)."""
    if backend == "local":
        return None
    config: StorageConfig = request.getfixturevalue("s3_config")
    return config


@pytest.fixture
def store(root_uri: str, storage: StorageConfig | None) -> ObjectStore:
    """An ObjectStore at ``root_uri``."""
    return open_store(root_uri, storage)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    """A real PostgreSQL server (one per xdist worker), started as the ``postgres`` user in a
    directory it owns (pytest's own temp root is private to root)."""
    import shutil
    import tempfile

    from registry.testing import PostgresServer

    work = Path(tempfile.mkdtemp(prefix="shardyard-pg-"))
    server = PostgresServer(work)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty registry database on each SQL backend the registry supports."""
    if request.param == "sqlite":
        return str(tmp_path / "registry.db")
    server = request.getfixturevalue("postgres")
    return str(server.create_database())
