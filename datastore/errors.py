"""The storage layer's error taxonomy.

Every error subclasses :class:`ShardyardError` (so the CLI can print it as one line) and, where one
fits, the matching builtin (so ``except FileNotFoundError`` keeps working for callers that do not
know Shardyard). Messages name the object and, where there is one, the fix.
"""

from __future__ import annotations

__all__ = [
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
]


class ShardyardError(Exception):
    """Base of every error Shardyard raises on purpose; ``str(err)`` is one self-contained line."""


class NotFound(ShardyardError, FileNotFoundError):
    """An object, dataset or version does not exist."""


class AlreadyExists(ShardyardError, FileExistsError):
    """A create-only write found the object already there."""


class PreconditionFailed(ShardyardError):
    """A conditional write lost: another writer changed or created the object first."""


class Corrupt(ShardyardError, ValueError):
    """Stored bytes do not match what the manifest promises (size, checksum, or parse)."""


class Unsupported(ShardyardError, ValueError):
    """A format version, URI scheme or option this build does not understand."""


class Unauthenticated(ShardyardError, PermissionError):
    """The store rejected the credentials (missing, unknown key, bad signature, expired)."""


class PermissionDenied(ShardyardError, PermissionError):
    """The credentials are valid but not allowed to do this."""


class Unreachable(ShardyardError, ConnectionError):
    """The store did not answer within the retry budget (down, wrong endpoint, network)."""


class InvalidInput(ShardyardError, ValueError):
    """Data handed to Shardyard does not fit what was declared (schema, shape, dtype)."""
