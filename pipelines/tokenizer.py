"""Tokenizers for ``shardyard tokenize``: any Hugging Face ``tokenizer.json``, a built-in byte
tokenizer that needs no file, and BPE training for teams with their own vocabulary.

A :class:`Tokenizer` turns an Arrow string array into one flat array of ids plus each
document's token count, without special tokens: packing adds the end-of-document id itself, so
counts stay exact whatever the tokenizer's post-processor would add. Its :attr:`checksum`
(sha256 of the ``tokenizer.json`` bytes) goes into the output's manifest, so a token dataset
names exactly the vocabulary it was made with. Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import chain
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from datastore import StorageConfig, open_store
from datastore.errors import InvalidInput, NotFound

__all__ = [
    "BYTES",
    "ByteTokenizer",
    "HFTokenizer",
    "Tokenizer",
    "TokenizerSpec",
    "load_tokenizer",
    "train_tokenizer",
]

#: The spec naming the built-in byte tokenizer.
BYTES = "bytes"

#: End-of-document tokens looked for, in order, when none is named.
EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|eos|>", "[SEP]")
#: Padding tokens looked for, in order, when none is named (else the EOS id pads).
PAD_CANDIDATES = ("<|pad|>", "<pad>", "[PAD]", "<|padding|>")

#: Special tokens of tokenizers trained by :func:`train_tokenizer` (ids 0 and 1).
TRAINED_SPECIALS = ("<|endoftext|>", "<|pad|>")


class Tokenizer(ABC):
    """Text -> token ids. ``vocab_size`` is one more than the largest id it can produce."""

    name: str
    checksum: str
    vocab_size: int
    eos_id: int
    pad_id: int

    @abstractmethod
    def encode(self, texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """Ids of every string in ``texts`` concatenated (an unsigned integer array) and the
        number of ids of each string (int64). Nulls count as empty strings."""

    def encode_counted(self, texts: pa.Array) -> tuple[np.ndarray, np.ndarray, int]:
        """:meth:`encode`, plus how many batches fell back to the reference engine."""
        ids, lengths = self.encode(texts)
        return ids, lengths, 0

    @property
    def engine(self) -> str:
        """What encodes: ``builtin``, ``tokenizers`` or ``fastokens``."""
        return "builtin"

    @abstractmethod
    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """The text of ``ids`` (invalid UTF-8 at a split inside a character is replaced)."""

    def describe(self) -> dict[str, Any]:
        """What the manifest records about this tokenizer."""
        return {
            "name": self.name,
            "checksum": self.checksum,
            "vocab_size": self.vocab_size,
            "eos_id": self.eos_id,
            "pad_id": self.pad_id,
        }


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as ids 0-255; 256 ends a document, 257 pads. Lossless, no file, and
    zero-copy over Arrow's string buffers."""

    name = "builtin:bytes"
    checksum = "sha256:" + hashlib.sha256(b"shardyard builtin byte tokenizer v1").hexdigest()
    vocab_size = 258
    eos_id = 256
    pad_id = 257

    def encode(self, texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        arr = _plain_strings(texts)
        lengths = np.asarray(pc.binary_length(arr).to_numpy(zero_copy_only=False), np.int64)
        if len(arr) == 0 or not lengths.sum():
            return np.empty(0, np.uint8), lengths
        width = np.int64 if pa.types.is_large_string(arr.type) else np.int32
        offsets = np.frombuffer(arr.buffers()[1], width)[arr.offset : arr.offset + len(arr) + 1]
        data = np.frombuffer(arr.buffers()[2], np.uint8)
        return data[int(offsets[0]) : int(offsets[-1])], lengths

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def decode_bytes(self, ids: Sequence[int] | np.ndarray) -> bytes:
        """The exact bytes of ``ids`` (special ids dropped)."""
        arr = np.asarray(ids)
        return arr[arr < 256].astype(np.uint8).tobytes()


#: Engines: "tokenizers" (Hugging Face, the reference), "fastokens" (same ids, much faster),
#: "auto" (fastokens when it loads the file and agrees with the reference on the probes).
ENGINES = ("auto", "fastokens", "tokenizers")

#: Texts both engines must encode identically before fastokens is used: scripts, combining
#: marks, emoji sequences, whitespace runs, control characters and literal special tokens.
PROBES = (
    "Hello, world! It's 3.14 -- isn't it?  Tabs\tand\nnewlines\r\n",
    "Grüße aus Köln; Straße, œuvre, naïve café",
    "日本語のテキスト、中文文本\uff0c한국어 텍스트",
    "Съешь же ещё этих мягких французских булок",
    "emoji 🚀🎉👩‍💻 flags 🇫🇷🇯🇵 and e\u0301 a\u0308",
    "   leading and trailing spaces   \n\n\n",
    "<|endoftext|> inside text</s><pad>[SEP] <|pad|>",
    "\x00\x01 control \u200b zero-width \ufeff bom",
    "def f(x):\n    return x ** 2  # code\n",
    "",
)
#: Spot check per batch: up to this many whole documents, this many characters in all.
_CHECK_DOCS = 16
_CHECK_CHARS = 16384


class HFTokenizer(Tokenizer):
    """A Hugging Face ``tokenizers`` tokenizer loaded from ``tokenizer.json`` text.

    Text that spells a special token (``<|endoftext|>`` in a document) is encoded as plain
    text, never as the special id: a document cannot end itself early or inject control
    tokens. Encoding runs on ``fastokens`` (a Rust re-implementation that reads the same
    ``tokenizer.json``, ~50x faster on one core) when ``engine`` allows and it agrees with
    ``tokenizers`` on :data:`PROBES`. In every batch of about 4 MiB, up to 16 whole
    documents spread over the batch (16 KiB of text in all) and a prefix of the longest one
    are re-encoded by ``tokenizers`` and compared with fastokens' output; a difference, or
    an error from fastokens, makes that batch use ``tokenizers`` (counted as a fallback).
    """

    def __init__(
        self,
        json_text: str,
        *,
        name: str,
        eos_token: str | None = None,
        pad_token: str | None = None,
        ids: tuple[int, int] | None = None,
        engine: str = "auto",
    ) -> None:
        """``ids`` (EOS, pad) skips the token lookup: a copy rebuilt on a worker."""
        from tokenizers import Tokenizer as _HF

        if engine not in ENGINES:
            raise InvalidInput(f"--engine {engine!r}: use one of {', '.join(ENGINES)}")
        try:
            self.hf = _HF.from_str(json_text)
        except Exception as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise InvalidInput(
                f"tokenizer file {name} is not a valid tokenizer.json ({first}); "
                "pass a Hugging Face tokenizers file, or 'bytes'"
            ) from None
        self.json_text = json_text
        self.name = name
        self._prepare(self.hf)
        self.requested_engine = engine
        self.fast = self._fast_engine(engine)
        self.checksum = "sha256:" + hashlib.sha256(json_text.encode()).hexdigest()
        vocab = self.hf.get_vocab(with_added_tokens=True)
        self.vocab_size = max(vocab.values(), default=-1) + 1
        if ids is not None:
            self.eos_id, self.pad_id = ids
            return
        self.eos_id = self._special(vocab, eos_token, EOS_CANDIDATES, "end-of-document", "--eos")
        pad = self._special(vocab, pad_token, PAD_CANDIDATES, "padding", "--pad", required=False)
        self.pad_id = self.eos_id if pad is None else pad

    @property
    def engine(self) -> str:
        return "tokenizers" if self.fast is None else "fastokens"

    def _prepare(self, tok: Any) -> None:
        """Documents are encoded whole and reproducibly: the file's truncation and padding
        are switched off, BPE dropout (random merges) is refused, and special-token text is
        plain text (``encode_special_tokens`` / ``split_special_tokens``)."""
        import json

        model = json.loads(self.json_text).get("model") or {}
        if model.get("dropout"):
            raise InvalidInput(
                f"tokenizer {self.name} uses BPE dropout ({model['dropout']}): its ids are "
                "random; set model.dropout to null in the file"
            )
        tok.no_truncation()
        tok.no_padding()
        if hasattr(tok, "encode_special_tokens"):
            tok.encode_special_tokens = True

    def _fast_engine(self, engine: str) -> Any:
        if engine == "tokenizers":
            return None
        why = ""
        try:
            import fastokens

            fast = fastokens.Tokenizer.from_json_str(self.json_text)
            fast.no_truncation()
            fast.no_padding()
            ids, lengths = self._encode_fast(fast, list(PROBES))
            ref_ids, ref_lengths = self._encode_reference(list(PROBES))
            if np.array_equal(ids, ref_ids) and np.array_equal(lengths, ref_lengths):
                return fast
            why = "it encodes the probe texts differently"
        except Exception as err:  # not installed, or a tokenizer.json feature it lacks
            why = f"{type(err).__name__}: {err}".splitlines()[0]
        if engine == "fastokens":
            raise InvalidInput(
                f"tokenizer {self.name} cannot run on fastokens ({why}); use --engine tokenizers"
            )
        return None

    @staticmethod
    def _encode_fast(fast: Any, strings: list[str]) -> tuple[np.ndarray, np.ndarray]:
        flat, offsets = fast.encode_batch_flat(
            strings, add_special_tokens=False, split_special_tokens=True
        )
        bounds = np.frombuffer(offsets, np.uint64)
        return np.frombuffer(flat, np.uint32), np.diff(bounds).astype(np.int64)

    def _encode_reference(self, strings: list[str]) -> tuple[np.ndarray, np.ndarray]:
        encodings = self.hf.encode_batch_fast(strings, add_special_tokens=False)
        lengths = np.fromiter((len(e) for e in encodings), np.int64, count=len(encodings))
        ids = np.fromiter(
            chain.from_iterable(e.ids for e in encodings), np.uint32, count=int(lengths.sum())
        )
        return ids, lengths

    def _special(
        self,
        vocab: dict[str, int],
        given: str | None,
        candidates: Sequence[str],
        what: str,
        flag: str,
        required: bool = True,
    ) -> Any:
        if given is not None:
            if given not in vocab:
                raise InvalidInput(
                    f"tokenizer {self.name} has no token {given!r} for {what}; "
                    f"pass one of its tokens to {flag}-token"
                )
            return vocab[given]
        for token in candidates:
            if token in vocab:
                return vocab[token]
        if required:
            raise InvalidInput(
                f"tokenizer {self.name} has none of the usual {what} tokens "
                f"({', '.join(candidates)}); name one with {flag}-token"
            )
        return None

    def encode(self, texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        ids, lengths, _ = self.encode_counted(texts)
        return ids, lengths

    def encode_counted(self, texts: pa.Array) -> tuple[np.ndarray, np.ndarray, int]:
        id_parts, length_parts, fallbacks = [], [], 0
        # Encodings carry token strings and offsets too (tens of bytes per token): convert
        # about _BATCH_BYTES of text at a time so memory follows the ids, not the encodings.
        for batch in _string_batches(texts, _BATCH_BYTES):
            ids, lengths, fell = self._encode_batch(batch)
            id_parts.append(ids)
            length_parts.append(lengths)
            fallbacks += fell
        if not length_parts:
            return np.empty(0, np.uint32), np.empty(0, np.int64), 0
        return np.concatenate(id_parts), np.concatenate(length_parts), fallbacks

    def _encode_batch(self, strings: list[str]) -> tuple[np.ndarray, np.ndarray, int]:
        if self.fast is None:
            return (*self._encode_reference(strings), 0)
        try:
            ids, lengths = self._encode_fast(self.fast, strings)
        except Exception:  # an input fastokens cannot handle: the reference can
            return (*self._encode_reference(strings), 1)
        # Spot check of this very output: whole documents spread over the batch (chosen by
        # position, so a rerun checks the same ones) re-encoded by the reference engine.
        if not self._agrees(strings, ids, lengths):
            return (*self._encode_reference(strings), 1)
        return ids, lengths, 0

    def _agrees(self, strings: list[str], ids: np.ndarray, lengths: np.ndarray) -> bool:
        starts = np.zeros(len(lengths) + 1, np.int64)
        np.cumsum(lengths, out=starts[1:])
        picks, budget = [], _CHECK_CHARS
        for i in np.unique(np.linspace(0, len(strings) - 1, _CHECK_DOCS).astype(int)):
            if len(strings[i]) <= budget:
                picks.append(int(i))
                budget -= len(strings[i])
        if picks:
            want_ids, want_lengths = self._encode_reference([strings[i] for i in picks])
            got = np.concatenate([ids[starts[i] : starts[i + 1]] for i in picks])
            if not (np.array_equal(lengths[picks], want_lengths) and np.array_equal(got, want_ids)):
                return False
        # Long documents: compare a prefix encoded by both engines on its own.
        longest = max(range(len(strings)), key=lambda i: len(strings[i]))
        if len(strings[longest]) > budget:
            prefix = [strings[longest][:_CHECK_CHARS]]
            got2, want2 = self._encode_fast(self.fast, prefix), self._encode_reference(prefix)
            return all(np.array_equal(g, w) for g, w in zip(got2, want2, strict=True))
        return True

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return str(self.hf.decode([int(i) for i in ids], skip_special_tokens=False))

    def __reduce__(self) -> tuple[Any, ...]:
        # Workers rebuild it from the JSON text once per process, not once per task.
        args = (self.json_text, self.name, self.eos_id, self.pad_id, self.requested_engine)
        return (_rebuilt, args)


@lru_cache(maxsize=4)
def _rebuilt(json_text: str, name: str, eos_id: int, pad_id: int, engine: str) -> HFTokenizer:
    return HFTokenizer(json_text, name=name, ids=(eos_id, pad_id), engine=engine)


#: Text per encode call (and per spot check).
_BATCH_BYTES = 16 << 20


def _string_batches(texts: pa.Array | pa.ChunkedArray, target: int) -> Iterator[list[str]]:
    """The documents of a string column (a null is ``""``) as lists of Python strings with
    about ``target`` bytes of text each, chunk by chunk (no copy of the whole column)."""
    chunks = texts.chunks if isinstance(texts, pa.ChunkedArray) else [texts]
    batch: list[str] = []
    size = 0
    for chunk in chunks:
        arr = _plain_strings(chunk)
        if len(arr) == 0:
            continue
        ends = np.cumsum(pc.binary_length(arr).to_numpy(zero_copy_only=False))
        start = 0
        while start < len(arr):
            base = ends[start - 1] if start else 0
            stop = max(start + 1, int(np.searchsorted(ends, base + target - size, "right")))
            batch.extend(arr.slice(start, stop - start).to_pylist())
            size += int(ends[stop - 1] - base)
            start = stop
            if size >= target:
                yield batch
                batch, size = [], 0
    if batch:
        yield batch


def _plain_strings(texts: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One contiguous string array without nulls (a null is an empty document)."""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks() if texts.num_chunks != 1 else texts.chunk(0)
    if texts.null_count:
        texts = pc.fill_null(texts, "")
    return texts


@dataclass(frozen=True)
class TokenizerSpec:
    """What to load: ``path`` (a ``tokenizer.json`` file or a directory holding one, local or
    ``s3://``) or :data:`BYTES`, and optional names of the EOS and padding tokens."""

    path: str = BYTES
    eos_token: str | None = None
    pad_token: str | None = None
    engine: str = "auto"  # see ENGINES


def _parent_store(path: str, storage: StorageConfig | None) -> tuple[Any, str]:
    """The store holding file ``path`` (local or ``s3://``) and the file's key in it."""
    parent, _, name = path.rpartition("/")
    if not parent and path.startswith("/"):
        parent = "/"
    return open_store(parent or ".", storage), name


def load_tokenizer(spec: TokenizerSpec | str, storage: StorageConfig | None = None) -> Tokenizer:
    """Load the tokenizer ``spec`` names; raises :class:`NotFound` or :class:`InvalidInput`
    with the file and the fix."""
    if isinstance(spec, str):
        spec = TokenizerSpec(spec)
    if spec.engine not in ENGINES:
        raise InvalidInput(f"--engine {spec.engine!r}: use one of {', '.join(ENGINES)}")
    if spec.path == BYTES:
        if spec.eos_token or spec.pad_token:
            raise InvalidInput(
                "the built-in byte tokenizer has fixed EOS (256) and pad (257) ids: "
                "drop --eos-token / --pad-token"
            )
        return ByteTokenizer()
    path = spec.path
    if path.endswith("/") or ("://" not in path and os.path.isdir(path)):
        path = path.rstrip("/") + "/tokenizer.json"
    store, name = _parent_store(path, storage)
    try:
        raw = store.get(name)
    except NotFound:
        raise NotFound(
            f"tokenizer file {path} does not exist; pass a tokenizer.json path, or 'bytes' "
            "for the built-in byte tokenizer"
        ) from None
    except (IsADirectoryError, PermissionError) as err:
        raise InvalidInput(f"tokenizer file {path} cannot be read ({err.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f"tokenizer file {path} is not UTF-8 JSON (tokenizer.json)") from None
    return HFTokenizer(
        text, name=path, eos_token=spec.eos_token, pad_token=spec.pad_token, engine=spec.engine
    )


def train_tokenizer(
    dataset: str,
    output: str,
    vocab_size: int,
    *,
    text_field: str = "text",
    version: int | None = None,
    min_frequency: int = 2,
    max_documents: int | None = None,
    storage: StorageConfig | None = None,
) -> dict[str, Any]:
    """Train a byte-level BPE tokenizer (GPT-2 style: lossless on any UTF-8 text) with
    ``vocab_size`` ids on the ``text_field`` column of ``dataset`` and write its
    ``tokenizer.json`` to ``output`` (atomically). Ids 0 and 1 are ``<|endoftext|>`` and
    ``<|pad|>``. Returns what was done: documents, vocabulary size, checksum, seconds."""
    from tokenizers import Tokenizer as _HF
    from tokenizers import decoders, models, pre_tokenizers, trainers

    from pipelines.sources import open_text_source

    if min_frequency < 0:
        raise InvalidInput(f"--min-frequency {min_frequency} must be 0 or more")
    if max_documents is not None and max_documents < 1:
        raise InvalidInput(f"--max-documents {max_documents} must be at least 1")
    floor = 256 + len(TRAINED_SPECIALS)
    if vocab_size < floor or vocab_size > 2**32:
        raise InvalidInput(
            f"--vocab-size {vocab_size} is out of range: a byte-level BPE needs at least "
            f"{floor} ids (256 bytes + {len(TRAINED_SPECIALS)} special tokens)"
        )
    started = time.perf_counter()
    source = open_text_source(dataset, text_field, version, storage)
    seen = 0

    def batches() -> Iterator[list[str]]:
        nonlocal seen
        for texts in source.iter_text():
            if max_documents is not None:
                texts = texts.slice(0, max(0, max_documents - seen))
            seen += len(texts)
            if len(texts):
                yield _plain_strings(texts).to_pylist()
            if max_documents is not None and seen >= max_documents:
                return

    hf = _HF(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(TRAINED_SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator(batches(), trainer)
    if not seen:
        raise InvalidInput(f"dataset {dataset} v{source.version} has no documents to train on")
    text = hf.to_str()
    out = output
    if out.endswith("/") or ("://" not in out and os.path.isdir(out)):
        out = out.rstrip("/") + "/tokenizer.json"  # a directory: the usual file name in it
    store, name = _parent_store(out, storage)
    store.put(name, text.encode())
    return {
        "output": out,
        "dataset": source.uri,
        "dataset_version": source.version,
        "documents": seen,
        "vocab_size": hf.get_vocab_size(with_added_tokens=True),
        "checksum": "sha256:" + hashlib.sha256(text.encode()).hexdigest(),
        "seconds": round(time.perf_counter() - started, 3),
    }
