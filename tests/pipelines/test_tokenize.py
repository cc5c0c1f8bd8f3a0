"""The tokenize job: exactness on real multilingual text, determinism, lineage, S3, errors,
the CLI, and resume after kill -9."""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import subprocess
import sys
import time
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from datastore import (
    ArrayDatasetWriter,
    DatasetWriter,
    ParentRef,
    StorageConfig,
    dataset_versions,
    open_dataset,
)
from datastore.errors import InvalidInput, NotFound
from datastore.packed import PackedTokens, open_packed
from pipelines.config import ExecutionConfig
from pipelines.tokenize import TokenizeConfig, TokenizeReport, tokenize
from pipelines.tokenizer import ByteTokenizer, HFTokenizer, TokenizerSpec, load_tokenizer
from tests.pipelines.conftest import CORPUS, cli_env


def _config(tokenizer: str = "bytes", **kw: Any) -> TokenizeConfig:
    execution = kw.pop("execution", ExecutionConfig(workers=1, processes=False, progress=False))
    base = {"seq_len": 256, "shard_rows": 32, "chunk_rows": 8, "segment_shard_rows": 64}
    return TokenizeConfig(tokenizer=TokenizerSpec(tokenizer), execution=execution, **{**base, **kw})


@cache
def _byte_map() -> dict[str, int]:
    """GPT-2's byte <-> printable character table, inverted (what ByteLevel BPE stores)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def _token_bytes(tok: Any, ids: np.ndarray) -> bytes:
    """The exact bytes of ``ids`` (no decoding step that could hide a lost byte)."""
    if isinstance(tok, ByteTokenizer):
        return tok.decode_bytes(ids)
    inv = _byte_map()
    return b"".join(bytes(inv[c] for c in tok.hf.id_to_token(int(i))) for i in ids)


def _read_all(p: PackedTokens) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.asarray(p.tokens[:]), np.asarray(p.row_segments[:]), np.asarray(p.segments_array[:])


def check_exact(
    report: TokenizeReport, texts: list[str | None], tok: Any, storage: Any = None
) -> None:
    """Every document comes back exactly: token counts, ids, per-segment source byte spans."""
    p = open_packed(report.output_uri, report.output_version, storage)
    tokens, firsts, segs = _read_all(p)
    seq_len = p.seq_len
    encoded = {i: tok.encode(pa.array([t]))[0] for i, t in enumerate(texts) if t}
    assert report.documents == len(texts)
    assert report.empty_documents == sum(1 for t in texts if not t)
    assert report.document_tokens == sum(len(v) for v in encoded.values())
    assert report.total_tokens == report.document_tokens + len(encoded)
    assert report.rows == p.rows == tokens.shape[0] and report.segments == len(segs)
    pieces: dict[int, list[tuple[int, np.ndarray]]] = {}
    real = 0
    for r in range(p.rows):
        stop = firsts[r + 1] if r + 1 < p.rows else len(segs)
        pos = 0
        for doc, off, length in segs[firsts[r] : stop]:
            pieces.setdefault(int(doc), []).append((int(off), tokens[r, pos : pos + length]))
            pos += int(length)
        real += pos
        assert (tokens[r, pos:] == p.pad_id).all()
        if r < 3:
            np.testing.assert_array_equal(p.cu_seqlens(r)[-1], pos)
    assert real == report.total_tokens
    assert report.pad_fraction == pytest.approx(1 - real / (p.rows * seq_len), abs=1e-6)
    assert set(pieces) == set(encoded), "every non-empty document, and only those"
    for doc, parts in pieces.items():
        text = texts[doc]
        assert text
        assert tok.eos_id not in encoded[doc], "text never becomes the EOS id"
        want = np.append(encoded[doc], tok.eos_id)
        got = np.concatenate([x for _, x in parts])
        np.testing.assert_array_equal(got, want)
        assert tok.decode(got[:-1]) == text
        source = text.encode()
        token_lens = [len(_token_bytes(tok, encoded[doc][i : i + 1])) for i in range(len(want) - 1)]
        byte_at = np.concatenate([[0], np.cumsum(token_lens)]).astype(int)
        for off, ids in parts:
            body = ids[: len(want) - 1 - off] if off + len(ids) == len(want) else ids
            span = source[byte_at[off] : byte_at[off + len(body)]]
            assert _token_bytes(tok, body) == span, f"doc {doc} piece at token {off}"


@pytest.mark.parametrize("packing", ["greedy", "padded"])
@pytest.mark.parametrize("which", ["bytes", "bpe"])
def test_exact_on_real_multilingual_text(
    text_dataset: dict[str, Any], trained: dict[str, Any], tmp_path: Path, which: str, packing: str
) -> None:
    spec = "bytes" if which == "bytes" else trained["path"]
    report = tokenize(text_dataset["uri"], str(tmp_path / "tok"), _config(spec, packing=packing))
    # the reference engine checks whatever engine the job used (fastokens by default)
    tok = load_tokenizer(TokenizerSpec(spec, engine="tokenizers"))
    assert report.engine == ("builtin" if which == "bytes" else "fastokens")
    assert report.engine_fallbacks == 0
    check_exact(report, text_dataset["texts"], tok)
    if packing == "greedy":
        assert report.rows == math.ceil(report.total_tokens / report.seq_len)
    else:
        assert report.split_documents == sum(
            1 for t in text_dataset["texts"] if t and len(tok.encode(pa.array([t]))[0]) >= 256
        )
    assert report.dtype == "uint16" and open_packed(report.output_uri).tokens.dtype == np.uint16
    ds = open_dataset(report.output_uri)
    assert ds.verify().ok
    src = open_dataset(text_dataset["uri"])
    assert ds.manifest.parents == [ParentRef(src.uri, src.version)]
    meta = ds.manifest.metadata["tokenize"]
    assert meta["source"]["version"] == src.version
    assert meta["tokenizer"]["checksum"] == tok.checksum
    if isinstance(tok, HFTokenizer):
        assert tok.checksum == trained["checksum"]


def _objects(uri: str) -> list[tuple[str, str]]:
    return [(o.path, o.checksum) for o in open_dataset(uri).manifest.objects]


def test_deterministic_across_worker_counts_and_reruns(
    text_dataset: dict[str, Any], trained: dict[str, Any], tmp_path: Path
) -> None:
    one = tokenize(text_dataset["uri"], str(tmp_path / "a"), _config(trained["path"]))
    two_procs = _config(
        trained["path"], execution=ExecutionConfig(workers=2, processes=True, progress=False)
    )
    two = tokenize(text_dataset["uri"], str(tmp_path / "b"), two_procs)
    assert one.job_id == two.job_id and one.partitions > 3
    assert _objects(one.output_uri) == _objects(two.output_uri)
    # another job commits version 2; rerunning the first job finds its version 1 and
    # rewrites nothing
    other = tokenize(text_dataset["uri"], str(tmp_path / "a"), _config(seq_len=128))
    assert other.output_version == 2
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "a" / "arrays").rglob("*")}
    again = tokenize(text_dataset["uri"], str(tmp_path / "a"), _config(trained["path"]))
    assert again.output_version == 1 == one.output_version
    after = {p: p.stat().st_mtime_ns for p in (tmp_path / "a" / "arrays").rglob("*")}
    assert after == before and dataset_versions(str(tmp_path / "a")) == [1, 2]
    assert {**again.to_dict(), "timings": {}} == {**one.to_dict(), "timings": {}}
    assert not (tmp_path / "a" / "_work").exists() or not any((tmp_path / "a" / "_work").iterdir())


def test_s3_source_and_output(s3_uri: str, s3_config: StorageConfig) -> None:
    texts = ["héllo wörld", "", "日本語のテキスト " * 40, "plain ascii " * 100]
    with DatasetWriter(f"{s3_uri}/docs", config=s3_config) as w:
        w.write(pa.table({"text": texts}))
    cfg = _config(seq_len=64, shard_rows=16, chunk_rows=8, segment_shard_rows=16)
    report = tokenize(f"{s3_uri}/docs", f"{s3_uri}/tokens", cfg, storage=s3_config)
    check_exact(report, texts, ByteTokenizer(), s3_config)
    assert open_dataset(f"{s3_uri}/tokens", config=s3_config).verify().ok


def _wordlevel(path: Path, size: int) -> str:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(size)}
    vocab.update({"[UNK]": size, "</s>": size + 1})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(path))
    return str(path)


def test_large_vocabulary_needs_uint32(tmp_path: Path) -> None:
    big = _wordlevel(tmp_path / "big.json", 70_000)
    with DatasetWriter(str(tmp_path / "docs")) as w:
        w.write(pa.table({"text": ["w1 w69999 w5", "w65536 oov"]}))
    with pytest.raises(
        InvalidInput, match=r"has 70,002 ids; uint16 holds 65,536: use --dtype uint32"
    ):
        tokenize(str(tmp_path / "docs"), str(tmp_path / "t"), _config(big, dtype="uint16"))
    report = tokenize(str(tmp_path / "docs"), str(tmp_path / "t"), _config(big, seq_len=8))
    assert report.dtype == "uint32"
    row = open_packed(report.output_uri).row(0)
    assert row.dtype == np.uint32
    assert row[:7].tolist() == [1, 69999, 5, 70001, 65536, 70000, 70001]


def test_bad_input_is_refused(text_dataset: dict[str, Any], tmp_path: Path) -> None:
    src = text_dataset["uri"]
    with pytest.raises(InvalidInput, match=r"has no column 'body' \(columns: id, text\)"):
        tokenize(src, str(tmp_path / "t"), _config(text_field="body"))
    with DatasetWriter(str(tmp_path / "nums")) as w:
        w.write(pa.table({"text": [1, 2]}))
    with pytest.raises(InvalidInput, match=r"column 'text' of dataset .* is int64, not text"):
        tokenize(str(tmp_path / "nums"), str(tmp_path / "t"), _config())
    with DatasetWriter(str(tmp_path / "empty")) as w:
        w.write(pa.table({"text": ["", None, ""]}))
    with pytest.raises(InvalidInput, match="no non-empty documents in column 'text'"):
        tokenize(str(tmp_path / "empty"), str(tmp_path / "t"), _config())
    with ArrayDatasetWriter(str(tmp_path / "arr")) as aw:
        aw.create_array("x", dtype="uint8")
        aw.append("x", np.zeros(3, np.uint8))
    with pytest.raises(InvalidInput, match="holds arrays, not documents"):
        tokenize(str(tmp_path / "arr"), str(tmp_path / "t"), _config())
    with pytest.raises(NotFound, match="does not exist"):
        tokenize(src, str(tmp_path / "t"), _config(str(tmp_path / "missing.json")))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InvalidInput, match=r"is not a valid tokenizer\.json"):
        tokenize(src, str(tmp_path / "t"), _config(str(tmp_path / "bad.json")))
    with pytest.raises(InvalidInput, match="--packing 'zigzag'"):
        tokenize(src, str(tmp_path / "t"), _config(packing="zigzag"))
    with pytest.raises(InvalidInput, match="--seq-len 0"):
        tokenize(src, str(tmp_path / "t"), _config(seq_len=0))
    with pytest.raises(InvalidInput, match="is the source dataset"):
        tokenize(src, src, _config())
    with pytest.raises(InvalidInput, match="is a table dataset; write token rows to another"):
        tokenize(src, str(tmp_path / "nums"), _config())
    assert not (tmp_path / "t" / "_manifests").exists(), "nothing was committed"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shardyard", *args],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_json_train_and_errors(text_dataset: dict[str, Any], tmp_path: Path) -> None:
    tok_path = str(tmp_path / "tok.json")
    trained = _cli(
        "tokenizer", "train", text_dataset["uri"], "--vocab-size", "400", "-o", tok_path, "--json"
    )
    assert trained.returncode == 0, trained.stderr
    assert json.loads(trained.stdout)["vocab_size"] == 400
    out = str(tmp_path / "tok")
    # registered inputs: the output's registry version links to them by itself
    from datastore import open_dataset
    from registry import Registry

    db, blobs = str(tmp_path / "reg.db"), str(tmp_path / "blobs")
    reg = Registry(db, blobs)
    src = open_dataset(text_dataset["uri"])
    reg.register("data/docs", kind="dataset", dataset=(src.uri, src.version))
    reg.register("tok/bpe", [tok_path], kind="tokenizer")
    done = _cli(
        "tokenize",
        text_dataset["uri"],
        "-o",
        out,
        "--tokenizer",
        tok_path,
        "--seq-len",
        "512",
        "--workers",
        "1",
        "--register",
        "data/tokens",
        "--registry",
        db,
        "--blobs",
        blobs,
        "--json",
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    for key in ("total_tokens", "rows", "pad_fraction", "output_uri", "output_version"):
        assert key in report
    assert report["output_version"] == 1 and report["rows"] == open_packed(out).rows
    assert report["registered"] == {"ref": "data/tokens:1", "parents": ["data/docs:1", "tok/bpe:1"]}
    tokens = reg.resolve("data/tokens:1")
    assert tokens.dataset_uri == report["output_uri"] and tokens.dataset_version == 1
    assert {n["ref"] for n in reg.lineage("data/tokens:1").nodes.values()} == {
        "data/tokens:1",
        "data/docs:1",
        "tok/bpe:1",
    }
    missing = _cli(
        "tokenize", text_dataset["uri"], "-o", out, "--tokenizer", str(tmp_path / "nope.json")
    )
    assert missing.returncode == 1
    assert missing.stderr.strip().count("\n") == 0 and "Traceback" not in missing.stderr
    assert "nope.json does not exist" in missing.stderr
    wrong = _cli("tokenize", text_dataset["uri"], "-o", out, "--text-field", "body")
    assert wrong.returncode == 1 and "no column 'body'" in wrong.stderr
    assert wrong.stderr.strip().count("\n") == 0


@pytest.mark.xdist_group("crash")
def test_kill_9_mid_pack_and_rerun(tmp_path: Path) -> None:
    """Kill the CLI while it packs, rerun with another worker count: same bytes."""
    texts = [json.loads(line)["text"] for line in CORPUS.read_text().splitlines()][:120]
    with DatasetWriter(str(tmp_path / "docs"), shard_size=48 * 1024) as w:
        w.write(pa.table({"text": texts}))
    args = [
        "tokenize",
        str(tmp_path / "docs"),
        "--seq-len",
        "128",
        "--shard-rows",
        "16",
        "--chunk-rows",
        "16",
        "--json",
    ]
    base = _cli(*args, "-o", str(tmp_path / "base"), "--workers", "2")
    assert base.returncode == 0, base.stderr
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "shardyard", *args, "-o", str(out), "--workers", "1"]
    proc = subprocess.Popen(cmd, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def packed() -> int:
        return sum(1 for _ in (out / "_work").glob("tok-*/b/*.json")) if out.exists() else 0

    try:
        deadline = time.monotonic() + 120
        while packed() < 20 and proc.poll() is None:
            assert time.monotonic() < deadline, "the job made no progress"
            time.sleep(0.02)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (out / "_manifests").exists(), "the killed run committed nothing"
    rerun = _cli(*args, "-o", str(out), "--workers", "2")
    assert rerun.returncode == 0, rerun.stderr
    report = json.loads(rerun.stdout)
    assert report["partitions_resumed"] == report["partitions"] > 3
    assert _objects(str(out)) == _objects(str(tmp_path / "base"))
    assert report["total_tokens"] == json.loads(base.stdout)["total_tokens"]


def test_report_round_trips() -> None:
    fields = {f.name: 0 for f in dataclasses.fields(TokenizeReport)}
    fields.update(tokenizer={"name": "x", "checksum": "sha256:" + "0" * 64}, timings={})
    r = TokenizeReport(**fields)
    assert TokenizeReport.from_dict({**r.to_dict(), "later": 1}) == r
    assert "tokenized 0 documents" in r.summary()
