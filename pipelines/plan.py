"""Input discovery and partitioning: which bytes each task of an ingest job reads.

Inputs are paths, directories, globs or ``s3://`` prefixes. Discovery lists them (paged on S3)
into :class:`InputFile` records sorted by URI, so the plan is the same however the listing
arrived; the listing is cached in the job's work directory so a resumed job sees exactly the
files the first attempt saw. Partitioning groups the files into :class:`Partition` units of
about ``input.partition_bytes``: small files are batched, large uncompressed JSONL files are cut
into byte ranges (the reader moves each cut to the next line start); other large files
(compressed, Parquet, CSV) are one partition each. The plan depends only on the listing and the
config, never on the number of workers, which is what makes the output identical on any
cluster.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import posixpath
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

from datastore import StorageConfig, open_store, parse_uri
from datastore.errors import NotFound
from datastore.store import ObjectInfo
from datastore.uri import Location
from pipelines.config import IngestConfig, InputFormat

__all__ = [
    "InputFile",
    "Partition",
    "Piece",
    "Plan",
    "detect_format",
    "discover",
    "make_plan",
]

_GLOB_CHARS = re.compile(r"[*?\[]")
_FORMATS: dict[str, InputFormat] = {
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".tsv": "csv",
}
_COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
#: Most files one task reads; bounds the per-task overhead of listing-sized partitions.
MAX_FILES_PER_PARTITION = 4096


@dataclass(frozen=True)
class InputFile:
    """One input object: its URI, size in bytes, etag (S3 ETag, or a local stat token), the
    detected format and compression (``gzip``, ``zstd`` or None). ``missing`` records an input
    the user named explicitly that does not exist (it is quarantined, not fatal)."""

    uri: str
    size: int
    etag: str | None
    format: InputFormat
    compression: str | None = None
    missing: bool = False


@dataclass(frozen=True)
class Piece:
    """Part of one file a task reads: bytes ``[start, end)`` (JSONL, lines *starting* in the
    range) or row groups ``[start, end)`` (Parquet); ``end = -1`` means to the end."""

    file: int
    start: int = 0
    end: int = -1


@dataclass(frozen=True)
class Partition:
    """The unit of work of the first phase: an index (its position in the plan) and pieces."""

    index: int
    pieces: tuple[Piece, ...]
    nbytes: int


@dataclass(frozen=True)
class Plan:
    """Files and partitions of one job, and the job id they and the config hash to."""

    files: tuple[InputFile, ...]
    partitions: tuple[Partition, ...]
    job_id: str

    @property
    def input_bytes(self) -> int:
        """Total bytes of the (existing) input files."""
        return sum(f.size for f in self.files)


def detect_format(name: str, override: InputFormat | None = None) -> tuple[InputFormat, str | None]:
    """Format and compression of a file from its name (``x.jsonl.zst`` -> jsonl, zstd)."""
    base = posixpath.basename(name).lower()
    stem, ext = posixpath.splitext(base)
    compression = _COMPRESSIONS.get(ext)
    if compression:
        ext = posixpath.splitext(stem)[1]
    if override is not None:
        return override, compression
    return _FORMATS.get(ext, "text"), compression


def discover(
    inputs: Sequence[str], config: IngestConfig, storage: StorageConfig | None = None
) -> list[InputFile]:
    """List ``inputs`` into files, sorted by URI and de-duplicated.

    A directory or prefix is listed recursively (hidden names and names starting with ``_``
    are skipped, as Hadoop-style writers use them for markers); a glob matches below its
    non-glob prefix (``*`` also crosses ``/``). An explicit file that does not exist becomes
    a ``missing`` entry; a directory or glob that matches nothing is an error, as it is almost
    always a typo.
    """
    found: dict[str, InputFile] = {}
    for spec in inputs:
        for f in _discover_one(spec, config, storage):
            found.setdefault(f.uri, f)
    return [found[u] for u in sorted(found)]


def _discover_one(
    spec: str, config: IngestConfig, storage: StorageConfig | None
) -> Iterable[InputFile]:
    fmt = config.input.format
    if _GLOB_CHARS.search(spec):
        head = _GLOB_CHARS.split(spec, 1)[0]
        base = head.rsplit("/", 1)[0] if "/" in head else "."
        loc = parse_uri(base)
        pattern = parse_uri(spec).path
        store = open_store(loc, storage)
        hits = [
            i
            for i in store.list("")
            if fnmatch.fnmatchcase(loc.join(i.key).path, pattern) and _visible(i.key)
        ]
        if not hits:
            raise NotFound(f"input glob {spec!r} matches no files")
        for hit in hits:
            yield _file(loc.join(hit.key), hit.size, hit.etag, fmt)
        return
    loc = parse_uri(spec)
    parent_key = posixpath.basename(loc.path)
    parent = Location(loc.scheme, loc.bucket, posixpath.dirname(loc.path))
    if parent_key:
        info: ObjectInfo | None
        try:
            info = open_store(parent, storage).head(parent_key)
        except (NotFound, IsADirectoryError):
            info = None
        if info is not None and not _is_dir(loc):
            yield _file(loc, info.size, info.etag, fmt)
            return
    store = open_store(loc, storage)
    listed = [i for i in store.list("") if _visible(i.key)]
    if not listed:
        if _is_dir(loc):
            raise NotFound(f"input directory {spec!r} contains no files")
        if spec.endswith("/"):
            raise NotFound(f"input prefix {spec!r} contains no objects")
        yield InputFile(loc.uri, 0, None, detect_format(loc.path, fmt)[0], missing=True)
        return
    for info in listed:
        yield _file(loc.join(info.key), info.size, info.etag, fmt)


def _is_dir(loc: Location) -> bool:
    return loc.scheme == "file" and os.path.isdir(loc.path)


def _visible(key: str) -> bool:
    return not any(part.startswith((".", "_")) for part in key.split("/"))


def _file(loc: Location, size: int, etag: str | None, fmt: InputFormat | None) -> InputFile:
    kind, compression = detect_format(loc.path, fmt)
    return InputFile(loc.uri, size, etag, kind, compression)


def make_plan(files: Sequence[InputFile], config: IngestConfig) -> Plan:
    """Group ``files`` into partitions of about ``config.input.partition_bytes``."""
    target = config.input.partition_bytes
    partitions: list[Partition] = []
    batch: list[Piece] = []
    batch_bytes = 0

    def flush() -> None:
        nonlocal batch, batch_bytes
        if batch:
            partitions.append(Partition(len(partitions), tuple(batch), batch_bytes))
            batch, batch_bytes = [], 0

    for i, f in enumerate(files):
        if f.size > target and f.format == "jsonl" and f.compression is None:
            flush()
            for start in range(0, f.size, target):
                end = min(f.size, start + target)
                partitions.append(Partition(len(partitions), (Piece(i, start, end),), end - start))
            continue
        if f.size > target:
            flush()
            partitions.append(Partition(len(partitions), (Piece(i),), f.size))
            continue
        if batch_bytes + f.size > target or len(batch) >= MAX_FILES_PER_PARTITION:
            flush()
        batch.append(Piece(i))
        batch_bytes += f.size
    flush()
    return Plan(tuple(files), tuple(partitions), job_id(files, config))


def job_id(files: Sequence[InputFile], config: IngestConfig) -> str:
    """The job's identity: a hash of the config fingerprint and the listing (URI, size, etag)."""
    h = hashlib.sha256(config.fingerprint().encode())
    for f in files:
        h.update(json.dumps([f.uri, f.size, f.etag, f.missing]).encode())
    return h.hexdigest()[:20]


def files_to_json(files: Sequence[InputFile]) -> bytes:
    """The listing as JSON (for the listing cache and the manifest's lineage)."""
    return json.dumps([asdict(f) for f in files], sort_keys=True).encode()


def files_from_json(data: bytes) -> list[InputFile]:
    """Inverse of :func:`files_to_json`."""
    return [InputFile(**d) for d in json.loads(data)]
