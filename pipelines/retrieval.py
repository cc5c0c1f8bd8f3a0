"""Search over a chunk table: vector, full-text and hybrid, filtered by metadata and by the
principal's access groups.

``open_index("team/docs@production", registry=...)`` resolves a ``vector-index`` registry
version to its table and pinned table version (later appends are invisible to it: time
travel); ``open_index("s3://bucket/db/chunks.lance")`` opens a table's latest version. Queries
are embedded with the model the table was built with (its checksum is checked, so a different
model is refused rather than silently returning nonsense).

Access control is a pre-filter: only chunks whose groups meet the principal's are searched, so
``k`` hits come back whenever ``k`` readable chunks exist (a post-filter would drop them after
the top-k). IVF indexes are searched with a *minimum* number of partitions, never a cap, for the
same reason. A user's ``where`` is ANDed after it is checked for balanced parentheses, so it can
narrow the search but never widen it past the access filter.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from datastore import StorageConfig
from datastore.errors import InvalidInput
from pipelines.vectors import (
    IndexSpec,
    TableRef,
    acl_filter,
    check_filter,
    open_table,
    split_table_uri,
    table_meta,
)
from registry.search import Searcher

__all__ = ["MODES", "Hit", "RegistrySearcher", "VectorIndex", "open_index"]

MODES = ("vector", "text", "hybrid")
_COLUMNS = ["chunk_id", "doc_id", "chunk", "text", "source", "access_groups", "metadata"]
MAX_K = 10_000


@dataclass(frozen=True)
class Hit:
    """One search result; ``score``: cosine similarity (vector), BM25 (text) or reciprocal
    rank fusion (hybrid), higher is better."""

    chunk_id: str
    doc_id: str
    chunk: int
    score: float
    text: str
    source: str
    access_groups: list[str]
    metadata: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class VectorIndex:
    """A chunk table at one version, ready to search."""

    def __init__(
        self,
        table: Any,
        ref: TableRef,
        *,
        registry_ref: str | None = None,
        model: str | None = None,
        spec: IndexSpec | None = None,
    ) -> None:
        self.table = table
        self.ref = ref
        self.version = int(table.version)
        self.registry_ref = registry_ref
        self.meta = table_meta(table.schema)
        self.dim = int(self.meta["dim"])
        self.model = model or str(self.meta["model"])
        self.spec = spec or IndexSpec()
        kinds = {str(i.index_type) for i in table.list_indices()}
        self.kind = "hnsw" if "IvfHnswSq" in kinds else "ivf_pq" if "IvfPq" in kinds else "flat"

    def describe(self) -> dict[str, Any]:
        """What is searched: table, version, model, index (``index show --json``)."""
        return {
            "table": self.ref.uri,
            "version": self.version,
            "registry": self.registry_ref,
            "rows": self.table.count_rows(),
            "index": self.kind,
            **{k: self.meta[k] for k in sorted(self.meta)},
        }

    def embed(self, text: str) -> np.ndarray:
        """The query's vector, by the model the table was built with (checksum checked)."""
        from pipelines.embedder import load_embedder

        embedder = load_embedder(self.model, str(self.meta.get("precision", "float32")))
        if embedder.digest != self.meta.get("model_digest"):
            raise InvalidInput(
                f"model {self.model} (digest {embedder.digest[:12]}) is not the model table "
                f"{self.ref.uri} was built with (digest {str(self.meta.get('model_digest'))[:12]}"
                "): give that model with --model"
            )
        vec: np.ndarray = embedder.encode([text])[0]
        return vec

    def search(
        self,
        query: str | Sequence[float] | np.ndarray,
        k: int = 10,
        *,
        mode: str = "vector",
        groups: Sequence[str] | None = None,
        where: str | None = None,
    ) -> list[Hit]:
        """The ``k`` best chunks for ``query`` (text, or a vector for mode ``vector``) that
        a principal holding ``groups`` may read (None: no access restriction) and that match
        ``where`` (SQL over the table's columns)."""
        if mode not in MODES:
            raise InvalidInput(f"search mode {mode!r}: one of {', '.join(MODES)}")
        if not 1 <= k <= MAX_K:
            raise InvalidInput(f"k={k}: between 1 and {MAX_K}")
        filters = [f for f in (acl_filter(None if groups is None else list(groups)),) if f]
        if where is not None:
            filters.append(check_filter(where))
        text = query if isinstance(query, str) else None
        if mode != "vector" and (text is None or not text.strip()):
            raise InvalidInput(f"a {mode} search needs a query text")
        vector = self._vector(query) if mode != "text" else None
        if mode == "vector":
            builder = self._vector_query(self.table.search(vector, vector_column_name="vector"))
        elif mode == "text":
            builder = self.table.search(text, query_type="fts", fts_columns="text")
        else:
            builder = self._vector_query(
                self.table.search(query_type="hybrid", vector_column_name="vector")
                .vector(vector)
                .text(text)
            )
        for f in filters:
            builder = builder.where(f, prefilter=True)
        score = {"vector": "_distance", "text": "_score", "hybrid": "_relevance_score"}[mode]
        try:
            got = builder.select([*_COLUMNS, score] if mode != "hybrid" else _COLUMNS)
            got = got.limit(k).to_arrow()
        except (ValueError, RuntimeError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise InvalidInput(f"search on {self.ref.uri} failed: {first}") from None
        rows = got.to_pylist()
        return [
            Hit(
                chunk_id=r["chunk_id"],
                doc_id=r["doc_id"],
                chunk=int(r["chunk"]),
                score=float(1.0 - r[score] if mode == "vector" else r[score]),
                text=r["text"],
                source=r["source"],
                access_groups=list(r["access_groups"] or []),
                metadata=json.loads(r["metadata"] or "{}"),
            )
            for r in rows
        ]

    def _vector(self, query: str | Sequence[float] | np.ndarray) -> np.ndarray:
        if isinstance(query, str):
            if not query.strip():
                raise InvalidInput("the query text is empty")
            return self.embed(query)
        vec = np.asarray(query, dtype=np.float32)
        if vec.ndim != 1 or vec.shape[0] != self.dim:
            raise InvalidInput(
                f"query vector has shape {tuple(vec.shape)}; index {self.ref.uri} holds "
                f"{self.dim}-dimensional vectors"
            )
        if not np.all(np.isfinite(vec)):
            raise InvalidInput("query vector holds NaN or infinite values")
        return vec

    def _vector_query(self, builder: Any) -> Any:
        builder = builder.distance_type("cosine")
        if self.kind == "hnsw":
            builder = builder.ef(self.spec.ef).refine_factor(self.spec.refine)
        elif self.kind == "ivf_pq":
            builder = builder.minimum_nprobes(self.spec.nprobes).refine_factor(self.spec.refine)
        return builder


def open_index(
    ref: str,
    *,
    registry: str | None = None,
    blobs: str | None = None,
    storage: StorageConfig | None = None,
    version: int | None = None,
    model: str | None = None,
    spec: IndexSpec | None = None,
) -> VectorIndex:
    """The index ``ref`` names: a table URI (``<db>/<name>.lance``; latest version unless
    ``version``) or a registry reference to a ``vector-index`` version (its pinned version)."""
    registry_ref = None
    if ref.rstrip("/").endswith(".lance"):
        table_ref = split_table_uri(ref)
    else:
        from registry import Registry

        reg = Registry(registry, blobs, config=storage)
        try:
            found = reg.resolve(ref)
        finally:
            reg.close()
        table_ref, pinned = _pinned_table(found)
        version = pinned if version is None else version
        registry_ref = str(found.ref)
    table = open_table(table_ref, version, storage)
    try:
        return VectorIndex(table, table_ref, registry_ref=registry_ref, model=model, spec=spec)
    except InvalidInput as err:
        raise InvalidInput(f"{table_ref.uri}: {err}") from None


def _pinned_table(found: Any) -> tuple[TableRef, int | None]:
    """The table and table version registered ``vector-index`` version ``found`` pins."""
    if found.kind != "vector-index" or found.dataset_uri is None:
        raise InvalidInput(
            f"{found.ref} is a {found.kind}, not a vector-index: search a registered index "
            "or a table URI (<database>/<name>.lance)"
        )
    if found.revoked_at is not None:
        raise InvalidInput(f"{found.ref} is revoked: it is kept for audit, not for search")
    return split_table_uri(found.dataset_uri), found.dataset_version


class RegistrySearcher(Searcher):
    """Searches registered ``vector-index`` versions for the registry server (entry point
    ``shardyard.searchers: vector-index``). Opened tables stay open (a version's pinned table
    never changes) and the embedding model stays loaded, so a query costs the search."""

    def __init__(self, keep: int = 16) -> None:
        self._open: OrderedDict[tuple[str, int | None], VectorIndex] = OrderedDict()
        self._keep = keep
        self._lock = threading.Lock()

    def search(
        self,
        version: Any,
        query: str | Sequence[float],
        k: int,
        *,
        mode: str,
        groups: Sequence[str],
        where: str | None,
        storage: StorageConfig | None,
    ) -> list[dict[str, Any]]:
        table_ref, pinned = _pinned_table(version)
        key = (table_ref.uri, pinned)
        with self._lock:
            index = self._open.get(key)
            if index is not None:
                self._open.move_to_end(key)
        if index is None:
            table = open_table(table_ref, pinned, storage)
            index = VectorIndex(table, table_ref, registry_ref=str(version.ref))
            with self._lock:
                self._open[key] = index
                while len(self._open) > self._keep:
                    self._open.popitem(last=False)
        hits = index.search(query, k, mode=mode, groups=list(groups), where=where)
        return [h.to_dict() for h in hits]


def with_spec(index: VectorIndex, **changes: Any) -> VectorIndex:
    """``index`` searched with other parameters (ef, nprobes, refine)."""
    index.spec = replace(index.spec, **changes)
    return index
