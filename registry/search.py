"""Searching registered indexes through the registry server, on behalf of a token.

The registry does not know how to search a vector index (that is ``pipelines.retrieval``, which
depends on the registry, never the other way round). A package that can search a kind of
artifact declares a :class:`Searcher` under the ``shardyard.searchers`` entry-point group, named
by the artifact kind it serves; the server loads it on first use. The server decides *who* may
search *what* (role, lineage restrictions, and the access groups recorded on the token); the
searcher only runs the query with the groups it is handed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from datastore import StorageConfig
from datastore.errors import InvalidInput

__all__ = ["ENTRY_POINTS", "Searcher", "load_searcher"]

ENTRY_POINTS = "shardyard.searchers"


class Searcher(ABC):
    """Runs searches over registered versions of one artifact kind."""

    @abstractmethod
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
        """The ``k`` best hits of ``query`` in registered ``version`` (a Version) that a
        principal holding ``groups`` may read, as JSON-ready dicts."""


_loaded: dict[str, Searcher] = {}


def load_searcher(kind: str, what: str | None = None) -> Searcher:
    """The installed searcher for artifacts of ``kind`` (one instance per process: it may
    keep models and open tables warm); ``what`` names the version asked about in errors."""
    found = _loaded.get(kind)
    if found is not None:
        return found
    from importlib.metadata import entry_points

    available = entry_points(group=ENTRY_POINTS)
    for ep in available:
        if ep.name == kind:
            searcher = ep.load()()
            if not isinstance(searcher, Searcher):
                raise InvalidInput(f"entry point {ep.value} is not a registry.search.Searcher")
            _loaded[kind] = searcher
            return searcher
    kinds = ", ".join(sorted(ep.name for ep in available)) or "nothing (no searcher installed)"
    raise InvalidInput(f"{what or 'it'} is a {kind}: this server searches {kinds}")
