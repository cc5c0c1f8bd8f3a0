"""Shardyard's storage floor: URIs, object stores (local, S3), and the dataset format.

Imports none of Shardyard's other packages; they all build on this one.
"""

__version__ = "0.1.0"

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
