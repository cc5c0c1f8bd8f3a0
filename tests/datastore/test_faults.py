"""Network faults injected for real between the S3 client and SeaweedFS.

A :class:`~tests.faultproxy.FaultProxy` sits between Shardyard and the suite's SeaweedFS server
and resets, drops, delays, stalls or cuts connections; one test SIGKILLs a private server in the
middle of a write. They show that transient faults are retried (and logged), that a dead
endpoint fails within a time computed from the config with one clear line, and that no partial
object or manifest ever becomes visible. Ground truth comes from a plain boto3 client talking
to the real endpoint, never through the proxy.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import numpy as np
import pyarrow as pa
import pytest
from botocore.config import Config

from datastore import (
    AlreadyExists,
    DatasetWriter,
    NotFound,
    ShardyardError,
    StorageConfig,
    Unreachable,
    dataset_versions,
    open_dataset,
    open_store,
)
from datastore.s3 import drop_clients
from datastore.testing import SeaweedFS
from tests.conftest import BUCKET
from tests.faultproxy import FaultProxy

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MiB = 1024 * 1024
RETRY_LOGGER = "shardyard.retry"
SHARDYARD = Path(sys.executable).parent / "shardyard"


# -- helpers ---------------------------------------------------------------------------------
def worst_case(config: StorageConfig, requests: int = 1) -> float:
    """Longest ``requests`` sequential S3 requests may take under ``config``'s retry budget:
    every attempt spends its connect and read timeouts, every wait its backoff cap."""
    attempts = config.max_attempts * (config.connect_timeout + config.read_timeout)
    waits = sum(
        min(config.backoff_max, config.backoff_base * 2**i) for i in range(config.max_attempts - 1)
    )
    return requests * (attempts + waits)


def retry_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == RETRY_LOGGER and r.levelno == logging.WARNING]


def raw_client(config: StorageConfig) -> S3Client:
    """A plain boto3 client straight to ``config``'s endpoint (ground truth, not the proxy)."""
    client: S3Client = boto3.client(
        "s3",
        endpoint_url=config.endpoint_url,
        aws_access_key_id=config.access_key_id,
        aws_secret_access_key=config.secret_access_key,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 3}),
    )
    return client


def prefix_of(uri: str) -> str:
    return uri.split("/", 3)[3]


def visible(client: S3Client, prefix: str) -> dict[str, int]:
    """Every object a lister sees under ``prefix/``: key -> size."""
    found: dict[str, int] = {}
    for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=BUCKET, Prefix=prefix + "/"
    ):
        for obj in page.get("Contents", []):
            found[obj["Key"]] = obj["Size"]
    return found


def small_table(rows: int = 4000) -> pa.Table:
    return pa.table(
        {
            "id": pa.array(range(rows), pa.int64()),
            "text": [f"row {i} " * 3 for i in range(rows)],
        }
    )


# A few shards of about 64 KiB each: 256 KiB of incompressible rows.
SEVERAL_SHARDS: dict[str, Any] = {"shard_size": 64 * 1024, "row_group_bytes": 32 * 1024}


def several_shards_table() -> pa.Table:
    return payload_table(256 * 1024, row_bytes=16 * 1024)


def payload_table(nbytes: int, seed: int = 0, row_bytes: int = 64 * 1024) -> pa.Table:
    """About ``nbytes`` of incompressible rows, so shard sizes are predictable."""
    rng = np.random.default_rng(seed)
    rows = max(1, nbytes // row_bytes)
    blobs = [rng.bytes(row_bytes) for _ in range(rows)]
    return pa.table({"id": pa.array(range(rows), pa.int64()), "blob": pa.array(blobs, pa.binary())})


def quiet_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    """The environment minus every AWS / Shardyard setting and config file, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SHARDYARD_"))}
    env["HOME"] = str(tmp_path)
    env["SHARDYARD_CONFIG"] = str(tmp_path / "absent.toml")
    env["AWS_CONFIG_FILE"] = str(tmp_path / "absent-aws-config")
    env["AWS_SHARED_CREDENTIALS_FILE"] = str(tmp_path / "absent-aws-credentials")
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    env.update(settings)
    return env


@pytest.fixture
def proxy(seaweedfs: SeaweedFS) -> Iterator[FaultProxy]:
    """A fault proxy in front of the suite's SeaweedFS S3 port."""
    with FaultProxy(("127.0.0.1", seaweedfs.ports["s3"])) as p:
        yield p


@pytest.fixture
def faulty(s3_config: StorageConfig, proxy: FaultProxy) -> StorageConfig:
    """Settings that go through the proxy, with a small, fast retry budget."""
    return s3_config.replace(
        endpoint_url=proxy.url,
        max_attempts=4,
        backoff_base=0.01,
        backoff_max=0.05,
        connect_timeout=1.0,
        read_timeout=2.0,
    )


@pytest.fixture
def direct(s3_config: StorageConfig) -> S3Client:
    return raw_client(s3_config)


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound (so nobody else takes it), not listening."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


# -- transient faults are retried ------------------------------------------------------------
@pytest.mark.parametrize("fault", ["reset", "drop"])
def test_reset_and_dropped_connections_are_retried(
    fault: str,
    proxy: FaultProxy,
    faulty: StorageConfig,
    s3_uri: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=RETRY_LOGGER)
    inject = proxy.reset_next if fault == "reset" else proxy.drop_next
    table = several_shards_table()

    inject(2)  # the writer's first two connections: its first request and that one's retry
    with DatasetWriter(s3_uri, config=faulty, **SEVERAL_SHARDS) as w:
        w.write(table)
    assert proxy.faulted == 2
    assert w.manifest is not None and len(w.manifest.shards) > 1

    inject(2)  # likewise for a reader in another process (new connections)
    drop_clients()
    ds = open_dataset(s3_uri, config=faulty)
    assert ds.to_table().equals(table)
    assert proxy.faulted == 4

    warned = retry_warnings(caplog)
    assert len(warned) == 4, [r.getMessage() for r in warned]
    assert all(s3_uri in r.getMessage() and "retrying" in r.getMessage() for r in warned)


def test_reset_of_the_manifest_put_is_retried(
    proxy: FaultProxy, faulty: StorageConfig, s3_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A request-level fault on a pooled connection: the commit itself is retried."""
    caplog.set_level(logging.WARNING, logger=RETRY_LOGGER)
    proxy.reset_next(2, match=f"PUT /{BUCKET}/{prefix_of(s3_uri)}/_manifests/".encode())
    with DatasetWriter(s3_uri, config=faulty) as w:
        w.write(small_table())
    assert proxy.faulted == 2
    assert dataset_versions(s3_uri, faulty) == [1]
    assert [r for r in retry_warnings(caplog) if "_manifests/v00000001.json" in r.getMessage()]


@pytest.mark.parametrize("version", [None, 1])
def test_lost_answer_to_the_commit_does_not_commit_twice(
    version: int | None,
    proxy: FaultProxy,
    faulty: StorageConfig,
    s3_config: StorageConfig,
    s3_uri: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The server creates the manifest but its answer is lost; the retry then finds the object.

    That is the writer's own commit, not another writer's: it must neither raise
    VersionConflict nor commit the same data again as the next version.
    """
    caplog.set_level(logging.WARNING, logger=RETRY_LOGGER)
    proxy.drop_response_next(
        1, match=f"PUT /{BUCKET}/{prefix_of(s3_uri)}/_manifests/v00000001.json ".encode()
    )
    table = small_table()
    with DatasetWriter(s3_uri, config=faulty, version=version) as w:
        w.write(table)
    assert proxy.faulted == 1
    assert len(retry_warnings(caplog)) == 1
    assert w.manifest is not None and w.manifest.version == 1
    assert dataset_versions(s3_uri, s3_config) == [1]
    assert open_dataset(s3_uri, config=s3_config).to_table().equals(table)


@pytest.mark.parametrize("size", [64 * 1024, 12 * MiB], ids=["single-put", "multipart"])
def test_lost_answer_to_a_create_is_not_already_exists(
    size: int, proxy: FaultProxy, faulty: StorageConfig, s3_uri: str, direct: S3Client
) -> None:
    config = faulty.replace(multipart_threshold=6 * MiB, multipart_chunksize=5 * MiB)
    store = open_store(s3_uri, config)
    key = f"{prefix_of(s3_uri)}/obj"
    # The request that makes the object visible: the PUT, or the multipart completion.
    final = f"PUT /{BUCKET}/{key} " if size < 6 * MiB else f"POST /{BUCKET}/{key}?uploadId="
    proxy.drop_response_next(1, match=final.encode())
    data = os.urandom(size)
    info = store.put("obj", data, mode="create")
    assert proxy.faulted == 1
    assert info.size == size
    assert direct.get_object(Bucket=BUCKET, Key=key)["Body"].read() == data
    with pytest.raises(AlreadyExists, match="obj"):  # still exclusive for everyone else
        store.put("obj", b"someone else", mode="create")


def test_slow_link_and_stalled_answer(
    proxy: FaultProxy, faulty: StorageConfig, s3_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=RETRY_LOGGER)
    config = faulty.replace(read_timeout=0.5)
    table = small_table()

    proxy.delay(0.05)  # every chunk late, each by less than the read timeout: slow, not broken
    with DatasetWriter(s3_uri, config=config) as w:
        w.write(table)
    assert open_dataset(s3_uri, config=config).to_table().equals(table)
    assert retry_warnings(caplog) == []

    proxy.delay(3 * config.read_timeout, count=1)  # the next connection stalls past the timeout
    drop_clients()  # as a reader in another process: new connections
    faulted = proxy.faulted
    start = time.monotonic()
    ds = open_dataset(s3_uri, config=config)
    elapsed = time.monotonic() - start
    assert ds.to_table().equals(table)
    assert proxy.faulted == faulted + 1
    warned = retry_warnings(caplog)
    assert len(warned) == 1 and "ReadTimeoutError" in warned[0].getMessage()
    assert elapsed < 3 * config.read_timeout  # it gave up on the stall instead of waiting it out


def test_upload_cut_once_is_retried(
    proxy: FaultProxy, faulty: StorageConfig, s3_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=RETRY_LOGGER)
    config = faulty.replace(multipart_threshold=6 * MiB, multipart_chunksize=5 * MiB)
    table = payload_table(12 * MiB)
    proxy.cut_upstream_after(1 * MiB, count=1)  # the first connection dies 1 MiB into a part
    with DatasetWriter(s3_uri, config=config, format="arrow") as w:
        w.write(table)
    assert proxy.cuts == 1
    assert w.manifest is not None and w.manifest.shards[0].bytes > 2 * config.multipart_chunksize
    assert len(retry_warnings(caplog)) == 1
    ds = open_dataset(s3_uri, config=config)
    assert ds.verify().ok
    assert ds.to_table().equals(table)


# -- faults that outlast the retry budget ----------------------------------------------------
def test_connection_cut_mid_upload_leaves_nothing_visible(
    proxy: FaultProxy,
    faulty: StorageConfig,
    s3_config: StorageConfig,
    s3_uri: str,
    direct: S3Client,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=RETRY_LOGGER)
    config = faulty.replace(
        multipart_threshold=6 * MiB, multipart_chunksize=5 * MiB, max_attempts=2
    )
    proxy.cut_upstream_after(1 * MiB)  # every connection dies 1 MiB into its upload
    with (
        pytest.raises(Unreachable, match=re.escape(s3_uri)),
        DatasetWriter(s3_uri, config=config, format="arrow") as w,
    ):
        w.write(payload_table(12 * MiB))
    assert proxy.cuts >= config.max_attempts  # the part that failed was tried max_attempts times
    assert retry_warnings(caplog)

    prefix = prefix_of(s3_uri)
    assert visible(direct, prefix) == {}  # no manifest, no shard, no partial object
    uploads = direct.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix + "/")
    assert uploads.get("Uploads", []) == []  # the failed upload was aborted, parts and all
    with pytest.raises(NotFound):
        open_dataset(s3_uri, config=s3_config)


def _dead_endpoint(kind: str, proxy: FaultProxy, refused_port: int) -> str:
    if kind == "refused":
        return f"http://127.0.0.1:{refused_port}"
    proxy.blackhole()
    return proxy.url


@pytest.mark.parametrize("kind", ["refused", "blackhole"])
def test_dead_endpoint_fails_within_the_budget(
    kind: str,
    proxy: FaultProxy,
    refused_port: int,
    s3_config: StorageConfig,
    s3_uri: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=RETRY_LOGGER)
    endpoint = _dead_endpoint(kind, proxy, refused_port)
    config = s3_config.replace(
        endpoint_url=endpoint,
        max_attempts=3,
        backoff_base=0.05,
        backoff_max=0.1,
        connect_timeout=0.5,
        read_timeout=0.5,
    )
    start = time.monotonic()
    with pytest.raises(Unreachable) as info:
        open_dataset(s3_uri, config=config)
    elapsed = time.monotonic() - start

    assert elapsed < worst_case(config) + 1.0
    message = str(info.value)
    assert "\n" not in message and endpoint in message and s3_uri in message
    assert len(retry_warnings(caplog)) == config.max_attempts - 1
    if kind == "blackhole":
        # Each attempt waited out its read timeout, and no client layer retried underneath ours.
        assert elapsed >= config.max_attempts * config.read_timeout * 0.9
        assert proxy.accepted == config.max_attempts
        assert "ReadTimeoutError" in message


# -- the CLI: one line, no traceback ---------------------------------------------------------
def run_cli(env: dict[str, str], *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SHARDYARD), *args], env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize(("kind", "attempts"), [("refused", 1), ("refused", 3), ("blackhole", 2)])
def test_cli_dead_endpoint_one_error_line(
    kind: str,
    attempts: int,
    proxy: FaultProxy,
    refused_port: int,
    s3_config: StorageConfig,
    s3_uri: str,
    tmp_path: Path,
) -> None:
    endpoint = _dead_endpoint(kind, proxy, refused_port)
    settings = {
        "MAX_ATTEMPTS": str(attempts),
        "BACKOFF_BASE": "0.05",
        "BACKOFF_MAX": "0.1",
        "CONNECT_TIMEOUT": "0.5",
        "READ_TIMEOUT": "0.5",
        "ACCESS_KEY_ID": s3_config.access_key_id or "",
        "SECRET_ACCESS_KEY": s3_config.secret_access_key or "",
    }
    env = quiet_env(tmp_path, **{f"SHARDYARD_S3_{k}": v for k, v in settings.items()})
    config = StorageConfig.resolve(env=env)
    bound = worst_case(config) + 10.0  # plus interpreter start-up and imports
    start = time.monotonic()
    proc = run_cli(env, "--endpoint-url", endpoint, "dataset", "info", s3_uri, timeout=2 * bound)
    elapsed = time.monotonic() - start

    assert proc.returncode == 1
    assert elapsed < bound
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr  # retries are logged only with -V
    assert lines[0].startswith("error: S3 endpoint ")
    assert endpoint in lines[0] and s3_uri in lines[0]


@pytest.mark.parametrize(
    ("which", "code"), [("key", "InvalidAccessKeyId"), ("secret", "SignatureDoesNotMatch")]
)
def test_cli_bad_credentials_one_line(
    which: str, code: str, s3_config: StorageConfig, s3_uri: str, tmp_path: Path
) -> None:
    key = s3_config.access_key_id or ""
    secret = s3_config.secret_access_key or ""
    env = quiet_env(
        tmp_path,
        SHARDYARD_S3_ACCESS_KEY_ID="not-a-key" if which == "key" else key,
        SHARDYARD_S3_SECRET_ACCESS_KEY="not-the-secret" if which == "secret" else secret,
        SHARDYARD_S3_MAX_ATTEMPTS="3",
    )
    assert s3_config.endpoint_url
    proc = run_cli(
        env, "--endpoint-url", s3_config.endpoint_url, "dataset", "info", s3_uri, timeout=60
    )
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    assert "rejected the credentials" in lines[0] and code in lines[0]


# -- the server dies in the middle of a write ------------------------------------------------
def _forget_probe_bucket(server: SeaweedFS) -> None:
    # SeaweedFS.start() proves readiness by creating bucket "probe-<pid>", and fails if it
    # exists; remove it so the same process can start a server on this data directory again.
    raw_client(server.config).delete_bucket(Bucket=f"probe-{os.getpid()}")


@pytest.mark.slow
def test_server_killed_mid_write(tmp_path: Path) -> None:
    workdir = tmp_path / "weed"
    uri = f"s3://{BUCKET}/killed"
    table = payload_table(8 * MiB, seed=7)
    shape: dict[str, Any] = {
        "format": "arrow",
        "shard_size": 2 * MiB,
        "row_group_bytes": 1 * MiB,
    }
    # The same write to a local directory gives the exact bytes of every complete shard,
    # by file name (part-00000.arrow, ...; the folder above is random per writer).
    with DatasetWriter(str(tmp_path / "reference"), **shape) as ref:
        ref.write(table)
    assert ref.manifest is not None and len(ref.manifest.shards) >= 3
    complete = {
        s.path.rsplit("/", 1)[-1]: (tmp_path / "reference" / s.path).read_bytes()
        for s in ref.manifest.shards
    }

    servers: list[SeaweedFS] = []
    try:
        first = SeaweedFS(workdir)
        servers.append(first)
        first.start()
        first.create_bucket(BUCKET)
        _forget_probe_bucket(first)
        outcome: dict[str, Any] = {}
        finished = threading.Event()
        with FaultProxy(("127.0.0.1", first.ports["s3"])) as proxy:
            config = first.config.replace(
                endpoint_url=proxy.url,
                max_attempts=3,
                backoff_base=0.05,
                backoff_max=0.2,
                connect_timeout=0.5,
                read_timeout=1.0,
            )

            def write() -> None:
                try:
                    with DatasetWriter(uri, config=config, **shape) as w:
                        w.write(table)
                    outcome["manifest"] = w.manifest
                except BaseException as err:
                    outcome["error"] = err
                finally:
                    finished.set()

            proxy.delay(0.01)  # about 6 MiB/s, so the kill lands inside the write
            writer = threading.Thread(target=write, name="killed-writer")
            writer.start()
            assert proxy.wait_bytes_up(3 * MiB, timeout=30), "the write never got going"
            first.kill()
            killed = time.monotonic()
            # What is left: the upload in flight, then aborting deletes of the uploaded shards.
            bound = worst_case(config, requests=1 + len(complete)) + 2.0
            assert finished.wait(bound), f"the writer hung for {bound:.1f}s after the server died"
            elapsed = time.monotonic() - killed
            writer.join(5)
        assert "manifest" not in outcome
        assert isinstance(outcome.get("error"), ShardyardError), outcome
        assert elapsed < bound

        # Same data directory and ports. The master's raft state is dropped so that the
        # single-node master does not sit out a leader election; objects live in the volume
        # and filer stores, which are kept.
        shutil.rmtree(workdir / "data" / f"m{first.ports['master']}")
        second = SeaweedFS(workdir, ports=first.ports)
        servers.append(second)
        second.start()

        with pytest.raises(NotFound):
            open_dataset(uri, config=second.config)
        stored = visible(raw_client(second.config), prefix_of(uri))
        assert not [k for k in stored if "/_manifests/" in k]
        client = raw_client(second.config)
        for key in stored:
            body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
            assert body == complete.get(key.rsplit("/", 1)[-1]), f"{key} is not a complete shard"

        # The leftovers do not get in the way: the same write now commits version 1.
        with DatasetWriter(uri, config=second.config, **shape) as again:
            again.write(table)
        assert open_dataset(uri, config=second.config).to_table().equals(table)
    finally:
        for server in servers:
            server.kill()  # a throwaway server: no need to wait for a graceful exit
            server.stop()


# -- an object deleted under a reader --------------------------------------------------------
@pytest.mark.parametrize("ranged", [False, True], ids=["whole", "parallel-ranges"])
def test_object_deleted_under_a_reader(
    ranged: bool,
    s3_config: StorageConfig,
    s3_uri: str,
    direct: S3Client,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=RETRY_LOGGER)
    config = s3_config.replace(multipart_threshold=64 * MiB, multipart_chunksize=5 * MiB)
    if ranged:  # shards over the chunk size are read as parallel range GETs
        table, shape = payload_table(24 * MiB), {"format": "arrow", "shard_size": 11 * MiB}
    else:
        table, shape = several_shards_table(), SEVERAL_SHARDS
    with DatasetWriter(s3_uri, config=config, **shape) as w:
        w.write(table)
    ds = open_dataset(s3_uri, config=config)
    assert len(ds.shards) >= 2
    gone = ds.shards[1]
    if ranged:
        assert gone.bytes > config.multipart_chunksize
    direct.delete_object(Bucket=BUCKET, Key=f"{prefix_of(s3_uri)}/{gone.path}")

    start = time.monotonic()
    with pytest.raises(NotFound, match=re.escape(ds.store.uri_of(gone.path))):
        ds.read_shard(1)
    assert time.monotonic() - start < 2.0
    assert retry_warnings(caplog) == []  # a missing object is an answer, not a fault
    assert ds.read_shard(0).num_rows == ds.shards[0].rows  # the rest still reads
    result = ds.verify()
    assert not result.ok and len(result.problems) == 1 and gone.path in result.problems[0]
