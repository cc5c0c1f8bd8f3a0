"""URI parsing, filesystem resolution and the documented configuration order."""

from __future__ import annotations

from pathlib import Path

import pyarrow.fs as pafs
import pytest

from datastore import Location, StorageConfig, Unsupported, parse_uri, resolve_filesystem


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("/data/corpus", Location("file", "", "/data/corpus")),
        ("file:///lustre/proj/x", Location("file", "", "/lustre/proj/x")),
        ("s3://bucket/a/b/", Location("s3", "bucket", "a/b")),
        ("s3://bucket", Location("s3", "bucket", "")),
    ],
)
def test_parse(uri: str, expected: Location) -> None:
    assert parse_uri(uri) == expected


def test_relative_path_becomes_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_uri("rel/ds") == Location("file", "", str(tmp_path / "rel" / "ds"))


@pytest.mark.parametrize("uri", ["gs://b/x", "http://h/x", "s3:///nobucket", "file://host/x"])
def test_refused(uri: str) -> None:
    with pytest.raises(Unsupported):
        parse_uri(uri)


def test_join_and_uri() -> None:
    loc = parse_uri("s3://b/root")
    assert loc.join("data", "x.parquet").uri == "s3://b/root/data/x.parquet"
    assert parse_uri("s3://b").join("k").uri == "s3://b/k"
    with pytest.raises(Unsupported):
        loc.join("../other")


def test_resolve_filesystem(s3_config: StorageConfig, tmp_path: Path) -> None:
    fs, path = resolve_filesystem(str(tmp_path / "x"))
    assert isinstance(fs, pafs.LocalFileSystem) and path == str(tmp_path / "x")
    fs, path = resolve_filesystem("s3://shardyard-tests/some/prefix", s3_config)
    assert isinstance(fs, pafs.S3FileSystem) and path == "shardyard-tests/some/prefix"
    # The pyarrow client really reaches the server with the same credentials as boto3.
    with fs.open_output_stream(path + "/probe") as out:
        out.write(b"arrow")
    assert fs.open_input_file(path + "/probe").read() == b"arrow"


def test_resolution_order(tmp_path: Path) -> None:
    cfg_file = tmp_path / "config.toml"
    cfg_file.write_text(
        '[s3]\nendpoint_url = "http://from-file:1"\nregion = "file-region"\n'
        "max_attempts = 3\nread_timeout = 7.5\n"
    )
    env = {
        "SHARDYARD_S3_REGION": "env-region",
        "AWS_ENDPOINT_URL": "http://from-aws-env:2",
        "AWS_REGION": "aws-region",
        "AWS_PROFILE": "team",
    }
    c = StorageConfig.resolve({"max_attempts": 9, "region": None}, env=env, config_file=cfg_file)
    assert c.max_attempts == 9  # flag beats file
    assert c.region == "env-region"  # SHARDYARD_* env beats file and AWS env
    assert c.endpoint_url == "http://from-file:1"  # file beats AWS env
    assert c.read_timeout == 7.5 and c.profile == "team"  # AWS chain fills the rest
    bare = StorageConfig.resolve(
        env={"AWS_ENDPOINT_URL_S3": "http://s3only:3"}, config_file=tmp_path / "missing.toml"
    )
    assert bare.endpoint_url == "http://s3only:3" and bare.max_attempts == 6


def test_config_file_from_env(tmp_path: Path) -> None:
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text('[s3]\naddressing_style = "virtual"\n')
    c = StorageConfig.resolve(env={"SHARDYARD_CONFIG": str(cfg_file)})
    assert c.addressing_style == "virtual"


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"bogus": 1}, "unknown storage setting 'bogus'"),
        ({"max_attempts": "many"}, "SHARDYARD_S3_MAX_ATTEMPTS"),
        ({"addressing_style": "sideways"}, "addressing_style"),
        ({"multipart_chunksize": 1024}, "5 MiB"),
    ],
)
def test_bad_settings_are_named(overrides: dict[str, object], match: str, tmp_path: Path) -> None:
    with pytest.raises(Unsupported, match=match):
        StorageConfig.resolve(overrides, env={}, config_file=tmp_path / "none.toml")
