"""User stages the ingest tests register by import path (``tests.pipelines.user_stages:...``)."""

from __future__ import annotations

import time
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc


def drop_if(record: dict[str, Any], word: str) -> dict[str, Any] | None:
    """Per document: drop documents containing ``word``."""
    return None if word in record["text"] else record


def add_length(table: pa.Table) -> pa.Table:
    """Per batch: add a ``length`` column (characters)."""
    return table.append_column("length", pc.utf8_length(table.column("text")).cast(pa.int64()))


def slow(table: pa.Table, seconds: float = 0.5) -> pa.Table:
    """Per batch: sleep, so that crash tests can kill a job in the middle."""
    time.sleep(seconds)
    return table
