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


class HFTokenizer(Tokenizer):
    """A Hugging Face ``tokenizers`` tokenizer loaded from ``tokenizer.json`` text."""

    def __init__(
        self,
        json_text: str,
        *,
        name: str,
        eos_token: str | None = None,
        pad_token: str | None = None,
        ids: tuple[int, int] | None = None,
    ) -> None:
        """``ids`` (EOS, pad) skips the token lookup: a copy rebuilt on a worker."""
        from tokenizers import Tokenizer as _HF

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
        self.checksum = "sha256:" + hashlib.sha256(json_text.encode()).hexdigest()
        vocab = self.hf.get_vocab(with_added_tokens=True)
        self.vocab_size = max(vocab.values(), default=-1) + 1
        if ids is not None:
            self.eos_id, self.pad_id = ids
            return
        self.eos_id = self._special(vocab, eos_token, EOS_CANDIDATES, "end-of-document", "--eos")
        pad = self._special(vocab, pad_token, PAD_CANDIDATES, "padding", "--pad", required=False)
        self.pad_id = self.eos_id if pad is None else pad

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
        strings = _plain_strings(texts).to_pylist()
        encodings = self.hf.encode_batch_fast(strings, add_special_tokens=False)
        lengths = np.fromiter((len(e) for e in encodings), np.int64, count=len(encodings))
        ids = np.fromiter(
            chain.from_iterable(e.ids for e in encodings), np.uint32, count=int(lengths.sum())
        )
        return ids, lengths

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return str(self.hf.decode([int(i) for i in ids], skip_special_tokens=False))

    def __reduce__(self) -> tuple[Any, ...]:
        # Workers rebuild it from the JSON text once per process, not once per task.
        return (_rebuilt, (self.json_text, self.name, self.eos_id, self.pad_id))


@lru_cache(maxsize=4)
def _rebuilt(json_text: str, name: str, eos_id: int, pad_id: int) -> HFTokenizer:
    return HFTokenizer(json_text, name=name, ids=(eos_id, pad_id))


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


def load_tokenizer(spec: TokenizerSpec | str, storage: StorageConfig | None = None) -> Tokenizer:
    """Load the tokenizer ``spec`` names; raises :class:`NotFound` or :class:`InvalidInput`
    with the file and the fix."""
    if isinstance(spec, str):
        spec = TokenizerSpec(spec)
    if spec.path == BYTES:
        if spec.eos_token or spec.pad_token:
            raise InvalidInput("the built-in byte tokenizer has fixed EOS (256) and pad (257) ids")
        return ByteTokenizer()
    path = spec.path.rstrip("/")
    if "://" not in path and os.path.isdir(path):
        path = os.path.join(path, "tokenizer.json")
    parent, _, name = path.rpartition("/")
    try:
        raw = open_store(parent or ".", storage).get(name)
    except NotFound:
        raise NotFound(
            f"tokenizer file {path} does not exist; pass a tokenizer.json path, or 'bytes' "
            "for the built-in byte tokenizer"
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f"tokenizer file {path} is not UTF-8 JSON (tokenizer.json)") from None
    return HFTokenizer(text, name=path, eos_token=spec.eos_token, pad_token=spec.pad_token)


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
    out = output.rstrip("/")
    parent, _, name = out.rpartition("/")
    open_store(parent or ".", storage).put(name, text.encode())
    return {
        "output": out,
        "dataset": source.uri,
        "dataset_version": source.version,
        "documents": seen,
        "vocab_size": hf.get_vocab_size(with_added_tokens=True),
        "checksum": "sha256:" + hashlib.sha256(text.encode()).hexdigest(),
        "seconds": round(time.perf_counter() - started, 3),
    }
