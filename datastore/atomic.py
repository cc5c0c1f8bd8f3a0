"""The publish protocol: a dataset version exists once its manifest is created, never before.

Data objects are written first under names no other writer uses; the manifest is then created
with an exclusive put (``If-None-Match: *`` on S3, ``link(2)`` locally). Of two writers
committing the same version exactly one wins; the loser gets :class:`VersionConflict`.

Fallback for stores without conditional writes (``supports_conditional_writes = False``): the
writer puts the manifest and reads it back; if the bytes differ it lost and says so. That only
narrows the race window, and ``docs/format.md`` says so: use one writer per dataset there.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Self

from datastore import __version__
from datastore.errors import AlreadyExists, NotFound, PreconditionFailed, Unsupported
from datastore.manifest import (
    MANIFEST_DIR,
    CreationInfo,
    Manifest,
    ParentRef,
    manifest_key,
    parse_manifest_key,
)
from datastore.store import ObjectStore

__all__ = [
    "CommitOnExit",
    "VersionConflict",
    "commit_manifest",
    "latest_version",
    "list_versions",
]

log = logging.getLogger("shardyard.commit")

_AUTO_RETRIES = 16


class CommitOnExit(abc.ABC):
    """Base of the dataset writers: ``with`` commits on a clean exit, aborts after an error."""

    @abc.abstractmethod
    def commit(self) -> Manifest:
        """Publish what was written as a new version."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Discard what was written; nothing becomes visible."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


class VersionConflict(PreconditionFailed):
    """Another writer committed the requested version first."""


def list_versions(store: ObjectStore) -> list[int]:
    """Committed versions of the dataset at ``store``, ascending."""
    versions = {parse_manifest_key(info.key) for info in store.list(MANIFEST_DIR + "/")}
    return sorted(v for v in versions if v is not None)


def latest_version(store: ObjectStore) -> int | None:
    """The highest committed version, or None for an empty prefix."""
    versions = list_versions(store)
    return versions[-1] if versions else None


def commit_manifest(
    store: ObjectStore, build: Callable[[int], Manifest], version: int | None = None
) -> Manifest:
    """Create the manifest ``build(v)`` for version ``version`` (or the next free one).

    With an explicit version a lost race raises :class:`VersionConflict`; with ``None`` the
    writer takes the next free number, retrying a bounded number of times.
    """
    explicit = version is not None
    if version is not None and version < 1:
        raise Unsupported(f"dataset versions start at 1; got {version} for {store.uri}")
    attempts = 1 if explicit else _AUTO_RETRIES
    for _ in range(attempts):
        v = version if version is not None else (latest_version(store) or 0) + 1
        manifest = build(v)
        body = manifest.to_json()
        key = manifest_key(v)
        try:
            if store.supports_conditional_writes:
                store.put(key, body, mode="create")
            else:
                _put_and_confirm(store, key, body)
            return manifest
        except (AlreadyExists, PreconditionFailed):
            if explicit:
                raise VersionConflict(
                    f"version {v} of {store.uri} was committed by another writer first; "
                    "write a new version instead"
                ) from None
            log.info("version %d of %s was taken concurrently; trying the next", v, store.uri)
    raise VersionConflict(
        f"could not commit {store.uri}: {attempts} versions in a row were taken by other writers"
    )


def commit_version(
    store: ObjectStore,
    version: int | None,
    parents: Sequence[ParentRef],
    metadata: dict[str, Any] | None,
    **content: Any,
) -> Manifest:
    """Commit a version whose data objects are already published: a manifest of ``content``
    (kind, schema, shards or arrays...) created now by this Shardyard, via
    :func:`commit_manifest`."""
    parent_list, meta = list(parents), dict(metadata or {})

    def build(v: int) -> Manifest:
        return Manifest(
            version=v,
            created=CreationInfo.now(f"shardyard {__version__}"),
            parents=parent_list,
            metadata=meta,
            **content,
        )

    return commit_manifest(store, build, version)


def _put_and_confirm(store: ObjectStore, key: str, body: bytes) -> None:
    try:
        store.head(key)
    except NotFound:
        store.put(key, body)
        if store.get(key) == body:
            return
    raise AlreadyExists(f"{store.uri_of(key)} already exists")
