"""``shardyard dataset ...`` run as a real process: output, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from datastore import DatasetWriter, StorageConfig, open_store
from datastore.manifest import manifest_key


def run(
    *args: str, config: StorageConfig | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SHARDYARD_"))}
    if config is not None:
        environ.update(
            SHARDYARD_S3_ENDPOINT_URL=config.endpoint_url or "",
            SHARDYARD_S3_ACCESS_KEY_ID=config.access_key_id or "",
            SHARDYARD_S3_SECRET_ACCESS_KEY=config.secret_access_key or "",
            SHARDYARD_S3_MAX_ATTEMPTS="2",
            SHARDYARD_S3_CONNECT_TIMEOUT="2",
        )
    environ.update(env)
    environ["SHARDYARD_CONFIG"] = os.devnull
    return subprocess.run(
        [sys.executable, "-m", "shardyard", *args],
        capture_output=True,
        text=True,
        env=environ,
        timeout=120,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def dataset(root_uri: str, storage: StorageConfig | None) -> str:
    table = pa.table({"id": list(range(100)), "text": [f"line {i}" for i in range(100)]})
    with DatasetWriter(root_uri, shard_size=800, row_group_bytes=400, config=storage) as w:
        w.write(table)
    with DatasetWriter(root_uri, config=storage, format="arrow") as w:
        w.write(table.slice(0, 10))
    return root_uri


def test_info_json(dataset: str, storage: StorageConfig | None) -> None:
    proc = run("dataset", "info", dataset, "--json", config=storage)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["version"] == 2 and info["rows"] == 10 and info["format"] == "arrow"
    assert info["num_shards"] == 1 and info["bytes"] > 0
    assert [f["name"] for f in info["schema"]] == ["id", "text"]
    old = json.loads(run("dataset", "info", dataset, "--json", "-v", "1", config=storage).stdout)
    assert old["version"] == 1 and old["rows"] == 100 and old["num_shards"] > 1
    assert old["format"] == "parquet" and old["uri"].endswith(dataset.split("://")[-1])


def test_info_human(dataset: str, storage: StorageConfig | None) -> None:
    proc = run("dataset", "info", dataset, config=storage)
    assert proc.returncode == 0
    assert "rows      10" in proc.stdout and "text  string" in proc.stdout


def test_head_and_versions(dataset: str, storage: StorageConfig | None) -> None:
    head = run("dataset", "head", dataset, "-n", "3", "-v", "1", "--json", config=storage)
    assert [json.loads(x) for x in head.stdout.splitlines()] == [
        {"id": i, "text": f"line {i}"} for i in range(3)
    ]
    table = run("dataset", "head", dataset, "-n", "2", "-c", "text", config=storage)
    assert table.stdout.split() == ["text", "line", "0", "line", "1"]
    versions = json.loads(run("dataset", "versions", dataset, "--json", config=storage).stdout)
    assert [(v["version"], v["rows"]) for v in versions] == [(1, 100), (2, 10)]


def test_verify_ok_then_names_bad_shard(dataset: str, storage: StorageConfig | None) -> None:
    ok = run("dataset", "verify", dataset, "-v", "1", config=storage)
    assert ok.returncode == 0 and ok.stdout.startswith("ok:")
    store = open_store(dataset, storage)
    manifest = json.loads(store.get(manifest_key(1)))
    bad = manifest["shards"][-1]["path"]
    data = bytearray(store.get(bad))
    data[-20] ^= 0xFF
    store.put(bad, bytes(data))
    proc = run("dataset", "verify", dataset, "-v", "1", config=storage)
    assert proc.returncode == 1
    assert bad in proc.stderr and "Traceback" not in proc.stderr
    assert run("dataset", "verify", dataset, "-v", "2", config=storage).returncode == 0


def test_missing_dataset(tmp_path: Path) -> None:
    assert_one_line_error(run("dataset", "info", str(tmp_path / "nope")), "no dataset at", "nope")


def test_unsupported_format_version(dataset: str, storage: StorageConfig | None) -> None:
    store = open_store(dataset, storage)
    doc = json.loads(store.get(manifest_key(2)))
    doc["format_version"] = 7
    store.put(manifest_key(3), json.dumps(doc).encode())
    assert_one_line_error(run("dataset", "info", dataset, config=storage), "format version 7")


def test_bad_credentials(s3_config: StorageConfig, s3_uri: str) -> None:
    bad = s3_config.replace(secret_access_key="wrong-secret")
    proc = run("dataset", "info", s3_uri, config=bad)
    assert_one_line_error(proc, "credentials")


def test_unreachable_endpoint_fails_fast(tmp_path: Path) -> None:
    from datastore.testing import free_port

    dead = StorageConfig(
        endpoint_url=f"http://127.0.0.1:{free_port()}", access_key_id="a", secret_access_key="b"
    )
    proc = run("dataset", "info", "s3://bucket/x", config=dead)
    assert_one_line_error(proc, "did not answer", "127.0.0.1")


def test_unknown_scheme() -> None:
    assert_one_line_error(run("dataset", "info", "gs://bucket/x"), "scheme 'gs'")


def test_help_lists_commands() -> None:
    proc = run("dataset", "--help")
    for cmd in ("info", "verify", "head", "versions"):
        assert cmd in proc.stdout
