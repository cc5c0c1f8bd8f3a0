"""Tokenizers: the byte tokenizer over Arrow buffers, Hugging Face files and their errors, and
BPE training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from datastore.errors import InvalidInput, NotFound
from pipelines.tokenizer import (
    ByteTokenizer,
    HFTokenizer,
    TokenizerSpec,
    load_tokenizer,
    train_tokenizer,
)
from tests.pipelines.conftest import MULTILINGUAL


def test_byte_tokenizer_is_exact_on_sliced_and_null_arrays() -> None:
    texts = ["", *MULTILINGUAL, None, "x"]
    tok = ByteTokenizer()
    for arr in (pa.array(texts), pa.array(texts, pa.large_string()), pa.array(texts).slice(2, 5)):
        ids, lengths = tok.encode(arr)
        want = [(t or "").encode() for t in arr.to_pylist()]
        assert lengths.tolist() == [len(b) for b in want]
        assert ids.tobytes() == b"".join(want)
        assert tok.decode_bytes(np.append(ids, tok.eos_id)) == b"".join(want)
    ids, lengths = tok.encode(pa.chunked_array([pa.array(["ab"]), pa.array(["cd"])]))
    assert ids.tobytes() == b"abcd" and lengths.tolist() == [2, 2]


def test_trained_tokenizer_round_trips(trained: dict[str, Any]) -> None:
    tok = load_tokenizer(trained["path"])
    assert isinstance(tok, HFTokenizer)
    assert (tok.eos_id, tok.pad_id, tok.vocab_size) == (0, 1, 600)
    assert tok.checksum == trained["checksum"]
    ids, lengths = tok.encode(pa.array([*MULTILINGUAL, None]))
    assert lengths[-1] == 0 and ids.dtype == np.uint32
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    for text, a, b in zip(MULTILINGUAL, bounds[:-1], bounds[1:], strict=False):
        assert tok.decode(ids[a:b]) == text
    # a directory holding tokenizer.json works too; so does a copy shipped to a worker
    assert load_tokenizer(str(Path(trained["path"]).parent)).checksum == tok.checksum
    import pickle

    copy = pickle.loads(pickle.dumps(tok))
    assert (copy.eos_id, copy.checksum) == (tok.eos_id, tok.checksum)


def test_training_is_deterministic(trained: dict[str, Any], tmp_path: Path) -> None:
    again = train_tokenizer(trained["dataset"], str(tmp_path / "t.json"), 600)
    assert again["checksum"] == trained["checksum"]


def test_tokenizer_errors(tmp_path: Path, trained: dict[str, Any]) -> None:
    with pytest.raises(NotFound, match=r"tokenizer file .*nope\.json does not exist"):
        load_tokenizer(str(tmp_path / "nope.json"))
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": "1.0", "model": ')
    with pytest.raises(InvalidInput, match=r"bad\.json is not a valid tokenizer\.json"):
        load_tokenizer(str(bad))
    binary = tmp_path / "bin.json"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(InvalidInput, match="not UTF-8"):
        load_tokenizer(str(binary))
    # a tokenizer without any usual EOS token must be told which one to use
    doc = json.loads(Path(trained["path"]).read_text())
    for added in doc["added_tokens"]:
        added["content"] = {"<|endoftext|>": "<END>", "<|pad|>": "<PAD>"}[added["content"]]
    doc["model"]["vocab"] = {
        {"<|endoftext|>": "<END>", "<|pad|>": "<PAD>"}.get(k, k): v
        for k, v in doc["model"]["vocab"].items()
    }
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps(doc))
    with pytest.raises(InvalidInput, match="none of the usual end-of-document tokens"):
        load_tokenizer(str(odd))
    tok = load_tokenizer(TokenizerSpec(str(odd), eos_token="<END>", pad_token="<PAD>"))
    assert (tok.eos_id, tok.pad_id) == (0, 1)
    with pytest.raises(InvalidInput, match="no token '<nope>'"):
        load_tokenizer(TokenizerSpec(str(odd), eos_token="<nope>"))
    with pytest.raises(InvalidInput, match="vocab-size 100 is out of range"):
        train_tokenizer(trained["dataset"], str(tmp_path / "x.json"), 100)
    with pytest.raises(InvalidInput, match="no column 'body'"):
        train_tokenizer(trained["dataset"], str(tmp_path / "x.json"), 600, text_field="body")


def test_hf_encoding_in_batches_is_the_same(
    trained: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipelines.tokenizer as mod

    tok = load_tokenizer(trained["path"])
    texts = pa.array([*MULTILINGUAL, "", None, *MULTILINGUAL])
    whole = tok.encode(texts)
    monkeypatch.setattr(mod, "_BATCH_BYTES", 30)  # about one document per call
    batches = list(mod._string_batches(pa.chunked_array([texts[:3], texts[3:]]), 30))
    assert [t for b in batches for t in b] == [t or "" for t in texts.to_pylist()]
    assert len(batches) > 3
    parts = tok.encode(texts)
    np.testing.assert_array_equal(whole[0], parts[0])
    np.testing.assert_array_equal(whole[1], parts[1])
    assert tok.encode(pa.array([], pa.string()))[0].size == 0


def test_engines_agree_and_disagreement_falls_back(
    trained: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    fast = load_tokenizer(trained["path"])
    ref = load_tokenizer(TokenizerSpec(trained["path"], engine="tokenizers"))
    assert isinstance(fast, HFTokenizer) and isinstance(ref, HFTokenizer)
    assert (fast.engine, ref.engine) == ("fastokens", "tokenizers")
    texts = pa.array([*MULTILINGUAL, "x" * 5000, "<|endoftext|>"])
    for a, b in zip(fast.encode(texts), ref.encode(texts), strict=True):
        np.testing.assert_array_equal(a, b)
    assert fast.encode(pa.array(["<|endoftext|>"]))[0].tolist() != [fast.eos_id]

    real = HFTokenizer._encode_fast

    def wrong(engine: Any, strings: list[str]) -> tuple[np.ndarray, np.ndarray]:
        ids, lengths = real(engine, strings)
        return ids + 1, lengths

    monkeypatch.setattr(HFTokenizer, "_encode_fast", staticmethod(wrong))
    ids, _, fallbacks = fast.encode_counted(texts)  # the spot check catches it
    assert fallbacks == 1
    np.testing.assert_array_equal(ids, ref.encode(texts)[0])

    def broken(engine: Any, strings: list[str]) -> tuple[np.ndarray, np.ndarray]:
        raise RuntimeError("unsupported input")

    monkeypatch.setattr(HFTokenizer, "_encode_fast", staticmethod(broken))
    ids, _, fallbacks = fast.encode_counted(texts)  # an engine error falls back too
    assert fallbacks == 1
    np.testing.assert_array_equal(ids, ref.encode(texts)[0])
    monkeypatch.setattr(HFTokenizer, "_encode_fast", staticmethod(wrong))
    text = Path(trained["path"]).read_text()
    assert HFTokenizer(text, name="t").engine == "tokenizers"  # the probes catch it
    with pytest.raises(InvalidInput, match=r"cannot run on fastokens .*--engine tokenizers"):
        HFTokenizer(text, name="t", engine="fastokens")
    with pytest.raises(InvalidInput, match="--engine 'turbo'"):
        load_tokenizer(TokenizerSpec(trained["path"], engine="turbo"))


def test_truncation_padding_and_dropout_in_the_file(
    trained: dict[str, Any], tmp_path: Path
) -> None:
    """A tokenizer.json saved with truncation and padding (common in encoder exports) still
    encodes whole documents; one with BPE dropout (random ids) is refused."""
    doc = json.loads(Path(trained["path"]).read_text())
    doc["truncation"] = {
        "direction": "Right",
        "max_length": 3,
        "strategy": "LongestFirst",
        "stride": 0,
    }
    doc["padding"] = {
        "strategy": "BatchLongest",
        "direction": "Right",
        "pad_to_multiple_of": None,
        "pad_id": 1,
        "pad_type_id": 0,
        "pad_token": "<|pad|>",
    }
    path = tmp_path / "truncating.json"
    path.write_text(json.dumps(doc))
    texts = pa.array(["a long document with many more than three tokens in it", "", "x"])
    want = load_tokenizer(trained["path"]).encode(texts)
    for engine in ("tokenizers", "auto"):
        got = load_tokenizer(TokenizerSpec(str(path), engine=engine)).encode(texts)
        np.testing.assert_array_equal(got[0], want[0])
        assert got[1].tolist() == want[1].tolist() and got[1][1] == 0
    doc["model"]["dropout"] = 0.1
    path.write_text(json.dumps(doc))
    with pytest.raises(InvalidInput, match="uses BPE dropout"):
        load_tokenizer(str(path))


def test_train_into_a_directory_and_bad_options(trained: dict[str, Any], tmp_path: Path) -> None:
    result = train_tokenizer(trained["dataset"], str(tmp_path), 300)
    assert result["output"] == f"{tmp_path}/tokenizer.json"
    assert load_tokenizer(str(tmp_path)).vocab_size == 300
    with pytest.raises(InvalidInput, match="--min-frequency -1"):
        train_tokenizer(trained["dataset"], str(tmp_path / "t.json"), 300, min_frequency=-1)
    with pytest.raises(InvalidInput, match="--max-documents 0"):
        train_tokenizer(trained["dataset"], str(tmp_path / "t.json"), 300, max_documents=0)
