"""``pipelines.ingest``: raw inputs -> a clean, deduplicated dataset version, on Dask.

The job (see docs/architecture.md, "Ingest"):

1. plan: list the inputs (cached), cut them into partitions, derive the job id;
2. prepare (one task per partition): read, quarantine bad records, normalize / filter / redact /
   user stages, write candidate shards into the output prefix and dedup signatures into spill
   buckets;
3. bucket (one task per spill bucket): exact-duplicate groups and LSH candidate pairs;
   optionally shingles + verify: the true Jaccard similarity of each candidate pair;
   then, on the client, connected components and one survivor (the first in input order) per
   cluster;
4. finalize (one task per partition): output shard, removed-documents shard, quarantine shard;
5. commit: the ``_removed`` and ``_quarantine`` side datasets, then the dataset version itself,
   whose manifest records the inputs, the config and its hash, the version and timings.

Every task writes a completion marker, so running the same command again after a crash redoes
only unfinished tasks, on any number of workers.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import zstandard

from datastore import (
    StorageConfig,
    __version__,
    commit_table,
    open_store,
    write_shard,
)
from datastore.atomic import latest_version
from datastore.errors import InvalidInput, NotFound
from datastore.manifest import ShardInfo, checksum, schema_from_json, schema_to_json
from pipelines import tasks
from pipelines.config import IngestConfig
from pipelines.plan import InputFile, Plan, discover, files_from_json, files_to_json, make_plan
from pipelines.readers import QUARANTINE_SCHEMA, partition_of
from pipelines.report import IngestReport, build_report
from pipelines.runner import Progress, dask_client, run_tasks
from pipelines.stages import dedup as dd
from pipelines.work import WorkDir, committed_job, job_work_uri

__all__ = ["ingest"]

#: Spill-bucket sizing: about this many bytes of signatures per bucket task.
_BUCKET_TARGET_BYTES = 256 * 1024 * 1024


def ingest(
    inputs: Sequence[str] | str,
    output: str,
    config: IngestConfig | None = None,
    storage: StorageConfig | None = None,
    echo: Callable[[str], None] | None = None,
) -> IngestReport:
    """Ingest ``inputs`` (paths, directories, globs, ``s3://`` prefixes) into a new version of
    the dataset at ``output``; returns the run report.

    Rerunning the same call after a crash resumes the job; rerunning it after success returns
    the committed report without redoing anything. Raises :class:`InvalidInput` when more records
    are quarantined than ``config.errors.max_errors`` allows, and storage errors
    (:class:`~datastore.errors.Unreachable`, ...) when the inputs or the output cannot be reached.
    """
    t_start = time.perf_counter()
    config = config or IngestConfig()
    config.validate()
    say = echo or (lambda _msg: None)
    if isinstance(inputs, str):
        inputs = [inputs]
    output = output.rstrip("/")
    timings: dict[str, float] = {}
    work_root, _ = job_work_uri(output, config.execution.work_dir, "")

    t = time.perf_counter()
    files, listing_key = _listing(inputs, config, storage, work_root)
    plan = make_plan(files, config)
    timings["plan"] = time.perf_counter() - t
    job = plan.job_id
    _, work_uri = job_work_uri(output, config.execution.work_dir, job)
    done = _already_committed(output, job, storage)
    if done is not None:
        say(f"job {job} is already committed as version {done.output_version}; nothing to do")
        WorkDir(work_uri, storage).delete_all()
        _drop_listing(work_root, listing_key, storage)
        return done
    ctx = tasks.JobContext(
        job_id=job,
        output_uri=output,
        work_uri=work_uri,
        storage=storage,
        config=config,
        buckets=_buckets(plan, config),
    )
    work = ctx.work()
    say(
        f"ingest: {len(plan.files)} files, {plan.input_bytes:,} bytes, "
        f"{len(plan.partitions)} partitions, job {job}"
    )
    progress = Progress(config.execution.progress)
    with dask_client(config.execution, say) as client:
        ctx_future = client.scatter(ctx, broadcast=True, hash=False)
        t = time.perf_counter()
        prepared = run_tasks(
            client,
            "prepare",
            tasks.prepare,
            [
                (ctx_future, p, {x.file: plan.files[x.file] for x in p.pieces})
                for p in plan.partitions
            ],
            progress,
            docs_of=lambda s: int(s["docs_read"]),
        )
        timings["prepare"] = time.perf_counter() - t
        _check_errors(config, prepared, output, ctx, storage)

        removed, clusters, t_dedup = _dedup(client, ctx, ctx_future, plan, prepared, progress)
        timings.update(t_dedup)

        t = time.perf_counter()
        schema = _unified_schema(prepared)
        by_part = _split_removed(removed, len(plan.partitions))
        finals = run_tasks(
            client,
            "finalize",
            tasks.finalize,
            [(ctx_future, s, by_part[i], schema_to_json(schema)) for i, s in enumerate(prepared)],
            progress,
        )
        timings["finalize"] = time.perf_counter() - t
        lost = progress.workers_lost(client)

    t = time.perf_counter()
    report = _commit(ctx, plan, prepared, finals, removed, clusters, schema, timings, t_start, lost)
    timings["commit"] = time.perf_counter() - t
    if not config.execution.keep_work:
        work.delete_all()
        _drop_listing(work_root, listing_key, storage)
        _remove_leftovers(ctx, finals, storage)
    return report


# -- planning -----------------------------------------------------------------------------------


def _listing(
    inputs: Sequence[str], config: IngestConfig, storage: StorageConfig | None, work_root: str
) -> tuple[list[InputFile], str]:
    """Discover the inputs, or reuse the listing an earlier attempt of this job cached; returns
    the files and the cache key."""
    spec = json.dumps([list(inputs), config.input.format], sort_keys=True)
    key = f"listings/{hashlib.sha256(spec.encode()).hexdigest()[:20]}.json"
    cache = open_store(work_root, storage)
    try:
        return files_from_json(cache.get(key)), key
    except NotFound:
        pass
    files = discover(inputs, config, storage)
    cache.put(key, files_to_json(files))
    return files, key


def _drop_listing(work_root: str, key: str, storage: StorageConfig | None) -> None:
    """Forget the cached listing once its job is committed (the next run lists afresh)."""
    store = open_store(work_root, storage)
    store.delete(key)
    if store.location.scheme == "file":
        for d in (os.path.join(store.location.path, "listings"), store.location.path):
            try:
                os.rmdir(d)
            except OSError:
                pass


def _buckets(plan: Plan, config: IngestConfig) -> int:
    """Spill buckets: enough that one bucket's signatures stay near the target size."""
    if config.fuzzy_dedup.buckets:
        return config.fuzzy_dedup.buckets
    rows_per_doc = 1 + (config.fuzzy_dedup.bands if config.fuzzy_dedup.enabled else 0)
    est_docs = plan.input_bytes / 2000  # ~2 kB per document on typical corpora
    est_bytes = est_docs * rows_per_doc * 25
    return max(4, min(4096, math.ceil(est_bytes / _BUCKET_TARGET_BYTES)))


def _already_committed(output: str, job: str, storage: StorageConfig | None) -> IngestReport | None:
    found = committed_job(output, "ingest", job, storage)
    return IngestReport.from_dict(found[1]["report"]) if found else None


def _check_errors(
    config: IngestConfig,
    prepared: list[dict[str, Any]],
    output: str,
    ctx: tasks.JobContext,
    storage: StorageConfig | None,
) -> None:
    limit = config.errors.max_errors
    if limit is None:
        return
    bad = sum(int(s["quarantined"]) for s in prepared)
    records = sum(int(s["records"]) for s in prepared)
    allowed = limit * records if limit < 1 else limit
    if bad <= allowed:
        return
    version = _commit_quarantine_only(ctx, prepared, storage)
    what = f"{limit:.2%} of {records:,} records" if limit < 1 else f"{int(limit):,}"
    raise InvalidInput(
        f"{bad:,} records were quarantined, more than errors.max_errors allows ({what}); "
        f"nothing was committed to {output}; see the bad records with "
        f"`shardyard dataset head {output}/_quarantine -v {version}`"
    )


def _commit_quarantine_only(
    ctx: tasks.JobContext, prepared: list[dict[str, Any]], storage: StorageConfig | None
) -> int:
    work = ctx.work()
    side = open_store(f"{ctx.output_uri}/_quarantine", storage)
    shards = []
    for s in prepared:
        part = int(s["partition"])
        table = work.read_table(f"quarantine/{part:06d}.parquet")
        if table.num_rows:
            shards.append(
                write_shard(
                    side,
                    f"data/{ctx.job_id}/part-{part:05d}.parquet",
                    table.cast(QUARANTINE_SCHEMA),
                )
            )
    manifest = commit_table(side, shards, QUARANTINE_SCHEMA, metadata={"job_id": ctx.job_id})
    return manifest.version


# -- dedup --------------------------------------------------------------------------------------


def _dedup(
    client: Any,
    ctx: tasks.JobContext,
    ctx_future: Any,
    plan: Plan,
    prepared: list[dict[str, Any]],
    progress: Progress,
) -> tuple[pa.Table, int, dict[str, float]]:
    """Global exact and fuzzy dedup: the removed documents (``_ord``, reason, value, detail
    holding the survivor's ordinal for now) and the number of fuzzy clusters."""
    timings: dict[str, float] = {}
    empty = pa.table(
        {
            "_ord": pa.array([], pa.uint64()),
            "reason": pa.array([], pa.string()),
            "value": pa.array([], pa.float64()),
            "survivor": pa.array([], pa.uint64()),
        }
    )
    if not ctx.dedup:
        return empty, 0, timings
    t = time.perf_counter()
    parts = len(plan.partitions)
    run_tasks(
        client,
        "dedup buckets",
        tasks.bucket,
        [(ctx_future, k, parts) for k in range(ctx.buckets)],
        progress,
    )
    edges = tasks.read_edges(ctx.work(), ctx.buckets)
    timings["dedup_buckets"] = time.perf_counter() - t

    # exact: every group is a star onto its first document
    ex_src, ex_dst = edges["exact"]
    # fuzzy: candidate pairs among documents that are not exact duplicates
    fz_src, fz_dst = edges["fuzzy"]
    if len(ex_src):
        keep = ~(np.isin(fz_src, ex_src) | np.isin(fz_dst, ex_src))
        fz_src, fz_dst = fz_src[keep], fz_dst[keep]
    fz_src, fz_dst = _unique_pairs(fz_src, fz_dst)
    sims: np.ndarray | None = None
    fz = ctx.config.fuzzy_dedup
    if fz.enabled and fz.verify_jaccard and len(fz_src):
        t = time.perf_counter()
        sims = _verify(client, ctx, ctx_future, prepared, fz_src, fz_dst, progress)
        ok = sims >= fz.jaccard_threshold
        fz_src, fz_dst, sims = fz_src[ok], fz_dst[ok], sims[ok]
        timings["dedup_verify"] = time.perf_counter() - t
    members, roots = dd.connected_components(fz_src, fz_dst)
    dup = members != roots
    clusters = len(np.unique(roots)) if len(roots) else 0

    ords = np.concatenate([ex_src, members[dup]]).astype(np.uint64)
    survivors = np.concatenate([ex_dst, roots[dup]]).astype(np.uint64)
    reasons = ["exact_duplicate"] * len(ex_src) + ["fuzzy_duplicate"] * int(dup.sum())
    values = np.full(len(ords), np.nan)
    if sims is not None and dup.any():
        best = _best_similarity(fz_src, fz_dst, sims, members[dup])
        values[len(ex_src) :] = best
    table = pa.table(
        {
            "_ord": pa.array(ords, pa.uint64()),
            "reason": pa.array(reasons, pa.string()),
            "value": pa.array(values, pa.float64(), from_pandas=True),  # NaN -> null
            "survivor": pa.array(survivors, pa.uint64()),
        }
    ).sort_by("_ord")
    # survivors' ids, looked up in their partitions
    t = time.perf_counter()
    kinds = ("exact_duplicate", "fuzzy_duplicate")
    sample = {  # the first few removed documents of each kind, for the report's examples
        r: table.filter(pc.equal(table.column("reason"), r)).column("_ord").to_numpy()[:3]
        for r in kinds
    }
    surv = np.unique(np.concatenate([table.column("survivor").to_numpy(), *sample.values()]))
    surv_parts = partition_of(surv)
    args = []
    for p in np.unique(surv_parts).tolist():
        args.append((ctx_future, prepared[p], surv[surv_parts == p]))
    ids_lists = run_tasks(client, "survivor ids", tasks.lookup_ids, args, progress)
    id_of: dict[int, str] = {}
    for (_c, _s, wanted), ids in zip(args, ids_lists, strict=True):
        id_of.update(zip(wanted.tolist(), ids, strict=True))
    detail = [f"survivor {id_of[s]}" for s in table.column("survivor").to_pylist()]
    examples = {r: [id_of[int(o)] for o in ords_r] for r, ords_r in sample.items()}
    table = table.append_column("detail", pa.array(detail, pa.string())).drop_columns(["survivor"])
    timings["dedup_ids"] = time.perf_counter() - t
    table = table.replace_schema_metadata({"examples": json.dumps(examples)})
    return table, clusters, timings


def _unique_pairs(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs in canonical order (larger ordinal first), without repeats (bands agree often)."""
    if not len(src):
        return src, dst
    a, b = np.maximum(src, dst), np.minimum(src, dst)
    pairs = np.unique(np.stack([a, b], axis=1), axis=0)
    return pairs[:, 0].copy(), pairs[:, 1].copy()


def _best_similarity(
    src: np.ndarray, dst: np.ndarray, sims: np.ndarray, members: np.ndarray
) -> np.ndarray:
    """For each removed member, the highest verified similarity of a pair it is in."""
    best = np.full(len(members), np.nan)
    both = np.concatenate([src, dst])
    vals = np.concatenate([sims, sims])
    order = np.lexsort((-vals, both))
    both, vals = both[order], vals[order]
    first = np.concatenate(([True], both[1:] != both[:-1]))
    uniq, top = both[first], vals[first]
    pos = np.searchsorted(uniq, members)
    found = (pos < len(uniq)) & (uniq[np.minimum(pos, len(uniq) - 1)] == members)
    best[found] = top[pos[found]]
    return best


def _verify(
    client: Any,
    ctx: tasks.JobContext,
    ctx_future: Any,
    prepared: list[dict[str, Any]],
    src: np.ndarray,
    dst: np.ndarray,
    progress: Progress,
) -> np.ndarray:
    """True Jaccard similarity of each candidate pair, computed where the shingles are."""
    pairs = len(src)
    groups_n = max(1, min(ctx.buckets, math.ceil(pairs / 200_000)))
    group = (dst % np.uint64(groups_n)).astype(np.int64)  # all pairs of an anchor together
    # which documents each partition must spill, and for which groups
    docs = np.concatenate([src, dst])
    doc_groups = np.concatenate([group, group])
    pairs_unique = np.unique(np.stack([docs, doc_groups.astype(np.uint64)], axis=1), axis=0)
    docs, doc_groups = pairs_unique[:, 0], pairs_unique[:, 1].astype(np.int64)
    parts = partition_of(docs)
    involved = np.unique(parts).tolist()
    run_tasks(
        client,
        "jaccard shingles",
        tasks.shingles,
        [
            (ctx_future, prepared[p], docs[parts == p], doc_groups[parts == p], groups_n)
            for p in involved
        ],
        progress,
    )
    sims = np.zeros(pairs, np.float64)
    idx = [np.flatnonzero(group == g) for g in range(groups_n)]
    results = run_tasks(
        client,
        "jaccard verify",
        tasks.verify,
        [(ctx_future, g, involved, src[idx[g]], dst[idx[g]]) for g in range(groups_n)],
        progress,
    )
    for g, res in enumerate(results):
        sims[idx[g]] = res
    return sims


def _split_removed(removed: pa.Table, partitions: int) -> list[pa.Table]:
    """Removed rows per partition (sorted by ordinal)."""
    if removed.num_rows == 0:
        return [removed] * partitions
    parts = partition_of(removed.column("_ord").to_numpy())
    bounds = np.searchsorted(parts, np.arange(partitions + 1))
    return [removed.slice(bounds[i], bounds[i + 1] - bounds[i]) for i in range(partitions)]


# -- commit -------------------------------------------------------------------------------------


def _unified_schema(prepared: list[dict[str, Any]]) -> pa.Schema:
    schemas = [
        schema_from_json(js) for s in prepared for js in s["segment_schemas"] if js is not None
    ]
    if not schemas:
        return pa.schema(
            [
                ("id", pa.string()),
                ("text", pa.string()),
                ("source_uri", pa.string()),
                ("source_offset", pa.int64()),
            ]
        )
    try:
        unified = pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise InvalidInput(
            f"input records disagree on the type of a field ({err}); rename the field or "
            "convert it in a user stage"
        ) from None
    return pa.schema([f.with_nullable(True) for f in unified])


def _commit(
    ctx: tasks.JobContext,
    plan: Plan,
    prepared: list[dict[str, Any]],
    finals: list[dict[str, Any]],
    removed: pa.Table,
    clusters: int,
    schema: pa.Schema,
    timings: dict[str, float],
    t_start: float,
    workers_lost: int,
) -> IngestReport:
    storage = ctx.storage
    out = open_store(ctx.output_uri, storage)
    side_versions = {}
    for side, side_schema in (
        ("removed", tasks.REMOVED_SCHEMA),
        ("quarantine", QUARANTINE_SCHEMA),
    ):
        shards = [ShardInfo(**f[side]) for f in finals if f[side] is not None]
        store = open_store(f"{ctx.output_uri}/_{side}", storage)
        manifest = commit_table(store, shards, side_schema, metadata={"job_id": ctx.job_id})
        side_versions[side] = manifest.version
    shards = [ShardInfo(**f["main"]) for f in finals if f["main"] is not None]
    version = (latest_version(out) or 0) + 1
    timings["total"] = time.perf_counter() - t_start
    report = build_report(
        ctx=ctx,
        plan=plan,
        prepared=prepared,
        removed=removed,
        clusters=clusters,
        version=version,
        side_versions=side_versions,
        timings=timings,
        rows_out=sum(s.rows for s in shards),
        bytes_out=sum(s.bytes for s in shards),
    )
    report.workers_lost = workers_lost
    metadata = {
        "ingest": {
            "job_id": ctx.job_id,
            "shardyard_version": __version__,
            "config": ctx.config.to_dict(with_execution=False),
            "config_hash": ctx.config.fingerprint(),
            **_inputs_lineage(out, ctx.job_id, plan),
            "removed": {"uri": f"{ctx.output_uri}/_removed", "version": side_versions["removed"]},
            "quarantine": {
                "uri": f"{ctx.output_uri}/_quarantine",
                "version": side_versions["quarantine"],
            },
            "timings": {k: round(v, 3) for k, v in timings.items()},
            "report": report.to_dict(),
        }
    }
    commit_table(
        out,
        shards,
        schema,
        format=ctx.config.output.format,
        version=version,
        metadata=metadata,
    )
    return report


#: Up to this many inputs are listed in the manifest itself; more go to a lineage object.
INLINE_INPUTS = 1000


def _inputs_lineage(out: Any, job: str, plan: Plan) -> dict[str, Any]:
    """The inputs (URI, size, ETag) for the manifest: inline for small jobs; for large ones a
    zstd JSON Lines object ``lineage/<job>-inputs.jsonl.zst`` in the dataset prefix, named in
    the manifest with its size and checksum, so the manifest stays small however many files
    were read."""
    rows = [
        {"uri": f.uri, "size": f.size, "etag": f.etag, "missing": f.missing} for f in plan.files
    ]
    summary = {"input_files": len(rows), "input_bytes": plan.input_bytes}
    if len(rows) <= INLINE_INPUTS:
        return {**summary, "inputs": rows}
    body = zstandard.compress("".join(json.dumps(r) + "\n" for r in rows).encode())
    key = f"lineage/{job}-inputs.jsonl.zst"
    out.put(key, body)
    return {
        **summary,
        "inputs_object": {"path": key, "bytes": len(body), "checksum": checksum(body)},
    }


def _remove_leftovers(
    ctx: tasks.JobContext, finals: list[dict[str, Any]], storage: StorageConfig | None
) -> None:
    """Delete candidate shards the committed version does not name (rewritten partitions)."""
    out = open_store(ctx.output_uri, storage)
    keep = {f["main"]["path"] for f in finals if f["main"] is not None}
    for info in list(out.list(f"data/{ctx.job_id}/")):
        if info.key not in keep:
            out.delete(info.key)
