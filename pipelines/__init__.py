"""pipelines: Dask jobs that turn raw corpora into datasets.

``ingest`` reads JSONL / Parquet / CSV / text inputs (local or ``s3://``), normalizes, filters,
redacts, deduplicates (exact and MinHash-LSH) and writes a dataset version whose manifest records
its lineage; see ``docs/architecture.md``.
"""

from pipelines.config import IngestConfig, load_config
from pipelines.ingest import ingest
from pipelines.report import IngestReport, explain

__all__ = ["IngestConfig", "IngestReport", "explain", "ingest", "load_config"]
