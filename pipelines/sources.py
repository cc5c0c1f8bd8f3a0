"""The text column of a committed table dataset, as read by tokenization and training."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa

from datastore import StorageConfig, TableDataset, open_dataset
from datastore.errors import InvalidInput

__all__ = ["TextSource", "open_text_source"]


@dataclass
class TextSource:
    """One version of a table dataset and the name of its text column."""

    dataset: TableDataset
    text_field: str

    @property
    def uri(self) -> str:
        """The dataset's URI."""
        return self.dataset.uri

    @property
    def version(self) -> int:
        """The version being read (resolved, never 'latest')."""
        return self.dataset.version

    def read_text(self, shard: int) -> pa.ChunkedArray:
        """Shard ``shard``'s text column (checksum-verified)."""
        return self.dataset.read_shard(shard, [self.text_field]).column(0)

    def iter_text(self) -> Iterator[pa.ChunkedArray]:
        """Every shard's text column, in order."""
        for i in range(len(self.dataset.shards)):
            yield self.read_text(i)


def open_text_source(
    uri: str, text_field: str, version: int | None, storage: StorageConfig | None
) -> TextSource:
    """Open ``uri`` (latest version unless ``version``) and check that ``text_field`` is a
    string column; raises :class:`InvalidInput` naming the dataset and the fix."""
    ds = open_dataset(uri, version, config=storage)
    if not isinstance(ds, TableDataset):
        raise InvalidInput(
            f"dataset {ds.uri} v{ds.version} holds arrays, not documents; pass a table dataset "
            "(e.g. the output of `shardyard ingest`)"
        )
    names = ds.schema.names
    if text_field not in names:
        raise InvalidInput(
            f"dataset {ds.uri} v{ds.version} has no column {text_field!r} "
            f"(columns: {', '.join(names)}); name the text column with --text-field"
        )
    kind = ds.schema.field(text_field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise InvalidInput(
            f"column {text_field!r} of dataset {ds.uri} v{ds.version} is {kind}, not text; "
            "name the text column with --text-field"
        )
    return TextSource(ds, text_field)
