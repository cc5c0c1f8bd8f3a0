"""Parse dataset URIs and resolve them to filesystems.

Accepted forms: a plain path (relative or absolute; parallel filesystem mounts are plain paths),
``file:///abs/path`` and ``s3://bucket/prefix``. Anything else is refused with
:class:`~datastore.errors.Unsupported`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Literal
from urllib.parse import unquote, urlparse

from datastore.config import StorageConfig
from datastore.errors import Unsupported

if TYPE_CHECKING:
    import pyarrow.fs as pafs

__all__ = ["Location", "parse_uri", "resolve_filesystem"]

Scheme = Literal["file", "s3"]


@dataclass(frozen=True)
class Location:
    """A parsed URI: for ``file`` an absolute local path, for ``s3`` a bucket and a key prefix."""

    scheme: Scheme
    bucket: str
    path: str

    @property
    def uri(self) -> str:
        """The canonical URI (``file:///...`` or ``s3://bucket/key``)."""
        if self.scheme == "file":
            return "file://" + self.path
        return f"s3://{self.bucket}/{self.path}" if self.path else f"s3://{self.bucket}"

    def join(self, *parts: str) -> Location:
        """The location of ``parts`` below this one (``/``-separated, no ``..``)."""
        rel = "/".join(p.strip("/") for p in parts if p.strip("/"))
        if ".." in PurePosixPath(rel).parts:
            raise Unsupported(f"'..' is not allowed in a key below {self.uri}: {rel!r}")
        if not rel:
            return self
        joined = f"{self.path.rstrip('/')}/{rel}" if self.path else rel
        return Location(self.scheme, self.bucket, joined)

    def __str__(self) -> str:
        return self.uri


def parse_uri(uri: str | os.PathLike[str]) -> Location:
    """Parse ``uri``; plain paths become absolute ``file`` locations."""
    text = os.fspath(uri)
    if "://" not in text:
        return Location("file", "", os.path.abspath(os.path.expanduser(text)))
    parsed = urlparse(text)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise Unsupported(f"file URI {text!r} names a host; use file:///absolute/path")
        return Location("file", "", os.path.abspath(unquote(parsed.path)))
    if parsed.scheme in ("s3", "s3a"):
        if not parsed.netloc:
            raise Unsupported(f"S3 URI {text!r} has no bucket; expected s3://bucket/prefix")
        return Location("s3", parsed.netloc, parsed.path.strip("/"))
    raise Unsupported(
        f"URI scheme {parsed.scheme!r} in {text!r} is not supported; use a path, file:// or s3://"
    )


def resolve_filesystem(
    uri: str | Location, config: StorageConfig | None = None
) -> tuple[pafs.FileSystem, str]:
    """Resolve ``uri`` to a pyarrow filesystem and the path to pass to it.

    S3 uses pyarrow's native (C++) client, the fast path for bulk reads and writes; its
    credentials and endpoint come from ``config`` resolved the same way as boto3's.
    """
    import pyarrow.fs as pafs

    loc = uri if isinstance(uri, Location) else parse_uri(uri)
    if loc.scheme == "file":
        return pafs.LocalFileSystem(), loc.path
    from datastore.s3 import arrow_filesystem

    return arrow_filesystem(config or StorageConfig.resolve()), f"{loc.bucket}/{loc.path}".rstrip(
        "/"
    )
