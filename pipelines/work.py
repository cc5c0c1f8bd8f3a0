"""The job's work directory: task outputs and completion markers that make a job resumable.

Every task of an ingest job writes its outputs under ``<work>/<job id>/`` and then, last, a small
JSON marker; a task whose marker exists is not redone. Outputs are deterministic functions of the
plan, so a task redone after a crash (or run twice by a Dask retry) writes the same bytes. Spill
files (:func:`write_buckets` / :func:`read_bucket`) are Arrow IPC files with exactly one record
batch per bucket, so the task for bucket ``k`` reads batch ``k`` of every partition's file with a
few range reads, whatever the number of buckets.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from datastore import ObjectStore, StorageConfig, open_store, resolve_filesystem
from datastore.errors import NotFound

__all__ = ["WorkDir", "committed_job", "job_work_uri"]


def job_work_uri(output: str, work_dir: str | None, name: str) -> tuple[str, str]:
    """``(work root, work URI)`` of job ``name`` writing ``output``: ``OUTPUT/_work/<name>`` by
    default; under a ``--work-dir`` shared by several outputs, the name is prefixed with a hash
    of the output so their jobs stay apart."""
    root = (work_dir or f"{output}/_work").rstrip("/")
    if work_dir:
        return root, f"{root}/{hashlib.sha256(output.encode()).hexdigest()[:12]}-{name}"
    return root, f"{root}/{name}"


def committed_job(
    output: str, section: str, job_id: str, storage: StorageConfig | None
) -> tuple[int, dict[str, Any]] | None:
    """``(version, metadata[section])`` of the newest version of ``output`` that job ``job_id``
    committed, looking through every version: a rerun of a finished job must neither redo it
    nor rewrite objects (named by the job id) that an older version references."""
    from datastore import dataset_versions, open_dataset

    try:
        versions = dataset_versions(output, storage)
    except (NotFound, FileNotFoundError):
        return None
    for v in reversed(versions):
        meta = open_dataset(output, v, config=storage).manifest.metadata.get(section, {})
        if meta.get("job_id") == job_id and "report" in meta:
            return v, meta
    return None


class WorkDir:
    """Keys and helpers under one job's work prefix (local directory or S3)."""

    def __init__(self, uri: str, storage: StorageConfig | None) -> None:
        self.uri = uri.rstrip("/")
        self.storage = storage
        self.store: ObjectStore = open_store(self.uri, storage)

    # -- markers --------------------------------------------------------------------------
    def marker(self, key: str) -> dict[str, Any] | None:
        """The JSON marker at ``key``, or None if that task has not finished."""
        try:
            return dict(json.loads(self.store.get(key)))
        except NotFound:
            return None

    def set_marker(self, key: str, doc: dict[str, Any]) -> None:
        """Write a marker atomically (the task's last write)."""
        self.store.put(key, json.dumps(doc, sort_keys=True).encode())

    # -- tables ---------------------------------------------------------------------------
    def write_table(self, key: str, table: pa.Table) -> None:
        """A Parquet file of ``table`` (atomic)."""
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        self.store.put(key, sink.getvalue())

    def read_table(self, key: str, columns: Sequence[str] | None = None) -> pa.Table:
        """A Parquet file written by :meth:`write_table`."""
        return pq.read_table(pa.BufferReader(self.store.get(key)), columns=columns)

    def write_array(self, key: str, arr: np.ndarray) -> None:
        """A numpy array as ``.npy`` bytes (atomic)."""
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        self.store.put(key, buf.getvalue())

    def read_array(self, key: str) -> np.ndarray:
        """An array written by :meth:`write_array`."""
        return np.asarray(np.load(io.BytesIO(self.store.get(key)), allow_pickle=False))

    def open_array(self, key: str) -> np.ndarray:
        """Like :meth:`read_array`, but memory-mapped when the work directory is local, so a
        reader that needs a slice of a big spill reads only that slice."""
        loc = self.store.location
        if loc.scheme != "file":
            return self.read_array(key)
        try:
            path = f"{loc.path.rstrip('/')}/{key}"
            return np.asarray(np.load(path, mmap_mode="r", allow_pickle=False))
        except FileNotFoundError:
            raise NotFound(f"{self.store.uri_of(key)} does not exist") from None

    # -- bucketed spill files -------------------------------------------------------------
    def write_buckets(self, key: str, table: pa.Table, bucket: np.ndarray, buckets: int) -> None:
        """Spill ``table`` split by ``bucket`` (row -> bucket number) into one IPC file with one
        record batch per bucket (empty batches for empty buckets)."""
        order = np.argsort(bucket, kind="stable")
        counts = np.bincount(bucket, minlength=buckets)
        sorted_table = table.take(pa.array(order))
        sink = pa.BufferOutputStream()
        with pa.ipc.new_file(sink, table.schema) as writer:
            start = 0
            for k in range(buckets):
                n = int(counts[k])
                part = sorted_table.slice(start, n)
                start += n
                batches = part.to_batches()
                writer.write_batch(
                    pa.concat_batches(batches)
                    if batches
                    else pa.RecordBatch.from_pylist([], schema=table.schema)
                )
        self.store.put(key, sink.getvalue())

    def read_bucket(self, keys: Sequence[str], bucket: int) -> pa.Table | None:
        """Batch ``bucket`` of every spill file in ``keys`` (missing files are skipped)."""
        fs, root = resolve_filesystem(self.uri, self.storage)
        parts = []
        for key in keys:
            try:
                handle = fs.open_input_file(f"{root}/{key}")
            except FileNotFoundError:
                continue
            with handle:
                reader = pa.ipc.open_file(handle)
                batch = reader.get_batch(bucket)
                if batch.num_rows:
                    parts.append(batch)
        return pa.Table.from_batches(parts) if parts else None

    def delete_all(self) -> None:
        """Remove everything under the work prefix (after a successful commit)."""
        for info in list(self.store.list("")):
            self.store.delete(info.key)
        if self.store.location.scheme == "file":
            for dirpath, _dirs, _files in sorted(os.walk(self.store.location.path), reverse=True):
                try:
                    os.rmdir(dirpath)
                except OSError:
                    pass
