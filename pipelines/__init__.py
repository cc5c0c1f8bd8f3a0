"""pipelines: Dask jobs that turn raw corpora into datasets.

``ingest`` reads JSONL / Parquet / CSV / text inputs (local or ``s3://``), normalizes, filters,
redacts, deduplicates (exact and MinHash-LSH) and writes a dataset version whose manifest records
its lineage. ``tokenize`` turns a dataset's text into packed token rows in Zarr
(:mod:`datastore.packed`). See ``docs/architecture.md``.
"""

from pipelines.config import IngestConfig, load_config
from pipelines.ingest import ingest
from pipelines.report import IngestReport, explain
from pipelines.tokenize import TokenizeConfig, TokenizeReport, tokenize
from pipelines.tokenizer import (
    ByteTokenizer,
    HFTokenizer,
    Tokenizer,
    TokenizerSpec,
    load_tokenizer,
    train_tokenizer,
)

__all__ = [
    "ByteTokenizer",
    "HFTokenizer",
    "IngestConfig",
    "IngestReport",
    "TokenizeConfig",
    "TokenizeReport",
    "Tokenizer",
    "TokenizerSpec",
    "explain",
    "ingest",
    "load_config",
    "load_tokenizer",
    "tokenize",
    "train_tokenizer",
]
