"""``shardyard ingest`` as a real process: help, JSON report, explain, one-line errors."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from datastore import StorageConfig
from tests.datastore.test_cli import assert_one_line_error, run
from tests.pipelines.conftest import write_corpus

REPO = Path(__file__).resolve().parents[2]
FAST = [
    "--workers",
    "1",
    "--set",
    "execution.processes=false",
    "--set",
    "input.partition_bytes=262144",
]


def test_help_documents_every_option() -> None:
    proc = run("ingest", "--help")
    assert proc.returncode == 0, proc.stderr
    for flag in (
        "--output",
        "--config",
        "--format",
        "--text-field",
        "--id-field",
        "--no-normalize",
        "--no-filters",
        "--pii",
        "--no-exact-dedup",
        "--no-fuzzy-dedup",
        "--verify-jaccard",
        "--output-format",
        "--max-errors",
        "--scheduler",
        "--workers",
        "--memory-limit",
        "--work-dir",
        "--keep-work",
        "--set",
        "--json",
        "--quiet",
        "explain",
    ):
        assert flag in proc.stdout, flag
    assert run("ingest", "explain", "--help").returncode == 0


def test_json_report_and_explain(tmp_path: Path) -> None:
    truth = write_corpus(tmp_path / "src")
    out = str(tmp_path / "out")
    from registry import Registry

    db, blobs = str(tmp_path / "reg.db"), str(tmp_path / "blobs")
    Registry(db, blobs).register("raw/crawl", [tmp_path / "src"], kind="dataset")
    proc = run(
        "ingest",
        str(tmp_path / "src"),
        "-o",
        out,
        "--no-filters",
        "--json",
        "--register",
        "data/clean",
        "--parent",
        "raw/crawl:1",
        "--registry",
        db,
        "--blobs",
        blobs,
        *FAST,
        PYTHONPATH=str(REPO),
    )
    assert proc.returncode == 0, proc.stderr
    report: dict[str, Any] = json.loads(proc.stdout)
    assert report["registered"] == {"ref": "data/clean:1", "parents": ["raw/crawl:1"]}
    clean = Registry(db, blobs).resolve("data/clean:1")
    from datastore.uri import parse_uri

    # the pointer is the canonical URI (so later jobs reading it match it)
    assert (clean.dataset_uri, clean.dataset_version) == (parse_uri(out).uri, 1)
    assert clean.metadata["job_id"] == report["job_id"]
    assert report["docs_in"] == truth["total"]
    assert report["quarantined"] == truth["bad"]
    assert report["output_version"] == 1 and report["output_uri"] == out
    assert report["docs_out"] == (
        report["docs_in"] - report["exact_duplicates"] - report["fuzzy_duplicates"]
    )
    copy = next(iter(truth["exact"]))
    why = run("ingest", "explain", out, copy)
    assert why.returncode == 0, why.stderr
    assert "removed by exact_duplicate" in why.stdout and truth["exact"][copy] in why.stdout
    missing = run("ingest", "explain", out, "nope")
    assert missing.returncode == 1 and "not in" in missing.stdout
    human = run(
        "ingest", str(tmp_path / "src"), "-o", str(tmp_path / "o2"), "--no-filters", "-q", *FAST
    )
    assert human.returncode == 0 and human.stdout == ""


@pytest.mark.parametrize(
    "args,needles",
    [
        (["--set", "filters.min_wrds=3"], ["unknown config key 'filters.min_wrds'"]),
        (["--set", "dedup.fuzzy.bands=0"], ["dedup.fuzzy.bands must be at least 1"]),
        (["--set", "dedup.fuzzy.algorithm=lsh"], ["algorithm must be one of 'minhash', 'oph'"]),
        (
            ["--set", "dedup.fuzzy.bands=700", "--set", "dedup.fuzzy.rows=6"],
            ["bands * rows must be at most 4096 with algorithm 'oph', not 4200"],
        ),
        (["-c", "/nonexistent/p.toml"], ["cannot read pipeline config /nonexistent/p.toml"]),
        (["--max-errors", "-1"], ["errors.max_errors must not be negative"]),
    ],
)
def test_bad_options_are_one_line(tmp_path: Path, args: list[str], needles: list[str]) -> None:
    (tmp_path / "a.jsonl").write_text('{"text": "x"}\n')
    proc = run("ingest", str(tmp_path / "a.jsonl"), "-o", str(tmp_path / "out"), *args)
    assert_one_line_error(proc, *needles)


def test_bad_config_file_is_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "p.toml"
    cfg.write_text("[filters]\nmin_words = 'many'\n")
    proc = run("ingest", str(tmp_path), "-o", str(tmp_path / "out"), "-c", str(cfg))
    assert_one_line_error(proc, "min_words must be an integer")
    cfg.write_text("[filters\n")
    proc = run("ingest", str(tmp_path), "-o", str(tmp_path / "out"), "-c", str(cfg))
    assert_one_line_error(proc, "is not valid")


def test_missing_input_directory_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    proc = run("ingest", str(tmp_path / "empty"), "-o", str(tmp_path / "out"))
    assert_one_line_error(proc, "contains no files")


def test_max_errors_exceeded_is_one_line(tmp_path: Path) -> None:
    write_corpus(tmp_path / "src")
    proc = run(
        "ingest",
        str(tmp_path / "src"),
        "-o",
        str(tmp_path / "out"),
        "-q",
        "--max-errors",
        "1",
        *FAST,
    )
    assert_one_line_error(proc, "3 records were quarantined", "_quarantine")


@pytest.mark.s3
def test_unreachable_s3_and_bad_credentials_fail_fast(
    s3_config: StorageConfig, tmp_path: Path
) -> None:
    dead = StorageConfig(
        endpoint_url="http://127.0.0.1:9", access_key_id="a", secret_access_key="b"
    )
    proc = run("ingest", "s3://shardyard-tests/raw/", "-o", str(tmp_path / "o"), config=dead)
    assert_one_line_error(proc)
    bad = StorageConfig(
        endpoint_url=s3_config.endpoint_url, access_key_id="wrong", secret_access_key="wrong"
    )
    proc = run("ingest", "s3://shardyard-tests/raw/", "-o", str(tmp_path / "o"), config=bad)
    assert_one_line_error(proc)
    assert "credentials" in proc.stderr.lower() or "denied" in proc.stderr.lower()
    assert os.path.exists(tmp_path) and not (tmp_path / "o" / "_manifests").exists()
