"""Dataset manifests: the JSON document whose creation commits a dataset version.

See ``docs/format.md`` for the normative description. A manifest lists every shard (or Zarr
object) with its size and checksum, so a reader needs nothing but the manifest to find, fetch
and verify the data; anything under the dataset prefix that no manifest names is garbage from an
aborted writer and is ignored.
"""

from __future__ import annotations

import base64
import getpass
import json
import math
import platform
import socket
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, date, datetime
from typing import Any, Literal, TypeVar

import pyarrow as pa
import xxhash

from datastore.errors import Corrupt, Unsupported

__all__ = [
    "CHECKSUM_ALGORITHM",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MANIFEST_DIR",
    "ArrayInfo",
    "CreationInfo",
    "Manifest",
    "ObjectEntry",
    "ParentRef",
    "ShardInfo",
    "checksum",
    "column_stats",
    "manifest_key",
    "merge_stats",
    "parse_manifest_key",
    "schema_from_json",
    "schema_to_json",
]

FORMAT_NAME = "shardyard.dataset"
FORMAT_VERSION = 1
MANIFEST_DIR = "_manifests"
CHECKSUM_ALGORITHM = "xxh3-128"
_STAT_STRING_MAX = 64

Kind = Literal["table", "array"]
TableFormat = Literal["parquet", "arrow"]


def checksum(data: bytes | bytearray | memoryview | pa.Buffer) -> str:
    """``xxh3-128:<32 hex digits>`` of ``data`` (zero-copy over Arrow buffers)."""
    return f"{CHECKSUM_ALGORITHM}:{xxhash.xxh3_128_hexdigest(memoryview(data))}"


def manifest_key(version: int) -> str:
    """The key of version ``version``'s manifest, relative to the dataset prefix."""
    return f"{MANIFEST_DIR}/v{version:08d}.json"


def parse_manifest_key(key: str) -> int | None:
    """The version a manifest key names, or None for anything else under ``_manifests/``."""
    name = key.rsplit("/", 1)[-1]
    if name.startswith("v") and name.endswith(".json") and name[1:-5].isdigit():
        return int(name[1:-5])
    return None


@dataclass(frozen=True)
class ObjectEntry:
    """One stored object: ``path`` relative to the dataset prefix, ``bytes``, ``checksum``."""

    path: str
    bytes: int
    checksum: str


@dataclass(frozen=True)
class ShardInfo(ObjectEntry):
    """A table shard: an :class:`ObjectEntry` plus its row count and per-column statistics.

    ``stats[column]`` holds ``null_count`` and ``values`` (non-null count), and ``min`` / ``max``
    only when they are exact and JSON-representable.
    """

    rows: int = 0
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class ArrayInfo:
    """A Zarr v3 array stored below the dataset prefix, and every object it consists of."""

    name: str
    path: str
    shape: list[int]
    dtype: str
    chunks: list[int]
    shards: list[int]
    objects: list[ObjectEntry]


@dataclass(frozen=True)
class ParentRef:
    """A dataset version this one was derived from (lineage)."""

    uri: str
    version: int | None = None


@dataclass(frozen=True)
class CreationInfo:
    """Who and what wrote a version, and when (UTC, ISO 8601)."""

    at: str
    by: str
    host: str
    user: str

    @classmethod
    def now(cls, by: str) -> CreationInfo:
        """Creation info for the current process."""
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = "unknown"
        return cls(
            at=datetime.now(UTC).isoformat(timespec="milliseconds"),
            by=by,
            host=socket.gethostname() or platform.node(),
            user=user,
        )


@dataclass(frozen=True)
class Manifest:
    """One committed version of a dataset."""

    version: int
    kind: Kind
    schema: pa.Schema | None
    created: CreationInfo
    table_format: TableFormat | None = None
    shards: list[ShardInfo] = field(default_factory=list)
    arrays: list[ArrayInfo] = field(default_factory=list)
    parents: list[ParentRef] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        """Rows over all shards (tables) or rows of the first array (axis 0)."""
        if self.kind == "array":
            return self.arrays[0].shape[0] if self.arrays else 0
        return sum(s.rows for s in self.shards)

    @property
    def objects(self) -> list[ObjectEntry]:
        """Every data object the version consists of."""
        if self.kind == "array":
            return [o for a in self.arrays for o in a.objects]
        return list(self.shards)

    @property
    def nbytes(self) -> int:
        """Stored bytes of all data objects (manifests excluded)."""
        return sum(o.bytes for o in self.objects)

    def to_json(self) -> bytes:
        """The manifest document, UTF-8 JSON with sorted keys (stable bytes)."""
        doc: dict[str, Any] = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "version": self.version,
            "kind": self.kind,
            "table_format": self.table_format,
            "schema": schema_to_json(self.schema) if self.schema is not None else None,
            "shards": [asdict(s) for s in self.shards],
            "arrays": [asdict(a) for a in self.arrays],
            "totals": {
                "rows": self.rows,
                "bytes": self.nbytes,
                "num_shards": len(self.shards),
                "num_objects": len(self.objects),
            },
            "created": asdict(self.created),
            "parents": [asdict(p) for p in self.parents],
            "metadata": self.metadata,
        }
        return json.dumps(doc, sort_keys=True, indent=1, allow_nan=False).encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> Manifest:
        """Parse a manifest read from ``where``; refuses unknown formats and newer versions."""
        try:
            doc = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise Corrupt(f"manifest {where} is not valid JSON ({err})") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
            raise Corrupt(f"{where} is not a Shardyard manifest (no format {FORMAT_NAME!r})")
        fv = doc.get("format_version")
        if not isinstance(fv, int) or fv > FORMAT_VERSION:
            raise Unsupported(
                f"manifest {where} has format version {fv}; this Shardyard reads up to "
                f"{FORMAT_VERSION}: upgrade shardyard to read it"
            )
        if doc.get("kind") not in ("table", "array"):
            raise Unsupported(f"manifest {where} has unknown kind {doc.get('kind')!r}")
        try:
            return cls(
                version=int(doc["version"]),
                kind=doc["kind"],
                table_format=doc.get("table_format"),
                schema=schema_from_json(doc["schema"]) if doc.get("schema") else None,
                shards=[_load(ShardInfo, s) for s in doc.get("shards", [])],
                arrays=[
                    _load(
                        ArrayInfo, {**a, "objects": [_load(ObjectEntry, o) for o in a["objects"]]}
                    )
                    for a in doc.get("arrays", [])
                ],
                created=_load(CreationInfo, doc["created"]),
                parents=[_load(ParentRef, p) for p in doc.get("parents", [])],
                metadata=doc.get("metadata", {}),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise Corrupt(f"manifest {where} is malformed ({type(err).__name__}: {err})") from None


_T = TypeVar("_T")


def _load(cls: type[_T], entry: dict[str, Any]) -> _T:
    """Build ``cls`` from a JSON object, ignoring keys a later minor revision may add."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in entry.items() if k in names})


def schema_to_json(schema: pa.Schema) -> dict[str, Any]:
    """A readable field list plus the exact Arrow schema (IPC, base64) for lossless round trips."""
    return {
        "fields": [{"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in schema],
        "arrow_ipc": base64.b64encode(schema.serialize().to_pybytes()).decode(),
    }


def schema_from_json(doc: dict[str, Any]) -> pa.Schema:
    """Inverse of :func:`schema_to_json`."""
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(doc["arrow_ipc"])))


def column_stats(table: pa.Table | pa.RecordBatch) -> dict[str, dict[str, Any]]:
    """Exact min/max (when JSON-representable) and null counts for each flat column."""
    import pyarrow.compute as pc

    out: dict[str, dict[str, Any]] = {}
    for name, col in zip(table.schema.names, table.columns, strict=True):
        entry: dict[str, Any] = {
            "null_count": col.null_count,
            "values": len(col) - col.null_count,
        }
        t = col.type
        if (
            pa.types.is_integer(t)
            or pa.types.is_floating(t)
            or pa.types.is_string(t)
            or pa.types.is_large_string(t)
            or pa.types.is_boolean(t)
            or pa.types.is_temporal(t)
        ) and len(col) > col.null_count:
            mm = pc.min_max(col)
            for k in ("min", "max"):
                scalar = mm[k]
                if pa.types.is_temporal(t):  # ISO text; as_py() cannot hold nanoseconds
                    scalar = scalar.cast(pa.string())
                v = _json_scalar(scalar.as_py())
                if v is not None:
                    entry[k] = v
        out[name] = entry
    return out


def merge_stats(
    a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Statistics of the concatenation of two column sets with the same names."""
    if not a:
        return b
    out: dict[str, dict[str, Any]] = {}
    for name, sa in a.items():
        sb = b.get(name, {})
        merged: dict[str, Any] = {
            "null_count": sa.get("null_count", 0) + sb.get("null_count", 0),
            "values": sa.get("values", 0) + sb.get("values", 0),
        }
        for k, pick in (("min", min), ("max", max)):
            # A side with values but no bound (not representable) makes the merge unbounded.
            sides = [s for s in (sa, sb) if s.get("values", 0)]
            if sides and all(k in s for s in sides):
                try:
                    merged[k] = pick(s[k] for s in sides)
                except TypeError:
                    pass
        out[name] = merged
    return out


def _json_scalar(v: Any) -> Any:
    if isinstance(v, bool | int):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, str):
        return v if len(v) <= _STAT_STRING_MAX else None
    if isinstance(v, datetime | date):
        return v.isoformat()
    return None
