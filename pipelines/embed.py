"""``pipelines.embed``: a document dataset -> chunk embeddings in a Lance table, on Dask.

1. On the client: the table's current documents (``doc_id`` and a sha256 of the document's
   text), so unchanged documents are neither chunked nor embedded again.
2. chunk + embed (one task per source shard, model loaded once per worker process): split each
   new or changed document into windows of tokens (or characters) with overlap, embed them, and
   spill the chunk rows to the work directory with a completion marker. Empty documents,
   documents over ``max_doc_chars`` and text that is not valid UTF-8 are quarantined: counted
   in the report with their ids and reasons, never silently dropped.
3. commit (on the client): delete the chunks of changed and removed documents, add the new
   chunks in one ``add`` (each row carries the job id: a rerun after a crash between the two
   finds its rows and does not add them twice), then (re)build the indexes: the vector index
   the corpus size calls for (:func:`pipelines.vectors.default_index`), a full-text index on
   the text and a label index on the access groups.

The table then holds exactly the chunks of the source version's documents. Rerunning after a
crash redoes only unfinished tasks (markers); ``--register`` records the table version as a
``vector-index`` artifact with lineage to the source dataset and the embedding model.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from datastore import StorageConfig
from datastore.errors import InvalidInput
from pipelines.config import ExecutionConfig
from pipelines.embedder import (
    DEFAULT_MODEL,
    PRECISIONS,
    load_embedder,
    model_digest,
    model_dim,
    resolve_model,
)
from pipelines.report import JobReport
from pipelines.runner import Progress, dask_client, run_tasks
from pipelines.sources import open_text_source
from pipelines.vectors import (
    IndexSpec,
    TableRef,
    chunk_schema,
    create_vector_index,
    open_db,
)
from pipelines.work import WorkDir, job_work_uri
from registry.refs import EVERYONE, check_group

__all__ = ["EmbedConfig", "EmbedReport", "embed"]

_LAYOUT_VERSION = 3  # 2: tasks of _ROWS_PER_TASK rows; 3: doc_hash covers groups and metadata
_CHUNK_BY = ("tokens", "chars")
_QUARANTINE_IDS = 100  # ids listed per reason in the report (all are counted)
#: Documents per task: fixed (not from the worker count), so a rerun with other workers
#: resumes from the same completion markers; small enough to spread a few shards over cores.
_ROWS_PER_TASK = 64


@dataclass(frozen=True)
class EmbedConfig:
    """How to chunk and embed; ``execution`` and ``index`` are not part of the job id."""

    model: str = DEFAULT_MODEL
    precision: str = "float32"
    batch_size: int = 32
    chunk_by: str = "tokens"
    chunk_size: int = 200  # tokens (or characters)
    overlap: int = 32
    text_field: str = "text"
    id_field: str | None = None  # default: "id" when the dataset has it, else the row number
    groups_field: str = "access_groups"
    public_by_default: bool = False  # documents without groups: readable by everyone?
    metadata_fields: tuple[str, ...] = ()
    max_doc_chars: int = 2_000_000
    table: str = "chunks"
    source_version: int | None = None
    index: IndexSpec = field(default_factory=IndexSpec)
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)

    def validate(self) -> None:
        if self.precision not in PRECISIONS:
            raise InvalidInput(f"--precision {self.precision!r}: one of {', '.join(PRECISIONS)}")
        if self.chunk_by not in _CHUNK_BY:
            raise InvalidInput(f"--chunk-by {self.chunk_by!r}: one of {', '.join(_CHUNK_BY)}")
        if self.chunk_size < 8:
            raise InvalidInput(f"--chunk-size {self.chunk_size} is too small (at least 8)")
        if not 0 <= self.overlap < self.chunk_size:
            raise InvalidInput(
                f"--overlap {self.overlap} must be >= 0 and below --chunk-size {self.chunk_size}"
            )
        if self.batch_size < 1 or self.max_doc_chars < 1:
            raise InvalidInput("--batch-size and --max-doc-chars must be positive")
        if not self.table.replace("_", "").replace("-", "").isalnum():
            raise InvalidInput(f"table name {self.table!r}: letters, digits, _ and - only")


@dataclass
class EmbedReport(JobReport):
    """What an embed job did (``--json``)."""

    table_uri: str
    table_version: int
    job_id: str
    source_uri: str
    source_version: int
    model: str
    model_digest: str
    dim: int
    precision: str
    documents: int
    documents_embedded: int
    documents_unchanged: int
    documents_removed: int
    chunks_added: int
    chunks_deleted: int
    chunks_total: int
    quarantined: dict[str, int]
    quarantined_ids: dict[str, list[str]]
    index: dict[str, Any]
    partitions: int
    partitions_resumed: int
    seconds: float
    chunks_per_second: float
    timings: dict[str, float]

    def summary(self) -> str:
        q = sum(self.quarantined.values())
        why = ", ".join(f"{k}: {v}" for k, v in self.quarantined.items() if v)
        return (
            f"embedded {self.documents_embedded:,} of {self.documents:,} documents "
            f"({self.documents_unchanged:,} unchanged, {self.documents_removed:,} removed) into "
            f"{self.chunks_added:,} chunks in {self.seconds:.1f} s "
            f"({self.chunks_per_second:,.1f} chunks/s); table {self.table_uri} v"
            f"{self.table_version} holds {self.chunks_total:,} chunks; quarantined {q}"
            + (f" ({why})" if q else "")
        )


@dataclass(frozen=True)
class _Job:
    job_id: str
    work_uri: str
    storage: StorageConfig | None
    source_uri: str
    source_version: int
    config: EmbedConfig
    id_field: str | None
    groups_field: str | None
    known: frozenset[str]  # "doc_id\0doc_hash" already in the table

    def work(self) -> WorkDir:
        return WorkDir(self.work_uri, self.storage)


def embed(
    source: str,
    output: str,
    config: EmbedConfig | None = None,
    storage: StorageConfig | None = None,
    echo: Callable[[str], None] | None = None,
) -> EmbedReport:
    """Chunk and embed the documents of table dataset ``source`` into table
    ``config.table`` of the LanceDB database ``output``; returns the report."""
    started = time.perf_counter()
    config = config or EmbedConfig()
    config.validate()
    say = echo or (lambda _msg: None)
    output = output.rstrip("/")
    timings: dict[str, float] = {}
    src = open_text_source(source, config.text_field, config.source_version, storage)
    names = src.dataset.schema.names
    id_field = config.id_field or ("id" if "id" in names else None)
    if id_field is not None and id_field not in names:
        raise InvalidInput(
            f"dataset {src.uri} v{src.version} has no column {id_field!r} "
            f"(columns: {', '.join(names)}); name the document id column with --id-field"
        )
    groups_field = config.groups_field if config.groups_field in names else None
    for extra in config.metadata_fields:
        if extra not in names:
            raise InvalidInput(
                f"dataset {src.uri} v{src.version} has no column {extra!r} for --metadata"
            )
    model_path = resolve_model(config.model)
    digest = model_digest(model_path)
    ref = TableRef(output, config.table)
    db = open_db(output, storage)
    table = db.open_table(config.table) if config.table in db.list_tables().tables else None
    known_rows = _known(table)
    identity = {
        "layout": _LAYOUT_VERSION,
        "source": [src.uri, src.version],
        "model": digest,
        "table": ref.uri,
        "table_version": table.version if table is not None else 0,
        "settings": {
            k: v for k, v in asdict(config).items() if k not in ("execution", "index", "model")
        },
    }
    job_id = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    _, work_uri = job_work_uri(output, config.execution.work_dir, f"embed-{job_id}")
    job = _Job(
        job_id=job_id,
        work_uri=work_uri,
        storage=storage,
        source_uri=src.uri,
        source_version=src.version,
        config=config,
        id_field=id_field,
        groups_field=groups_field,
        known=frozenset(f"{d}\0{h}" for d, h in known_rows.items()),
    )
    shards = src.dataset.shards
    say(
        f"embed: {src.uri} v{src.version}, {len(shards)} partitions, "
        f"{sum(s.rows for s in shards):,} documents -> {ref.uri}, model {model_path.name} "
        f"({config.precision}), job {job_id}"
    )
    progress = Progress(config.execution.progress)
    threads = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    worker_env = {k: os.environ.get(k, v) for k, v in threads.items()}
    row_base = np.zeros(len(shards), np.int64)
    np.cumsum([s.rows for s in shards[:-1]], out=row_base[1:])
    t = time.perf_counter()
    # Dask's nanny fixes MALLOC_TRIM_THRESHOLD_ (to return memory to the OS), which also turns
    # off glibc's adaptive mmap threshold: every large tensor the model allocates is then a
    # fresh mmap and its page faults, 35% slower encoding here. glibc's default for this job.
    trim: dict[str, str | None] = {"MALLOC_TRIM_THRESHOLD_": None}
    with dask_client(config.execution, say, worker_env, pre_spawn=trim) as client:
        job_f = client.scatter(job, broadcast=True, hash=False)
        parts = run_tasks(
            client,
            "embed",
            _embed_part,
            [
                (job_f, i, start, min(start + _ROWS_PER_TASK, s.rows), int(row_base[i]))
                for i, s in enumerate(shards)
                for start in range(0, s.rows, _ROWS_PER_TASK)
            ],
            progress,
            docs_of=lambda m: int(m["documents"]),
        )
    timings["embed"] = time.perf_counter() - t

    t = time.perf_counter()
    seen: dict[str, str] = {}
    for p in parts:
        for doc_id, doc_hash in p["docs"]:
            if doc_id in seen:
                raise InvalidInput(
                    f"document id {doc_id!r} occurs twice in {src.uri} v{src.version}: give a "
                    "column of unique ids with --id-field"
                )
            seen[doc_id] = doc_hash
    stale = [d for d, h in known_rows.items() if seen.get(d) != h]
    work = job.work()
    new = [work.read_table(f"{p['key']}.parquet") for p in parts if p["chunks"]]
    dim = model_dim(model_path)
    schema = chunk_schema(
        dim,
        {
            "model": config.model,
            "model_digest": digest,
            "dim": dim,
            "precision": config.precision,
            "chunk_by": config.chunk_by,
            "chunk_size": config.chunk_size,
            "overlap": config.overlap,
        },
    )
    added = pa.concat_tables(new).cast(schema) if new else schema.empty_table()
    if table is None:
        table = db.create_table(config.table, schema=schema, exist_ok=True)
    else:
        _check_compatible(table, schema, ref)
    deleted = 0
    if stale:
        before = table.count_rows()
        for i in range(0, len(stale), 500):
            quoted = ", ".join("'" + d.replace("'", "''") + "'" for d in stale[i : i + 500])
            table.delete(f"doc_id IN ({quoted})")
        deleted = before - table.count_rows()
    done = table.count_rows(f"job = '{job_id}'") if added.num_rows else 0
    if added.num_rows and not done:
        table.add(added)
    timings["commit"] = time.perf_counter() - t
    t = time.perf_counter()
    total = table.count_rows()
    spec = config.index.resolved(total, dim)
    if added.num_rows or deleted or not table.list_indices():
        _build_indexes(table, spec, dim)
    timings["index"] = time.perf_counter() - t
    quarantined: dict[str, int] = {}
    q_ids: dict[str, list[str]] = {}
    for p in parts:
        for reason, ids in p["quarantined"].items():
            quarantined[reason] = quarantined.get(reason, 0) + len(ids)
            q_ids.setdefault(reason, []).extend(ids)
    seconds = time.perf_counter() - started
    chunks_added = int(added.num_rows)
    report = EmbedReport(
        table_uri=ref.uri,
        table_version=int(table.version),
        job_id=job_id,
        source_uri=src.uri,
        source_version=src.version,
        model=config.model,
        model_digest=digest,
        dim=dim,
        precision=config.precision,
        documents=sum(int(p["documents"]) for p in parts),
        documents_embedded=sum(int(p["embedded"]) for p in parts),
        documents_unchanged=sum(int(p["unchanged"]) for p in parts),
        documents_removed=sum(1 for d in known_rows if d not in seen),
        chunks_added=chunks_added,
        chunks_deleted=deleted,
        chunks_total=total,
        quarantined=quarantined,
        quarantined_ids={k: v[:_QUARANTINE_IDS] for k, v in q_ids.items()},
        index=asdict(spec),
        partitions=len(parts),
        partitions_resumed=sum(1 for p in parts if p.get("resumed")),
        seconds=round(seconds, 3),
        chunks_per_second=round(chunks_added / max(timings["embed"], 1e-9), 2),
        timings={k: round(v, 3) for k, v in timings.items()},
    )
    if not config.execution.keep_work:
        work.delete_all()
    return report


def _known(table: Any) -> dict[str, str]:
    """doc_id -> doc_hash of the documents in ``table`` (empty for a new table)."""
    if table is None or not table.count_rows():
        return {}
    got = table.search().select(["doc_id", "doc_hash"]).limit(None).to_arrow()
    return dict(zip(got["doc_id"].to_pylist(), got["doc_hash"].to_pylist(), strict=True))


def _check_compatible(table: Any, schema: pa.Schema, ref: TableRef) -> None:
    from pipelines.vectors import table_meta

    have = table_meta(table.schema)
    want = json.loads(schema.metadata[b"shardyard.embed"])
    if have.get("model_digest") != want["model_digest"] or have.get("dim") != want["dim"]:
        raise InvalidInput(
            f"table {ref.uri} holds embeddings of another model ({have.get('model')}, digest "
            f"{str(have.get('model_digest'))[:12]}): write to a new --table or --output"
        )


def _build_indexes(table: Any, spec: IndexSpec, dim: int) -> None:
    """The vector index ``spec`` names, full text on ``text``, labels on ``access_groups``."""
    from lancedb.index import FTS, LabelList

    create_vector_index(table, spec, dim)
    table.create_index("text", config=FTS(with_position=True), replace=True)
    table.create_index("access_groups", config=LabelList(), replace=True)


# -- tasks --------------------------------------------------------------------------------------


def _embed_part(job: _Job, part: int, start: int, stop: int, row_base: int) -> dict[str, Any]:
    """Chunk and embed rows ``start:stop`` of source shard ``part`` (its new or changed
    documents); spill the chunk rows."""
    work = job.work()
    key = f"e/{part:05d}-{start:08d}"
    marker = work.marker(f"{key}.json")
    if marker is not None:
        return {**marker, "resumed": True}
    import torch

    torch.set_num_threads(1)
    cfg = job.config
    t = time.perf_counter()
    src = open_text_source(job.source_uri, cfg.text_field, job.source_version, job.storage)
    columns = [cfg.text_field]
    for extra in (job.id_field, job.groups_field, *cfg.metadata_fields):
        if extra is not None and extra not in columns:
            columns.append(extra)
    data = src.dataset.read_shard(part, columns).slice(start, stop - start)
    texts_raw = data.column(cfg.text_field).cast(pa.large_binary()).to_pylist()
    ids = (
        [str(x) for x in data.column(job.id_field).to_pylist()]
        if job.id_field
        else [str(row_base + start + i) for i in range(data.num_rows)]
    )
    groups = data.column(job.groups_field).to_pylist() if job.groups_field else None
    metas = [data.column(c).to_pylist() for c in cfg.metadata_fields]
    embedder = load_embedder(cfg.model, cfg.precision, cfg.batch_size)
    quarantined: dict[str, list[str]] = {
        "empty": [],
        "too_large": [],
        "invalid_utf8": [],
        "bad_groups": [],
    }
    docs: list[tuple[str, str]] = []
    rows: dict[str, list[Any]] = {k: [] for k in ("chunk_id", "doc_id", "chunk", "text")}
    rows.update({k: [] for k in ("source", "access_groups", "metadata", "doc_hash")})
    unchanged = embedded = 0
    source = f"{job.source_uri}@v{job.source_version}"
    chunking = [cfg.chunk_by, cfg.chunk_size, cfg.overlap, cfg.public_by_default]
    for i, raw in enumerate(texts_raw):
        doc_id = ids[i]
        try:
            text = (raw or b"").decode("utf-8")
        except UnicodeDecodeError as err:
            quarantined["invalid_utf8"].append(f"{doc_id} (byte {err.start})")
            continue
        if not text.strip():
            quarantined["empty"].append(doc_id)
            continue
        if len(text) > cfg.max_doc_chars:
            quarantined["too_large"].append(f"{doc_id} ({len(text):,} chars)")
            continue
        try:
            acl = _groups(groups[i] if groups is not None else None, cfg)
        except InvalidInput as err:
            quarantined["bad_groups"].append(f"{doc_id} ({err})")
            continue
        meta = json.dumps({c: m[i] for c, m in zip(cfg.metadata_fields, metas, strict=True)})
        # What the document's chunks carry: text, access groups, metadata and how it is cut;
        # a change to any of them (groups narrowed, say) re-embeds it.
        doc_hash = hashlib.sha256(
            (raw or b"") + b"\0" + json.dumps([acl, meta, chunking]).encode()
        ).hexdigest()
        docs.append((doc_id, doc_hash))
        if f"{doc_id}\0{doc_hash}" in job.known:
            unchanged += 1
            continue
        spans = _spans(embedder, text, cfg)
        for n, (a, b) in enumerate(spans):
            rows["chunk_id"].append(f"{doc_id}#{n}")
            rows["doc_id"].append(doc_id)
            rows["chunk"].append(n)
            rows["text"].append(text[a:b])
            rows["source"].append(source)
            rows["access_groups"].append(acl)
            rows["metadata"].append(meta)
            rows["doc_hash"].append(doc_hash)
        embedded += 1
    vectors = embedder.encode(rows["text"]) if rows["text"] else np.zeros((0, embedder.dim))
    if rows["text"]:
        flat = pa.array(vectors.astype(np.float32).ravel(), pa.float32())
        table = pa.table(
            {
                **{k: rows[k] for k in ("chunk_id", "doc_id")},
                "chunk": pa.array(rows["chunk"], pa.int32()),
                "text": rows["text"],
                "vector": pa.FixedSizeListArray.from_arrays(flat, embedder.dim),
                **{k: rows[k] for k in ("source",)},
                "access_groups": pa.array(rows["access_groups"], pa.list_(pa.string())),
                **{k: rows[k] for k in ("metadata", "doc_hash")},
                "job": [job.job_id] * len(rows["text"]),
            }
        )
        work.write_table(f"{key}.parquet", table)
    doc = {
        "key": key,
        "documents": data.num_rows,
        "embedded": embedded,
        "unchanged": unchanged,
        "chunks": len(rows["text"]),
        "docs": docs,
        "quarantined": quarantined,
        "seconds": round(time.perf_counter() - t, 4),
    }
    work.set_marker(f"{key}.json", doc)
    return doc


def _spans(embedder: Any, text: str, cfg: EmbedConfig) -> list[tuple[int, int]]:
    """Character spans of the document's chunks."""
    if cfg.chunk_by == "tokens":
        return embedder.token_spans(text, cfg.chunk_size, cfg.overlap)  # type: ignore[no-any-return]
    step = cfg.chunk_size - cfg.overlap
    spans = []
    for start in range(0, len(text), step):
        end = min(len(text), start + cfg.chunk_size)
        if end < len(text):  # end at a space when one is near, not inside a word
            cut = text.rfind(" ", start + step, end)
            end = cut if cut > start else end
        spans.append((start, end))
        if end >= len(text):
            break
    return spans


def _groups(value: Any, cfg: EmbedConfig) -> list[str]:
    """The chunk's access groups: the document's (a list of names, or one name), or everyone
    when it has none and the corpus says such documents are public."""
    if value is None or value == [] or value == "":
        return [EVERYONE] if cfg.public_by_default else []
    names = [value] if isinstance(value, str) else list(value)
    return sorted({check_group(str(g)) for g in names})
