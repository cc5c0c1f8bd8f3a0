"""The tasks of an ingest job, run on Dask workers. Each is idempotent and resumable.

Phases (see docs/architecture.md): ``prepare`` (read, stages, candidate shard, signatures),
``bucket`` (exact groups and LSH candidate pairs per spill bucket), ``shingles`` + ``verify``
(optional true-Jaccard check of candidate pairs), ``lookup_ids`` (ids of cluster survivors) and
``finalize`` (the partition's output, removed and quarantine shards). Every task first looks for
its completion marker and returns what it recorded, so a rerun redoes only unfinished work.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from datastore import ShardEncoder, StorageConfig, open_store
from datastore.manifest import ShardInfo, TableFormat, schema_from_json, schema_to_json
from datastore.writer import write_shard
from pipelines.config import IngestConfig
from pipelines.plan import InputFile, Partition
from pipelines.readers import QUARANTINE_SCHEMA, read_partition
from pipelines.stages import build_stages
from pipelines.stages import dedup as dd
from pipelines.work import WorkDir

__all__ = [
    "REMOVED_SCHEMA",
    "JobContext",
    "bucket",
    "finalize",
    "lookup_ids",
    "prepare",
    "shingles",
    "verify",
]

EXAMPLES_PER_REASON = 3
_KIND_EXACT, _KIND_BAND = 0, 1
_SIG_SCHEMA = pa.schema(
    [
        ("kind", pa.uint8()),
        ("k0", pa.uint64()),
        ("k1", pa.uint64()),
        ("ord", pa.uint64()),
    ]
)
REMOVED_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("source_uri", pa.string()),
        pa.field("source_offset", pa.int64()),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("value", pa.float64()),
        pa.field("detail", pa.string()),
    ]
)
_PROVENANCE = ["id", "source_uri", "source_offset"]
#: A partition's filter and stage drops, as kept in the work directory until finalize.
_DROPS_SCHEMA = pa.schema(
    [("_ord", pa.uint64()), *[REMOVED_SCHEMA.field(n) for n in REMOVED_SCHEMA.names]]
)


@dataclass(frozen=True)
class JobContext:
    """Everything a task needs, shipped once to every worker."""

    job_id: str
    output_uri: str
    work_uri: str
    storage: StorageConfig | None
    config: IngestConfig
    buckets: int

    @property
    def candidate_format(self) -> TableFormat:
        """Format of the candidate shards ``prepare`` writes: the output format when nothing is
        removed later, else uncompressed Arrow IPC (cheap to write and to re-read, since
        ``finalize`` rewrites every partition that dedup touches)."""
        return "arrow" if self.dedup else self.config.output.format

    @property
    def dedup(self) -> bool:
        """Whether any dedup phase runs."""
        return self.config.exact_dedup.enabled or self.config.fuzzy_dedup.enabled

    def work(self) -> WorkDir:
        """The job's work directory."""
        return WorkDir(self.work_uri, self.storage)

    def segment_key(self, part: int, seg: int) -> str:
        """Key (in the output dataset) of a candidate shard written by ``prepare``."""
        return f"data/{self.job_id}/part-{part:05d}-s{seg}.{self.candidate_format}"

    def final_key(self, part: int) -> str:
        """Key of a partition's rewritten output shard."""
        return f"data/{self.job_id}/part-{part:05d}.{self.config.output.format}"


# -- phase 1: prepare ---------------------------------------------------------------------------


class _Segments:
    """Candidate shards of one partition: a new segment starts when the schema changes."""

    def __init__(self, ctx: JobContext, part: int) -> None:
        self.ctx = ctx
        self.part = part
        self.store = open_store(ctx.output_uri, ctx.storage)
        self.encoder: ShardEncoder | None = None
        self.schema: pa.Schema | None = None
        self.done: list[ShardInfo] = []

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        if self.schema is not None:
            fitted = _fit(table, self.schema)
            if fitted is not None:
                table = fitted
            else:
                self.close()
        if self.encoder is None:
            self.schema = table.schema
            key = self.ctx.segment_key(self.part, len(self.done))
            fmt = self.ctx.candidate_format
            compression = self.ctx.config.output.compression if fmt == "parquet" else None
            self.encoder = ShardEncoder(self.store, key, table.schema, fmt, compression)
        assert self.encoder is not None
        self.encoder.write(table)

    def close(self) -> None:
        if self.encoder is not None:
            self.done.append(self.encoder.finish())
            self.encoder = None

    def discard(self) -> None:
        if self.encoder is not None:
            self.encoder.discard()


def _fit(table: pa.Table, schema: pa.Schema) -> pa.Table | None:
    """``table`` cast to ``schema`` (missing columns as nulls), or None if it does not fit."""
    if table.schema.equals(schema):
        return table
    if not set(table.column_names) <= set(schema.names):
        return None
    cols = []
    for f in schema:
        if f.name in table.column_names:
            col = table.column(f.name)
            if col.type != f.type:
                if not pa.types.is_null(col.type):
                    return None
                col = pa.nulls(table.num_rows, f.type)
            cols.append(col)
        else:
            cols.append(pa.nulls(table.num_rows, f.type))
    try:
        return pa.table(cols, schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None


def prepare(
    ctx: JobContext, partition: Partition, files: Mapping[int, InputFile]
) -> dict[str, Any]:
    """Read one partition (``files``: the input files its pieces name, by index), run the
    per-document stages, write its candidate shard(s), filter drops, quarantine and dedup
    signatures; returns (and records) the partition's statistics."""
    work = ctx.work()
    marker_key = f"prepared/{partition.index:06d}.json"
    done = work.marker(marker_key)
    if done is not None:
        done["resumed"] = True
        return done
    t0 = time.perf_counter()
    cfg = ctx.config
    stages = build_stages(cfg)
    stats: dict[str, Any] = {
        "partition": partition.index,
        "records": 0,
        "bytes_in": 0,
        "docs_read": 0,
        "text_bytes_read": 0,
        "docs_kept": 0,
        "text_bytes_kept": 0,
        "quarantined": 0,
        "stages": {
            s.name: {"docs_in": 0, "docs_out": 0, "bytes_in": 0, "bytes_out": 0, "counters": {}}
            for s in stages
        },
        "examples": {},
    }
    segments = _Segments(ctx, partition.index)
    ords: list[np.ndarray] = []
    drops: list[pa.Table] = []
    bad: list[pa.Table] = []
    sig_parts: list[pa.Table] = []
    try:
        for block in read_partition(partition, files, cfg.input, ctx.storage):
            stats["records"] += block.records
            stats["bytes_in"] += block.nbytes
            if block.bad:
                bad.append(block.quarantine())
            if block.docs is None or block.docs.num_rows == 0:
                continue
            table = block.docs
            stats["docs_read"] += table.num_rows
            stats["text_bytes_read"] += _text_bytes(table)
            provenance = table.select(["_ord", *_PROVENANCE])
            for stage in stages:
                if table.num_rows == 0:
                    break
                s = stats["stages"][stage.name]
                s["docs_in"] += table.num_rows
                s["bytes_in"] += _text_bytes(table)
                out = stage.apply(table)
                table = out.table
                s["docs_out"] += table.num_rows
                s["bytes_out"] += _text_bytes(table)
                for name, n in out.counters.items():
                    s["counters"][name] = s["counters"].get(name, 0) + int(n)
                if out.dropped.num_rows:
                    drops.append(_with_provenance(out.dropped, provenance))
            if table.num_rows == 0:
                continue
            stats["docs_kept"] += table.num_rows
            stats["text_bytes_kept"] += _text_bytes(table)
            ord_col = table.column("_ord").to_numpy()
            ords.append(ord_col)
            if ctx.dedup:
                sig_parts.append(_signatures(ctx, table.column("text"), ord_col))
            segments.write(table.drop_columns(["_ord"]))
        segments.close()
    except BaseException:
        segments.discard()
        raise
    part = partition.index
    all_ords = np.concatenate(ords) if ords else np.zeros(0, np.uint64)
    work.write_array(f"ords/{part:06d}.npy", all_ords)
    drop_table = pa.concat_tables(drops) if drops else _DROPS_SCHEMA.empty_table()
    work.write_table(f"drops/{part:06d}.parquet", drop_table)
    quarantine = pa.concat_tables(bad) if bad else QUARANTINE_SCHEMA.empty_table()
    work.write_table(f"quarantine/{part:06d}.parquet", quarantine)
    stats["quarantined"] = quarantine.num_rows
    if ctx.dedup:
        sigs = pa.concat_tables(sig_parts) if sig_parts else _SIG_SCHEMA.empty_table()
        b = (sigs.column("k1").to_numpy() % np.uint64(ctx.buckets)).astype(np.int64)
        work.write_buckets(f"sigs/{part:06d}.arrow", sigs, b, ctx.buckets)
    stats["examples"] = _examples(drop_table)
    stats["segments"] = [asdict(s) for s in segments.done]
    stats["segment_schemas"] = [
        schema_to_json(segments.schema) if segments.schema is not None else None
    ]
    stats["seconds"] = time.perf_counter() - t0
    stats["resumed"] = False
    work.set_marker(marker_key, stats)
    return stats


def _text_bytes(table: pa.Table) -> int:
    col = table.column("text")
    return int(sum(c.buffers()[2].size if c.buffers()[2] is not None else 0 for c in col.chunks))


def _with_provenance(dropped: pa.Table, provenance: pa.Table) -> pa.Table:
    """Drop records with the id and source location of each dropped document."""
    prov = provenance.take(pc.index_in(dropped.column("_ord"), provenance.column("_ord")))
    return pa.table(
        [
            dropped.column("_ord"),
            *[prov.column(n) for n in _PROVENANCE],
            *[dropped.column(n) for n in ("reason", "value", "detail")],
        ],
        schema=_DROPS_SCHEMA,
    )


def _examples(drops: pa.Table) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for reason, id_ in zip(
        drops.column("reason").to_pylist(), drops.column("id").to_pylist(), strict=True
    ):
        ids = out.setdefault(reason, [])
        if len(ids) < EXAMPLES_PER_REASON:
            ids.append(id_)
    return out


def _signatures(ctx: JobContext, text: pa.ChunkedArray, ords: np.ndarray) -> pa.Table:
    """Rows of the spill file: one exact-hash row and one row per LSH band per document."""
    cfg = ctx.config
    kinds, k0s, k1s, ordss = [], [], [], []
    if cfg.exact_dedup.enabled:
        hi, lo = dd.text_hashes(text)
        kinds.append(np.full(len(ords), _KIND_EXACT, np.uint8))
        k0s.append(hi)
        k1s.append(lo)
        ordss.append(ords)
    fz = cfg.fuzzy_dedup
    if fz.enabled:
        flat, offsets = dd.shingle_hashes(text, fz.ngram)
        sig = dd.minhash_signatures(
            flat, offsets, fz.bands * fz.rows, fz.seed, algorithm=fz.algorithm
        )
        keys = dd.band_keys(sig, fz.bands, fz.rows)
        has = np.diff(offsets) > 0  # documents without shingles never match
        keys, ords_b = keys[has], ords[has]
        n, b = keys.shape
        kinds.append(np.full(n * b, _KIND_BAND, np.uint8))
        k0s.append(np.tile(np.arange(b, dtype=np.uint64), n))
        k1s.append(keys.reshape(-1))
        ordss.append(np.repeat(ords_b, b))
    if not kinds:
        return _SIG_SCHEMA.empty_table()
    return pa.table(
        [
            pa.array(np.concatenate(kinds)),
            pa.array(np.concatenate(k0s)),
            pa.array(np.concatenate(k1s)),
            pa.array(np.concatenate(ordss)),
        ],
        schema=_SIG_SCHEMA,
    )


# -- phase 2: buckets ---------------------------------------------------------------------------


def bucket(ctx: JobContext, k: int, partitions: int) -> dict[str, Any]:
    """Exact-duplicate groups and LSH candidate pairs of spill bucket ``k``."""
    work = ctx.work()
    marker_key = f"buckets/{k:06d}.json"
    done = work.marker(marker_key)
    if done is not None:
        done["resumed"] = True
        return done
    keys = [f"sigs/{p:06d}.arrow" for p in range(partitions)]
    table = work.read_bucket(keys, k)
    edges = {"exact": (np.zeros(0, np.uint64),) * 2, "fuzzy": (np.zeros(0, np.uint64),) * 2}
    rows = 0
    if table is not None:
        rows = table.num_rows
        kind = table.column("kind").to_numpy()
        for name, code in (("exact", _KIND_EXACT), ("fuzzy", _KIND_BAND)):
            sel = kind == code
            if sel.any():
                comp = np.stack(
                    [
                        table.column("k0").to_numpy()[sel],
                        table.column("k1").to_numpy()[sel],
                    ],
                    axis=1,
                )
                edges[name] = dd.duplicate_edges(comp, table.column("ord").to_numpy()[sel])
    buf = io.BytesIO()
    np.savez(
        buf,
        exact_src=edges["exact"][0],
        exact_dst=edges["exact"][1],
        fuzzy_src=edges["fuzzy"][0],
        fuzzy_dst=edges["fuzzy"][1],
    )
    work.store.put(f"edges/{k:06d}.npz", buf.getvalue())
    stats = {"bucket": k, "rows": rows, "resumed": False}
    work.set_marker(marker_key, stats)
    return stats


def read_edges(work: WorkDir, buckets: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """All buckets' edges, concatenated: ``{"exact": (src, dst), "fuzzy": (src, dst)}``."""
    acc: dict[str, list[list[np.ndarray]]] = {"exact": [[], []], "fuzzy": [[], []]}
    for k in range(buckets):
        with np.load(io.BytesIO(work.store.get(f"edges/{k:06d}.npz"))) as z:
            for name in acc:
                acc[name][0].append(z[f"{name}_src"])
                acc[name][1].append(z[f"{name}_dst"])
    return {
        name: (np.concatenate(v[0]).astype(np.uint64), np.concatenate(v[1]).astype(np.uint64))
        for name, v in acc.items()
    }


# -- phase 3: optional true-Jaccard check ------------------------------------------------------


def _positions(work: WorkDir, part: int, wanted: np.ndarray) -> np.ndarray:
    """Row positions, in the partition's candidate shards, of the documents ``wanted``."""
    return np.searchsorted(work.read_array(f"ords/{part:06d}.npy"), wanted)


def _segment_rows(
    ctx: JobContext, stats: dict[str, Any], positions: np.ndarray, columns: list[str]
) -> pa.Table:
    """Rows at ``positions`` (over the concatenated segments) of the candidate shards."""
    store = open_store(ctx.output_uri, ctx.storage)
    tables = []
    start = 0
    for seg in stats["segments"]:
        info = ShardInfo(**seg)
        sel = positions[(positions >= start) & (positions < start + info.rows)] - start
        if len(sel):
            data = _read_shard(store, info, ctx, columns)
            tables.append(data.take(pa.array(sel)))
        start += info.rows
    if not tables:
        return pa.table({c: pa.array([], pa.string()) for c in columns})
    return pa.concat_tables(tables, promote_options="permissive")


def _read_shard(store: Any, info: ShardInfo, ctx: JobContext, columns: list[str] | None) -> Any:
    """A candidate shard (the ``columns`` asked for). Local files are memory-mapped, so asking
    for the ids of an Arrow IPC shard does not read its text."""
    if store.location.scheme == "file":
        path = os.path.join(store.location.path, info.path)
        if info.path.endswith(".parquet"):
            return pq.read_table(path, columns=columns, memory_map=True)
        with pa.memory_map(path) as source:
            table = pa.ipc.open_file(source).read_all()
        return table.select(columns) if columns else table
    buf = store.read_buffer(info.path, info.bytes)
    if info.path.endswith(".parquet"):
        return pq.read_table(pa.BufferReader(buf), columns=columns)
    table = pa.ipc.open_file(buf).read_all()
    return table.select(columns) if columns else table


def shingles(
    ctx: JobContext, stats: dict[str, Any], wanted: np.ndarray, groups: np.ndarray, n_groups: int
) -> None:
    """Spill the shingle sets of this partition's candidate documents, by verify group."""
    work = ctx.work()
    part = int(stats["partition"])
    key = f"shingles/{part:06d}.arrow"
    if work.marker(f"shingled/{part:06d}.json") is not None:
        return
    order = np.argsort(wanted, kind="stable")
    wanted, groups = wanted[order], groups[order]
    uniq = np.unique(wanted)
    rows = _segment_rows(ctx, stats, _positions(work, part, uniq), ["text"])
    flat, offsets = dd.shingle_hashes(rows.column("text"), ctx.config.fuzzy_dedup.ngram)
    # one spill row per (document, group) it is needed in
    doc_index = np.searchsorted(uniq, wanted)
    values = pa.ListArray.from_arrays(pa.array(offsets, pa.int64()).cast(pa.int32()), flat)
    table = pa.table(
        {"ord": pa.array(wanted, pa.uint64()), "shingles": values.take(pa.array(doc_index))}
    )
    work.write_buckets(key, table, groups.astype(np.int64), n_groups)
    work.set_marker(f"shingled/{part:06d}.json", {"partition": part})


def verify(
    ctx: JobContext, g: int, partitions: list[int], src: np.ndarray, dst: np.ndarray
) -> np.ndarray:
    """True Jaccard of each candidate pair of verify group ``g`` (pairs ``src[i]-dst[i]``)."""
    work = ctx.work()
    cached = f"verified/{g:06d}.npy"
    if work.store.exists(cached):
        return work.read_array(cached)
    keys = [f"shingles/{p:06d}.arrow" for p in partitions]
    table = work.read_bucket(keys, g)
    if table is None or len(src) == 0:
        sims = np.zeros(len(src), np.float64)
    else:
        ords = table.column("ord").to_numpy()
        uniq, idx = np.unique(ords, return_index=True)
        lists = table.column("shingles").combine_chunks().take(pa.array(idx))
        flat = lists.flatten().to_numpy()
        offsets = lists.offsets.to_numpy().astype(np.int64)
        offsets = offsets - offsets[0]
        left = np.searchsorted(uniq, src)
        right = np.searchsorted(uniq, dst)
        sims = dd.pairwise_jaccard(flat, offsets, left, right)
    work.write_array(cached, sims)
    return sims


# -- phase 4: ids of survivors, final shards ---------------------------------------------------


def lookup_ids(ctx: JobContext, stats: dict[str, Any], wanted: np.ndarray) -> list[str]:
    """Document ids of ``wanted`` (sorted ordinals of this partition's kept documents)."""
    rows = _segment_rows(
        ctx, stats, _positions(ctx.work(), int(stats["partition"]), wanted), ["id"]
    )
    return [str(v) for v in rows.column("id").to_pylist()]


def finalize(
    ctx: JobContext,
    stats: dict[str, Any],
    removed: pa.Table,
    schema_json: dict[str, Any],
) -> dict[str, Any]:
    """Write the partition's output shard (rewritten when dedup removed rows or its schema is not
    the dataset's), its removed-documents shard and its quarantine shard."""
    work = ctx.work()
    part = int(stats["partition"])
    marker_key = f"final/{part:06d}.json"
    done = work.marker(marker_key)
    if done is not None:
        done["resumed"] = True
        return done
    schema = schema_from_json(schema_json)
    store = open_store(ctx.output_uri, ctx.storage)
    segs = [ShardInfo(**s) for s in stats["segments"]]
    seg_schema = (
        schema_from_json(stats["segment_schemas"][0]) if stats["segment_schemas"][0] else None
    )
    result: dict[str, Any] = {
        "partition": part,
        "main": None,
        "removed": None,
        "quarantine": None,
        "resumed": False,
    }
    removed_ords = removed.column("_ord").to_numpy() if removed.num_rows else None
    if segs:
        reusable = ctx.candidate_format == ctx.config.output.format
        if reusable and removed_ords is None and len(segs) == 1 and seg_schema == schema:
            result["main"] = asdict(segs[0])
        else:
            all_ords = work.read_array(f"ords/{part:06d}.npy")
            keep = (
                ~np.isin(all_ords, removed_ords)
                if removed_ords is not None
                else np.ones(len(all_ords), bool)
            )
            if keep.any():
                result["main"] = asdict(_rewrite(ctx, store, part, segs, keep, schema))
    # removed documents: filter drops + dedup removals, in input order
    drops = work.read_table(f"drops/{part:06d}.parquet")
    parts = [drops]
    if removed.num_rows:
        pos = _positions(work, part, removed.column("_ord").to_numpy())
        prov = _segment_rows(ctx, stats, pos, _PROVENANCE)
        parts.append(
            pa.table(
                {
                    "_ord": removed.column("_ord"),
                    "id": prov.column("id").cast(pa.string()),
                    "source_uri": prov.column("source_uri").cast(pa.string()),
                    "source_offset": prov.column("source_offset").cast(pa.int64()),
                    "reason": removed.column("reason"),
                    "value": removed.column("value"),
                    "detail": removed.column("detail"),
                }
            )
        )
    all_removed = pa.concat_tables(parts, promote_options="permissive")
    if all_removed.num_rows:
        all_removed = all_removed.sort_by("_ord").drop_columns(["_ord"]).cast(REMOVED_SCHEMA)
        side = open_store(f"{ctx.output_uri.rstrip('/')}/_removed", ctx.storage)
        result["removed"] = asdict(
            write_shard(side, f"data/{ctx.job_id}/part-{part:05d}.parquet", all_removed)
        )
    quarantine = work.read_table(f"quarantine/{part:06d}.parquet")
    if quarantine.num_rows:
        side = open_store(f"{ctx.output_uri.rstrip('/')}/_quarantine", ctx.storage)
        result["quarantine"] = asdict(
            write_shard(
                side,
                f"data/{ctx.job_id}/part-{part:05d}.parquet",
                quarantine.cast(QUARANTINE_SCHEMA),
            )
        )
    work.set_marker(marker_key, result)
    return result


def _rewrite(
    ctx: JobContext,
    store: Any,
    part: int,
    segs: list[ShardInfo],
    keep: np.ndarray,
    schema: pa.Schema,
) -> ShardInfo:
    out = ctx.config.output
    encoder = ShardEncoder(store, ctx.final_key(part), schema, out.format, out.compression)
    try:
        start = 0
        for seg in segs:
            mask = keep[start : start + seg.rows]
            start += seg.rows
            if not mask.any():
                continue
            table = _read_shard(store, seg, ctx, None).filter(pa.array(mask))
            for piece in _row_groups(table):
                encoder.write(_conform(piece, schema))
    except BaseException:
        encoder.discard()
        raise
    return encoder.finish()


def _row_groups(table: pa.Table, target: int = 16 * 1024 * 1024) -> Iterator[pa.Table]:
    step = max(1, (target * table.num_rows) // max(1, table.nbytes))
    for s in range(0, table.num_rows, step):
        yield table.slice(s, step)


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    cols = [
        table.column(f.name).cast(f.type)
        if f.name in table.column_names
        else pa.nulls(table.num_rows, f.type)
        for f in schema
    ]
    return pa.table(cols, schema=schema)
