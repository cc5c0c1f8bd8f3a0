"""Shardyard's storage floor: URIs, object stores (local, S3), and the dataset format.

Imports none of Shardyard's other packages; they all build on this one.

The names below load their module on first use (PEP 562), so that ``import datastore`` (or
``from datastore.errors import ...``) costs nothing and a command that only needs the
configuration or the errors never imports PyArrow, NumPy or Zarr.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from datastore.arrays import ArrayDatasetWriter, ArrayLayout, commit_arrays
    from datastore.atomic import VersionConflict
    from datastore.config import StorageConfig
    from datastore.dataset import (
        ArrayDataset,
        Dataset,
        TableDataset,
        VerifyResult,
        dataset_versions,
        open_dataset,
    )
    from datastore.errors import (
        AlreadyExists,
        Corrupt,
        InvalidInput,
        NotFound,
        PermissionDenied,
        PreconditionFailed,
        ShardyardError,
        Unauthenticated,
        Unreachable,
        Unsupported,
    )
    from datastore.manifest import FORMAT_VERSION, Manifest, ParentRef, ShardInfo
    from datastore.store import ObjectInfo, ObjectStore, open_store
    from datastore.uri import Location, parse_uri, resolve_filesystem
    from datastore.writer import DatasetWriter, ShardEncoder, commit_table, write_shard

#: Where each public name lives.
_MODULES = {
    "arrays": ("ArrayDatasetWriter", "ArrayLayout", "commit_arrays"),
    "atomic": ("VersionConflict",),
    "config": ("StorageConfig",),
    "dataset": (
        "ArrayDataset",
        "Dataset",
        "TableDataset",
        "VerifyResult",
        "dataset_versions",
        "open_dataset",
    ),
    "errors": (
        "AlreadyExists",
        "Corrupt",
        "InvalidInput",
        "NotFound",
        "PermissionDenied",
        "PreconditionFailed",
        "ShardyardError",
        "Unauthenticated",
        "Unreachable",
        "Unsupported",
    ),
    "manifest": ("FORMAT_VERSION", "Manifest", "ParentRef", "ShardInfo"),
    "store": ("ObjectInfo", "ObjectStore", "open_store"),
    "uri": ("Location", "parse_uri", "resolve_filesystem"),
    "writer": ("DatasetWriter", "ShardEncoder", "commit_table", "write_shard"),
}
_WHERE = {name: module for module, names in _MODULES.items() for name in names}

__all__ = [
    "FORMAT_VERSION",
    "AlreadyExists",
    "ArrayDataset",
    "ArrayDatasetWriter",
    "ArrayLayout",
    "Corrupt",
    "Dataset",
    "DatasetWriter",
    "InvalidInput",
    "Location",
    "Manifest",
    "NotFound",
    "ObjectInfo",
    "ObjectStore",
    "ParentRef",
    "PermissionDenied",
    "PreconditionFailed",
    "ShardEncoder",
    "ShardInfo",
    "ShardyardError",
    "StorageConfig",
    "TableDataset",
    "Unauthenticated",
    "Unreachable",
    "Unsupported",
    "VerifyResult",
    "VersionConflict",
    "__version__",
    "commit_arrays",
    "commit_table",
    "dataset_versions",
    "open_dataset",
    "open_store",
    "parse_uri",
    "resolve_filesystem",
    "write_shard",
]


if not TYPE_CHECKING:  # the type checker sees the imports above instead

    def __getattr__(name: str) -> Any:
        module = _WHERE.get(name)
        if module is None:
            raise AttributeError(f"module 'datastore' has no attribute {name!r}")
        value = getattr(importlib.import_module(f"datastore.{module}"), name)
        globals()[name] = value  # once loaded, a plain module attribute
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *__all__})
