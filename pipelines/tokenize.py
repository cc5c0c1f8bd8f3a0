"""``pipelines.tokenize``: a document dataset -> packed token rows in Zarr, on Dask.

The job (see docs/architecture.md, "Tokenize"):

1. tokenize (one task per source shard): encode the text column, end each non-empty document
   with EOS, spill its ids, lengths and source row numbers to the work directory;
2. on the client: each partition's place in the packed stream (a prefix sum of stream lengths,
   see :mod:`pipelines.packing`), hence the number of rows;
3. pack (one task per output shard object): fill the shard's rows from the spills that overlap
   it and publish it; spill the shard's segments (document pieces);
4. index (one task per shard of ``row_segments`` and of ``segments``): with every shard's segment
   count known, write the global segment table and each row's first segment;
5. commit: ``zarr.json`` of the three arrays, then the manifest, whose ``metadata.tokenize``
   records the source dataset version, the tokenizer's checksum, the settings and the report.

Outputs depend only on the source version, the tokenizer, the settings and the versions of the
encoding software (all hashed into the job id), never on the worker count or on which tasks ran
twice, so reruns give byte-identical arrays; every task writes a completion marker, so rerunning
after a crash redoes only unfinished tasks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from datastore import (
    ArrayLayout,
    ParentRef,
    StorageConfig,
    commit_arrays,
    open_dataset,
    open_store,
)
from datastore.errors import InvalidInput, NotFound
from datastore.manifest import ObjectEntry
from datastore.packed import PACKED_ATTRIBUTE, ROW_SEGMENTS, SEGMENTS, TOKENS
from pipelines.config import ExecutionConfig
from pipelines.packing import PACKINGS, Packing, count_split, fill_range, stream_length
from pipelines.report import JobReport
from pipelines.runner import Progress, dask_client, run_tasks
from pipelines.sources import open_text_source
from pipelines.tokenizer import Tokenizer, TokenizerSpec, load_tokenizer
from pipelines.work import WorkDir, committed_job, job_work_uri

__all__ = ["TokenizeConfig", "TokenizeReport", "tokenize"]

#: Bumped when the packed layout changes, so old work directories are not reused.
_LAYOUT_VERSION = 1
_DTYPES = ("auto", "uint16", "uint32")
_CHUNK_BYTES = 1 << 20  # inner Zarr chunks of about 1 MiB
_SHARD_CHUNKS = 64  # shard objects of about 64 MiB


@dataclass(frozen=True)
class TokenizeConfig:
    """Settings of a tokenize job. ``execution`` does not change the output."""

    tokenizer: TokenizerSpec = field(default_factory=TokenizerSpec)
    text_field: str = "text"
    seq_len: int = 2048
    packing: Packing = "greedy"
    dtype: str = "auto"  # uint16 when the vocabulary fits, else uint32
    source_version: int | None = None  # default: the source's latest version
    chunk_rows: int | None = None  # rows per inner Zarr chunk (default: ~1 MiB)
    shard_rows: int | None = None  # rows per shard object (default: 64 chunks)
    segment_shard_rows: int = 1 << 18  # segments per shard object of the segment table
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)

    def validate(self) -> None:
        """Raise :class:`InvalidInput` naming the bad setting."""
        if not 1 <= self.seq_len <= 1 << 24:
            raise InvalidInput(f"--seq-len {self.seq_len} must be between 1 and {1 << 24}")
        if self.packing not in PACKINGS:
            raise InvalidInput(f"--packing {self.packing!r}: use one of {', '.join(PACKINGS)}")
        if self.dtype not in _DTYPES:
            raise InvalidInput(f"--dtype {self.dtype!r}: use one of {', '.join(_DTYPES)}")
        for name in ("chunk_rows", "shard_rows"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InvalidInput(f"{name} must be positive; got {value}")
        if self.segment_shard_rows < 1:
            raise InvalidInput(
                f"segment_shard_rows must be positive; got {self.segment_shard_rows}"
            )


@dataclass
class TokenizeReport(JobReport):
    """What a tokenize job did; ``to_dict`` is what ``--json`` prints and the manifest keeps.

    ``total_tokens`` counts every non-pad position (document tokens plus one EOS per document);
    ``pad_fraction`` is the share of pad positions among ``rows * seq_len``.
    """

    output_uri: str
    output_version: int
    job_id: str
    source_uri: str
    source_version: int
    tokenizer: dict[str, Any]
    seq_len: int
    packing: str
    dtype: str
    documents: int
    empty_documents: int
    document_tokens: int
    total_tokens: int
    rows: int
    segments: int
    split_documents: int
    pad_fraction: float
    text_bytes: int
    partitions: int
    partitions_resumed: int
    seconds: float
    tokens_per_second: float
    timings: dict[str, float] = field(default_factory=dict)
    workers_lost: int = 0
    engine: str = ""  # what encoded: builtin, tokenizers, fastokens (or several, comma-separated)
    engine_fallbacks: int = 0  # batches fastokens handed to tokenizers after a spot-check

    def summary(self) -> str:
        """The human summary printed at the end of a run."""
        resumed = f" ({self.partitions_resumed} resumed)" if self.partitions_resumed else ""
        fell = f" ({self.engine_fallbacks} batches fell back)" if self.engine_fallbacks else ""
        return "\n".join(
            [
                f"tokenized {self.documents:,} documents of {self.source_uri} "
                f"v{self.source_version} -> {self.rows:,} rows x {self.seq_len} ({self.dtype}, "
                f"{self.packing}) in {self.output_uri} version {self.output_version}",
                f"  {self.total_tokens:,} tokens ({self.document_tokens:,} + one EOS per "
                f"document), {self.empty_documents:,} empty documents skipped, "
                f"{self.split_documents:,} documents split across rows",
                f"  pad fraction {self.pad_fraction:.4f}; {self.segments:,} segments",
                f"  {self.seconds:,.1f} s, {self.tokens_per_second:,.0f} tokens/s; "
                f"{self.partitions} partitions{resumed}; tokenizer {self.tokenizer['name']} "
                f"({self.tokenizer['checksum'][:19]}...) on {self.engine or '?'}{fell}",
            ]
        )


@dataclass(frozen=True)
class _Job:
    """Everything a task needs, shipped once to every worker."""

    job_id: str
    output_uri: str
    work_uri: str
    storage: StorageConfig | None
    source_uri: str
    source_version: int
    text_field: str
    tokenizer: Tokenizer
    seq_len: int
    packing: Packing
    tokens: ArrayLayout
    row_segments: ArrayLayout
    segments: ArrayLayout

    def work(self) -> WorkDir:
        return WorkDir(self.work_uri, self.storage)

    def array_path(self, name: str) -> str:
        return f"arrays/{self.job_id}/{name}"


def tokenize(
    source: str,
    output: str,
    config: TokenizeConfig | None = None,
    storage: StorageConfig | None = None,
    echo: Callable[[str], None] | None = None,
) -> TokenizeReport:
    """Tokenize the text column of table dataset ``source`` and pack it into a new version of
    the packed token dataset at ``output`` (see :mod:`datastore.packed`); returns the report.

    Rerunning the same call after a crash resumes it; after success it returns the committed
    report. Raises :class:`InvalidInput` for a missing text column, a bad tokenizer file, a
    vocabulary too large for ``dtype``, or a source without any non-empty document.
    """
    started = time.perf_counter()
    config = config or TokenizeConfig()
    config.validate()
    say = echo or (lambda _msg: None)
    output = output.rstrip("/")
    timings: dict[str, float] = {}

    src = open_text_source(source, config.text_field, config.source_version, storage)
    _check_output(output, src.uri, storage)
    tok = load_tokenizer(config.tokenizer, storage)
    dtype = _choose_dtype(config.dtype, tok)
    job = _job(output, src.uri, src.version, tok, config, dtype, storage)
    done = _already_committed(output, job.job_id, storage)
    if done is not None:
        say(f"job {job.job_id} is already committed as version {done.output_version}")
        job.work().delete_all()
        return done
    shards = src.dataset.shards
    if not shards:
        raise InvalidInput(f"dataset {src.uri} v{src.version} has no documents to tokenize")
    row_base = np.zeros(len(shards), np.int64)
    np.cumsum([s.rows for s in shards[:-1]], out=row_base[1:])
    say(
        f"tokenize: {src.uri} v{src.version}, {len(shards)} partitions, "
        f"{sum(s.rows for s in shards):,} documents, job {job.job_id}"
    )
    progress = Progress(config.execution.progress)
    # One single-threaded worker per core: the tokenizers' own thread pools would only
    # oversubscribe the cores (variables already set in the environment win).
    threads = {"RAYON_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    worker_env = {k: os.environ.get(k, v) for k, v in threads.items()}
    with dask_client(config.execution, say, worker_env) as client:
        job_f = client.scatter(job, broadcast=True, hash=False)
        t = time.perf_counter()
        parts = run_tasks(
            client,
            "tokenize",
            _tokenize_part,
            [(job_f, i, int(row_base[i])) for i in range(len(shards))],
            progress,
            docs_of=lambda m: int(m["documents"]),
        )
        timings["tokenize"] = time.perf_counter() - t
        streams = np.array([p["stream"] for p in parts], np.int64)
        bases = np.zeros(len(parts), np.int64)
        np.cumsum(streams[:-1], out=bases[1:])
        total_stream = int(streams.sum())
        if not total_stream:
            raise InvalidInput(
                f"dataset {src.uri} v{src.version} has no non-empty documents in column "
                f"{config.text_field!r}; nothing to tokenize"
            )
        rows = math.ceil(total_stream / job.seq_len)
        shard_rows = job.tokens.shard_rows
        num_shards = job.tokens.num_shards(rows)
        pack_args = []
        for s in range(num_shards):
            lo = s * shard_rows * job.seq_len
            hi = min(rows, (s + 1) * shard_rows) * job.seq_len
            pack_args.append((job_f, s, rows, _overlapping(bases, streams, lo, hi)))
        t = time.perf_counter()
        packed = run_tasks(client, "pack", _pack_shard, pack_args, progress)
        timings["pack"] = time.perf_counter() - t

        counts = np.array([p["segments"] for p in packed], np.int64)
        seg_base = np.zeros(num_shards, np.int64)
        np.cumsum(counts[:-1], out=seg_base[1:])
        total_segments = int(counts.sum())
        g = job.segments.shard_rows
        index_args: list[tuple[Any, ...]] = [
            (job_f, "rows", s, [(s, int(seg_base[s]))]) for s in range(num_shards)
        ]
        for c in range(job.segments.num_shards(total_segments)):
            lo, hi = c * g, min(total_segments, (c + 1) * g)
            index_args.append((job_f, "segments", c, _overlapping(seg_base, counts, lo, hi)))
        t = time.perf_counter()
        indexed = run_tasks(client, "index", _write_index, index_args, progress)
        timings["index"] = time.perf_counter() - t
        workers_lost = progress.workers_lost(client)

    t = time.perf_counter()
    store = open_store(output, storage)
    objects: dict[str, list[ObjectEntry]] = {TOKENS: [], ROW_SEGMENTS: [], SEGMENTS: []}
    for m in packed:
        objects[TOKENS].extend(ObjectEntry(**o) for o in m["objects"])
    for m in indexed:
        objects[ROW_SEGMENTS if m["kind"] == "rows" else SEGMENTS].extend(
            ObjectEntry(**o) for o in m["objects"]
        )
    sizes = {TOKENS: rows, ROW_SEGMENTS: rows, SEGMENTS: total_segments}
    layouts = {TOKENS: job.tokens, ROW_SEGMENTS: job.row_segments, SEGMENTS: job.segments}
    infos = []
    for name, layout in layouts.items():
        path = job.array_path(name)
        meta = layout.write_metadata(store, path, sizes[name])
        infos.append(layout.info(name, path, sizes[name], [*objects[name], meta]))

    documents = sum(int(p["documents"]) for p in parts)
    empty = sum(int(p["empty"]) for p in parts)
    doc_tokens = sum(int(p["doc_tokens"]) for p in parts)
    total_tokens = doc_tokens + documents - empty
    seconds = time.perf_counter() - started
    report = TokenizeReport(
        output_uri=store.uri,
        output_version=0,
        job_id=job.job_id,
        source_uri=src.uri,
        source_version=src.version,
        tokenizer=tok.describe(),
        seq_len=job.seq_len,
        packing=job.packing,
        dtype=dtype,
        documents=documents,
        empty_documents=empty,
        document_tokens=doc_tokens,
        total_tokens=total_tokens,
        rows=rows,
        segments=total_segments,
        split_documents=sum(int(m["split"]) for m in packed),
        pad_fraction=round(1 - total_tokens / (rows * job.seq_len), 6),
        text_bytes=sum(int(p["text_bytes"]) for p in parts),
        partitions=len(parts),
        partitions_resumed=sum(1 for p in parts if p.get("resumed")),
        seconds=round(seconds, 3),
        tokens_per_second=round(total_tokens / max(seconds, 1e-9), 1),
        timings={k: round(v, 3) for k, v in timings.items()},
        workers_lost=workers_lost,
        engine=",".join(sorted({str(p.get("engine", "")) for p in parts})),
        engine_fallbacks=sum(int(p.get("fallbacks", 0)) for p in parts),
    )
    metadata = {
        "tokenize": {
            "job_id": job.job_id,
            "source": {"uri": src.uri, "version": src.version, "text_field": src.text_field},
            "tokenizer": tok.describe(),
            "settings": _settings(config, dtype, job),
            "report": report.to_dict(),
        }
    }
    manifest = commit_arrays(
        store, infos, parents=[ParentRef(src.uri, src.version)], metadata=metadata
    )
    report.output_version = manifest.version
    report.timings["commit"] = round(time.perf_counter() - t, 3)
    if not config.execution.keep_work:
        job.work().delete_all()
    return report


def _overlapping(starts: np.ndarray, sizes: np.ndarray, lo: int, hi: int) -> list[tuple[int, int]]:
    """``(index, start)`` of the non-empty ranges ``[start, start + size)`` (sorted, adjacent)
    that overlap ``[lo, hi)``."""
    first = int(np.searchsorted(starts + sizes, lo, side="right"))
    last = int(np.searchsorted(starts, hi, side="left"))
    return [(i, int(starts[i])) for i in range(first, last) if sizes[i]]


def _check_output(output: str, source: str, storage: StorageConfig | None) -> None:
    """Refuse to write a token dataset over its source or over another table dataset."""
    out_uri = open_store(output, storage).uri
    if out_uri == source:
        raise InvalidInput(f"--output {output} is the source dataset; choose another location")
    try:
        existing = open_dataset(output, config=storage)
    except (NotFound, FileNotFoundError):
        return
    if existing.manifest.kind != "array":
        raise InvalidInput(
            f"{out_uri} v{existing.version} is a table dataset; write token rows to another "
            "location (a dataset's versions should hold one kind of data)"
        )


def _choose_dtype(wanted: str, tok: Tokenizer) -> str:
    fits16 = tok.vocab_size <= 1 << 16
    if wanted == "auto":
        return "uint16" if fits16 else "uint32"
    if wanted == "uint16" and not fits16:
        raise InvalidInput(
            f"tokenizer {tok.name} has {tok.vocab_size:,} ids; uint16 holds 65,536: "
            "use --dtype uint32 (or leave --dtype at auto)"
        )
    return wanted


def _layouts(config: TokenizeConfig, dtype: str) -> tuple[ArrayLayout, ArrayLayout, ArrayLayout]:
    row_bytes = config.seq_len * np.dtype(dtype).itemsize
    chunk = config.chunk_rows or max(1, _CHUNK_BYTES // row_bytes)
    shard = config.shard_rows or chunk * _SHARD_CHUNKS
    if shard % chunk:
        raise InvalidInput(
            f"--shard-rows ({shard}) must be a multiple of --chunk-rows ({chunk}"
            f"{'' if config.chunk_rows else ', the default for this --seq-len'})"
        )
    tokens = ArrayLayout(
        dtype=dtype, row_shape=(config.seq_len,), chunk_rows=chunk, shard_rows=shard
    )
    row_segments = ArrayLayout(dtype="int64", chunk_rows=shard, shard_rows=shard)
    g = config.segment_shard_rows
    segments = ArrayLayout(
        dtype="int64", row_shape=(3,), chunk_rows=math.gcd(g, 16384), shard_rows=g
    )
    return tokens, row_segments, segments


def _settings(config: TokenizeConfig, dtype: str, job: _Job) -> dict[str, Any]:
    return {
        "text_field": config.text_field,
        "seq_len": config.seq_len,
        "packing": config.packing,
        "dtype": dtype,
        "eos_token": config.tokenizer.eos_token,
        "pad_token": config.tokenizer.pad_token,
        "layouts": {
            name: dataclasses.asdict(layout)
            for name, layout in (
                (TOKENS, job.tokens),
                (ROW_SEGMENTS, job.row_segments),
                (SEGMENTS, job.segments),
            )
        },
    }


def _job(
    output: str,
    source_uri: str,
    source_version: int,
    tok: Tokenizer,
    config: TokenizeConfig,
    dtype: str,
    storage: StorageConfig | None,
) -> _Job:
    tokens, row_segments, segments = _layouts(config, dtype)
    attributes = {
        PACKED_ATTRIBUTE: {
            "seq_len": config.seq_len,
            "packing": config.packing,
            "eos_id": tok.eos_id,
            "pad_id": tok.pad_id,
            "vocab_size": tok.vocab_size,
            "tokenizer": tok.checksum,
            "source": {"uri": source_uri, "version": source_version},
        }
    }
    tokens = dataclasses.replace(tokens, attributes=attributes)
    identity = {
        "layout_version": _LAYOUT_VERSION,
        "source": [source_uri, source_version],
        # The file's content, not its path; and the versions of what encodes the bytes, so a
        # rerun after an upgrade never rewrites objects an earlier version references.
        "tokenizer": {k: v for k, v in tok.describe().items() if k != "name"},
        "software": _software_versions(),
        "text_field": config.text_field,
        "seq_len": config.seq_len,
        "packing": config.packing,
        "layouts": [dataclasses.asdict(x) for x in (tokens, row_segments, segments)],
    }
    job_id = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    _, work_uri = job_work_uri(output, config.execution.work_dir, f"tok-{job_id}")
    return _Job(
        job_id=job_id,
        output_uri=output,
        work_uri=work_uri,
        storage=storage,
        source_uri=source_uri,
        source_version=source_version,
        text_field=config.text_field,
        tokenizer=tok,
        seq_len=config.seq_len,
        packing=config.packing,
        tokens=tokens,
        row_segments=row_segments,
        segments=segments,
    )


def _software_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("shardyard", "zarr", "numcodecs", "tokenizers", "fastokens"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "-"
    return out


def _already_committed(
    output: str, job_id: str, storage: StorageConfig | None
) -> TokenizeReport | None:
    """The report of the version this job committed, if any (see :func:`committed_job`)."""
    found = committed_job(output, "tokenize", job_id, storage)
    if found is None:
        return None
    version, meta = found
    return TokenizeReport.from_dict({**meta["report"], "output_version": version})


# -- tasks --------------------------------------------------------------------------------------


def _tokenize_part(job: _Job, part: int, row_base: int) -> dict[str, Any]:
    """Encode source shard ``part``; spill ids (EOS after each non-empty document), lengths
    and source rows of its non-empty documents."""
    work = job.work()
    key = f"a/{part:05d}"
    marker = work.marker(f"{key}.json")
    if marker is not None:
        return {**marker, "resumed": True}
    t = time.perf_counter()
    src = open_text_source(job.source_uri, job.text_field, job.source_version, job.storage)
    texts = src.read_text(part)
    ids, lengths, fallbacks = job.tokenizer.encode_counted(texts)
    dtype = np.dtype(job.tokens.dtype)
    if ids.size and int(ids.max()) > np.iinfo(dtype).max:
        raise InvalidInput(
            f"tokenizer {job.tokenizer.name} produced id {int(ids.max())}, too large for "
            f"{dtype}; use --dtype uint32"
        )
    keep = lengths > 0
    lens = lengths[keep] + 1  # each document ends with EOS
    out = _with_eos(ids, lens, job.tokenizer.eos_id, dtype)
    docs = row_base + np.flatnonzero(keep).astype(np.int64)
    work.write_array(f"{key}-tokens.npy", out)
    work.write_array(f"{key}-lengths.npy", lens.astype(np.int64))
    work.write_array(f"{key}-docs.npy", docs)
    text_bytes = _text_bytes(texts)
    doc = {
        "part": part,
        "documents": len(lengths),
        "empty": int((~keep).sum()),
        "doc_tokens": int(ids.size),
        "stream": stream_length(lens, job.seq_len, job.packing),
        "text_bytes": text_bytes,
        "seconds": round(time.perf_counter() - t, 4),
        "engine": job.tokenizer.engine,
        "fallbacks": fallbacks,
    }
    work.set_marker(f"{key}.json", doc)
    return doc


def _with_eos(ids: np.ndarray, lens: np.ndarray, eos: int, dtype: np.dtype[Any]) -> np.ndarray:
    """``ids`` with ``eos`` after each document (``lens`` counts it)."""
    out = np.empty(int(lens.sum()), dtype)
    ends = np.cumsum(lens)
    out[ends - 1] = eos
    if len(lens) * 64 < out.size:  # long documents: one slice copy each
        src = 0
        for end, n in zip(ends.tolist(), (lens - 1).tolist(), strict=True):
            out[end - 1 - n : end - 1] = ids[src : src + n]
            src += n
    else:
        is_eos = np.zeros(out.size, bool)
        is_eos[ends - 1] = True
        out[~is_eos] = ids
    return out


def _text_bytes(texts: Any) -> int:
    """UTF-8 bytes of a string column (nulls count zero)."""
    import pyarrow.compute as pc

    total = pc.sum(pc.binary_length(texts)).as_py()
    return int(total or 0)


def _pack_shard(job: _Job, s: int, rows: int, parts: list[tuple[int, int]]) -> dict[str, Any]:
    """Fill and publish shard object ``s`` of ``tokens``; spill its segments."""
    work = job.work()
    key = f"b/{s:05d}"
    marker = work.marker(f"{key}.json")
    if marker is not None:
        return marker
    first = s * job.tokens.shard_rows
    n_rows = min(rows, first + job.tokens.shard_rows) - first
    lo = first * job.seq_len
    out = np.full(n_rows * job.seq_len, job.tokenizer.pad_id, np.dtype(job.tokens.dtype))
    seg_rows, segs, split = [], [], 0
    for part, base in parts:
        a = f"a/{part:05d}"
        lengths = work.read_array(f"{a}-lengths.npy")
        r, sg = fill_range(
            out,
            lo,
            work.open_array(f"{a}-tokens.npy"),
            lengths,
            work.read_array(f"{a}-docs.npy"),
            base,
            job.seq_len,
            job.packing,
        )
        seg_rows.append(r)
        segs.append(sg)
        split += count_split(lengths, base, lo, lo + out.size, job.seq_len, job.packing)
    all_rows = np.concatenate(seg_rows) if seg_rows else np.empty(0, np.int64)
    all_segs = np.concatenate(segs) if segs else np.empty((0, 3), np.int64)
    entry = job.tokens.write_shard(
        open_store(job.output_uri, job.storage),
        job.array_path(TOKENS),
        s,
        out.reshape(n_rows, job.seq_len),
    )
    per_row = np.bincount(all_rows - first, minlength=n_rows).astype(np.int64)
    work.write_array(f"{key}-segments.npy", all_segs)
    work.write_array(f"{key}-row-counts.npy", per_row)
    doc = {
        "shard": s,
        "segments": len(all_segs),
        "split": split,
        "objects": [asdict(entry)] if entry else [],
    }
    work.set_marker(f"{key}.json", doc)
    return doc


def _write_index(job: _Job, kind: str, index: int, shards: list[tuple[int, int]]) -> dict[str, Any]:
    """Publish shard ``index`` of ``row_segments`` (kind "rows") or of ``segments``."""
    work = job.work()
    key = f"c/{kind}-{index:05d}.json"
    marker = work.marker(key)
    if marker is not None:
        return marker
    store = open_store(job.output_uri, job.storage)
    if kind == "rows":
        ((s, seg_base),) = shards
        counts = work.read_array(f"b/{s:05d}-row-counts.npy")
        firsts = np.zeros(len(counts), np.int64)
        np.cumsum(counts[:-1], out=firsts[1:])
        entry = job.row_segments.write_shard(
            store, job.array_path(ROW_SEGMENTS), index, seg_base + firsts
        )
    else:
        g = job.segments.shard_rows
        lo = index * g
        pieces = []
        for s, seg_base in shards:
            segs = work.read_array(f"b/{s:05d}-segments.npy")
            a, b = max(0, lo - seg_base), min(len(segs), lo + g - seg_base)
            pieces.append(segs[a:b])
        entry = job.segments.write_shard(
            store, job.array_path(SEGMENTS), index, np.concatenate(pieces)
        )
    doc = {"kind": kind, "index": index, "objects": [asdict(entry)] if entry else []}
    work.set_marker(key, doc)
    return doc
