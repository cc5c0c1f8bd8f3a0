"""Packed token datasets: the array layout ``shardyard tokenize`` writes and loaders read.

A packed token dataset is an array dataset with three Zarr arrays:

``tokens``        ``(rows, seq_len)`` uint16 or uint32: token ids, documents separated by EOS,
                  the unused tail of a row filled with the pad id.
``row_segments``  ``(rows,)`` int64: index into ``segments`` of the row's first segment.
``segments``      ``(num_segments, 3)`` int64, one per piece of a document in a row:
                  ``[doc, offset, length]`` = the document's row number in the source dataset
                  version, the token offset of the piece within that document, and its length
                  in tokens (counting the EOS that ends the document's last piece).

A row's segments are contiguous from position 0 in row order, so flash-attention style
``cu_seqlens`` for a row are ``[0, *cumsum(lengths)]`` and everything after the last one is
padding. The ``tokens`` array's ``shardyard.packed`` attribute holds ``seq_len``, ``packing``,
``eos_id``, ``pad_id``, ``vocab_size``, the tokenizer checksum and the source dataset version.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from datastore.config import StorageConfig
from datastore.dataset import ArrayDataset, open_dataset
from datastore.errors import InvalidInput

__all__ = [
    "PACKED_ATTRIBUTE",
    "ROW_SEGMENTS",
    "SEGMENTS",
    "TOKENS",
    "PackedTokens",
    "open_packed",
]

TOKENS = "tokens"
ROW_SEGMENTS = "row_segments"
SEGMENTS = "segments"
PACKED_ATTRIBUTE = "shardyard.packed"


class PackedTokens:
    """Read access to a packed token dataset: rows, their segments and ``cu_seqlens``."""

    def __init__(self, dataset: ArrayDataset) -> None:
        names = set(dataset.array_names)
        missing = {TOKENS, ROW_SEGMENTS, SEGMENTS} - names
        if missing:
            raise InvalidInput(
                f"dataset {dataset.uri} v{dataset.version} is not a packed token dataset "
                f"(no array {sorted(missing)[0]!r}); write one with `shardyard tokenize`"
            )
        self.dataset = dataset
        self.tokens = dataset.array(TOKENS)
        self.row_segments = dataset.array(ROW_SEGMENTS)
        self.segments_array = dataset.array(SEGMENTS)
        self.info: dict[str, Any] = dict(self.tokens.attrs.get(PACKED_ATTRIBUTE, {}))

    @property
    def rows(self) -> int:
        """Number of packed rows."""
        return int(self.tokens.shape[0])

    @property
    def seq_len(self) -> int:
        """Tokens per row."""
        return int(self.tokens.shape[1])

    @property
    def num_segments(self) -> int:
        """Document pieces over all rows."""
        return int(self.segments_array.shape[0])

    @property
    def pad_id(self) -> int:
        """The id filling the unused tail of rows."""
        return int(self.info["pad_id"])

    @property
    def eos_id(self) -> int:
        """The id ending every document."""
        return int(self.info["eos_id"])

    def __len__(self) -> int:
        return self.rows

    def row(self, index: int) -> np.ndarray:
        """Row ``index``'s ``seq_len`` token ids."""
        return np.asarray(self.tokens[self._check(index)])

    def segments(self, index: int) -> np.ndarray:
        """Row ``index``'s segments as a ``(k, 3)`` array of ``[doc, offset, length]``."""
        i = self._check(index)
        start = int(self.row_segments[i])
        stop = int(self.row_segments[i + 1]) if i + 1 < self.rows else self.num_segments
        return np.asarray(self.segments_array[start:stop])

    def cu_seqlens(self, index: int) -> np.ndarray:
        """Row ``index``'s cumulative segment lengths ``[0, l0, l0+l1, ...]`` (int32)."""
        lengths = self.segments(index)[:, 2]
        return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)

    def _check(self, index: int) -> int:
        i = int(index) + (self.rows if index < 0 else 0)
        if not 0 <= i < self.rows:
            raise IndexError(f"row {index} is out of range for {self.rows} rows")
        return i


def open_packed(
    uri: str, version: int | None = None, config: StorageConfig | None = None
) -> PackedTokens:
    """Open version ``version`` (default: latest) of the packed token dataset at ``uri``."""
    ds = open_dataset(uri, version, config=config)
    if not isinstance(ds, ArrayDataset):
        raise InvalidInput(
            f"dataset {uri} v{ds.version} is a table, not a packed token dataset; "
            "write one with `shardyard tokenize`"
        )
    return PackedTokens(ds)
