"""Lance vector tables: where the embedding pipeline writes chunks and search reads them.

A table lives at ``<db>/<name>.lance`` on local disk or ``s3://`` (the same StorageConfig as
every other store: endpoint, credentials, plain-http endpoints allowed). Its schema (see
:func:`chunk_schema`) carries the embedding model, dimension and chunking in its metadata, so
a table found by URI alone can be searched with the right model.

Access control is data: every chunk holds the access groups of its source document; the
group :data:`EVERYONE` marks chunks any principal may read (documents without groups get it
only when the pipeline is told that such documents are public). :func:`acl_filter` turns a
principal's groups into a SQL predicate that search applies as a pre-filter.

Index defaults come from the corpus size (:func:`default_index`): exact search below
:data:`FLAT_BELOW` rows (it is both exact and fast there); above, IVF-HNSW with 8-bit scalar
quantisation, searched with a refine step so distances are exact cosine and recall holds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from datastore import StorageConfig
from datastore.errors import InvalidInput, NotFound
from registry.refs import EVERYONE, check_group

if TYPE_CHECKING:
    import lancedb

__all__ = [
    "EVERYONE",
    "FLAT_BELOW",
    "IndexSpec",
    "TableRef",
    "acl_filter",
    "chunk_schema",
    "default_index",
    "open_db",
    "split_table_uri",
]

#: Below this many chunks, search is exact (no vector index).
FLAT_BELOW = 20_000
META_KEY = b"shardyard.embed"


def storage_options(config: StorageConfig | None) -> dict[str, str]:
    """LanceDB's object-store options for ``config`` (S3 endpoint, credentials, region)."""
    if config is None:
        return {}
    out: dict[str, str] = {"aws_region": config.region or "us-east-1"}
    from datastore.s3 import _session

    creds = _session(config).get_credentials()
    if creds is not None:
        frozen = creds.get_frozen_credentials()
        out["aws_access_key_id"] = frozen.access_key or ""
        out["aws_secret_access_key"] = frozen.secret_key or ""
        if frozen.token:
            out["aws_session_token"] = frozen.token
    if config.endpoint_url:
        out["aws_endpoint"] = config.endpoint_url
        out["allow_http"] = str(config.endpoint_url.startswith("http://")).lower()
        out["aws_virtual_hosted_style_request"] = str(config.addressing_style == "virtual").lower()
    return out


def open_db(
    uri: str, storage: StorageConfig | None = None, *, fresh: bool = True
) -> lancedb.DBConnection:
    """A LanceDB connection to database ``uri`` (a directory or ``s3://bucket/prefix``).
    ``fresh``: tables see other writers' commits on every read (writers need it); searches
    of one snapshot skip that check (a manifest lookup per query)."""
    import lancedb

    interval = timedelta(0) if fresh else None
    if uri.startswith("s3://"):
        return lancedb.connect(
            uri,
            storage_options=storage_options(storage or StorageConfig.resolve()),
            read_consistency_interval=interval,
        )
    if "://" in uri and not uri.startswith("file://"):
        raise InvalidInput(f"vector tables live on local disk or s3://, not {uri}")
    return lancedb.connect(uri.removeprefix("file://"), read_consistency_interval=interval)


@dataclass(frozen=True)
class TableRef:
    """A table: its database URI and name (stored at ``<db>/<name>.lance``)."""

    db: str
    name: str

    @property
    def uri(self) -> str:
        return f"{self.db.rstrip('/')}/{self.name}.lance"


def split_table_uri(uri: str) -> TableRef:
    """``<db>/<name>.lance`` -> TableRef."""
    head, _, last = uri.rstrip("/").rpartition("/")
    if not last.endswith(".lance") or not head:
        raise InvalidInput(f"{uri} is not a table URI (<database>/<name>.lance)")
    return TableRef(head, last.removesuffix(".lance"))


def chunk_schema(dim: int, meta: dict[str, Any]) -> pa.Schema:
    """The chunk table: one row per chunk; ``meta`` (model, dim, chunking) in its metadata."""
    return pa.schema(
        [
            ("chunk_id", pa.string()),
            ("doc_id", pa.string()),
            ("chunk", pa.int32()),
            ("text", pa.string()),
            ("vector", pa.list_(pa.float32(), dim)),
            ("source", pa.string()),
            ("access_groups", pa.list_(pa.string())),
            ("metadata", pa.string()),
            ("doc_hash", pa.string()),
            ("job", pa.string()),
        ],
        metadata={META_KEY: json.dumps(meta, sort_keys=True).encode()},
    )


def table_meta(schema: pa.Schema) -> dict[str, Any]:
    """What :func:`chunk_schema` recorded; InvalidInput if the table is not ours."""
    raw = (schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise InvalidInput("the table was not written by `shardyard embed` (no embed metadata)")
    return dict(json.loads(raw))


def acl_filter(groups: list[str] | None) -> str | None:
    """The pre-filter for a principal holding ``groups`` (None: no restriction, the operator
    reading its own storage; []: only what everyone may read)."""
    if groups is None:
        return None
    names = [EVERYONE, *(check_group(g) for g in groups)]
    quoted = ", ".join("'" + g.replace("'", "''") + "'" for g in names)
    return f"array_has_any(access_groups, [{quoted}])"


@dataclass(frozen=True)
class IndexSpec:
    """Vector index and its search parameters. ``kind``: flat (exact), hnsw (IVF-HNSW-SQ),
    ivf_pq."""

    kind: str = "auto"
    partitions: int | None = None
    m: int = 20
    ef_construction: int = 300
    sub_vectors: int | None = None
    ef: int = 100  # HNSW search breadth (chosen at 100k real-derived vectors: recall@10 >= 0.99)
    nprobes: int = 20  # IVF partitions searched at least (never a cap: filtered k stays k)
    refine: int = 2  # rerank refine x k candidates on exact vectors (exact cosine scores)

    KINDS = ("auto", "flat", "hnsw", "ivf_pq")

    def resolved(self, rows: int, dim: int) -> IndexSpec:
        """``auto`` made concrete for ``rows`` chunks of ``dim`` dimensions."""
        if self.kind not in self.KINDS:
            raise InvalidInput(f"index kind {self.kind!r}: one of {', '.join(self.KINDS)}")
        if self.kind != "auto":
            return self
        return default_index(rows, dim, self)


def default_index(rows: int, dim: int, base: IndexSpec | None = None) -> IndexSpec:
    """Exact search for small corpora, IVF-HNSW-SQ (one IVF partition per ~1M chunks) above."""
    from dataclasses import replace

    base = base or IndexSpec()
    if rows < FLAT_BELOW:
        return replace(base, kind="flat")
    return replace(base, kind="hnsw", partitions=base.partitions or max(1, rows // 1_000_000))


def create_vector_index(table: Any, spec: IndexSpec, dim: int) -> None:
    """Build (replace) the vector index ``spec`` names on ``table``; flat drops none and
    builds none."""
    from lancedb.index import HnswSq, IvfPq

    if spec.kind == "flat":
        return
    if spec.kind == "hnsw":
        config: Any = HnswSq(
            distance_type="cosine",
            num_partitions=spec.partitions or 1,
            m=spec.m,
            ef_construction=spec.ef_construction,
        )
    elif spec.kind == "ivf_pq":
        sub = spec.sub_vectors or next(s for s in (dim // 8, dim // 4, dim // 2, 1) if dim % s == 0)
        config = IvfPq(
            distance_type="cosine",
            num_partitions=spec.partitions or max(1, int(table.count_rows() ** 0.5)),
            num_sub_vectors=sub,
        )
    else:
        raise InvalidInput(f"index kind {spec.kind!r}: one of {', '.join(IndexSpec.KINDS)}")
    table.create_index("vector", config=config, replace=True)


def open_table(ref: TableRef, version: int | None, storage: StorageConfig | None) -> Any:
    """Table ``ref`` (at ``version``: read-only time travel); NotFound naming what is missing."""
    db = open_db(ref.db, storage, fresh=False)
    try:
        if version is None:
            return db.open_table(ref.name)
        return db.open_table(ref.name, version=version)
    except (ValueError, FileNotFoundError) as err:
        text = str(err)
        if version is not None and "version" in text.lower():
            raise NotFound(f"table {ref.uri} has no version {version} (cleaned up?)") from None
        raise NotFound(f"no vector table at {ref.uri}") from None


def check_filter(where: str) -> str:
    """``where`` if it is safe to AND with the access filter: parentheses balanced outside
    string literals, no comments or statement breaks (else a filter such as ``1=1) OR (1=1``
    would escape the access check)."""
    depth = 0
    i = 0
    quote: str | None = None
    while i < len(where):
        ch = where[i]
        if quote is not None:
            if ch == quote:
                if where[i + 1 : i + 2] == quote:  # '' or "" inside a literal
                    i += 1
                else:
                    quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                break
        elif ch == ";" or where[i : i + 2] in ("--", "/*", "*/"):
            raise InvalidInput(f"filter {where!r}: comments and ';' are not allowed")
        elif ch in "$`":  # dollar-quoted strings and backtick identifiers hide parentheses
            raise InvalidInput(f"filter {where!r}: use '...' strings ($ and ` are not allowed)")
        i += 1
    if depth != 0 or quote is not None:
        raise InvalidInput(f"filter {where!r} has unbalanced parentheses or quotes")
    if not where.strip():
        raise InvalidInput("the filter is empty")
    return where
