"""The conformance suite every :class:`~datastore.store.ObjectStore` backend must pass.

Subclass :class:`StoreConformance` in a test module and provide two fixtures: ``store`` (an empty
store) and ``backdoor`` (a :class:`Backdoor` that reads and writes the same objects without
going through the code under test, for ground truth).
"""

from __future__ import annotations

import abc
import threading

import pytest

from datastore.errors import AlreadyExists, NotFound, PreconditionFailed, Unsupported
from datastore.store import ObjectStore

__all__ = ["Backdoor", "StoreConformance"]


class Backdoor(abc.ABC):
    """Raw access to a backend's objects, bypassing ObjectStore."""

    @abc.abstractmethod
    def get(self, key: str) -> bytes | None:
        """The object's bytes, or None if absent."""

    @abc.abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` at ``key``."""

    @abc.abstractmethod
    def keys(self) -> list[str]:
        """Every visible key under the store root, sorted."""


class StoreConformance:
    """Behaviour shared by all backends. Test methods take ``store`` and ``backdoor``."""

    def test_put_get_roundtrip(self, store: ObjectStore, backdoor: Backdoor) -> None:
        info = store.put("a/b/c.bin", b"hello")
        assert info.size == 5
        assert store.get("a/b/c.bin") == b"hello"
        assert backdoor.get("a/b/c.bin") == b"hello"

    def test_get_reads_backdoor_writes(self, store: ObjectStore, backdoor: Backdoor) -> None:
        backdoor.put("x", b"from outside")
        assert store.get("x") == b"from outside"
        assert store.head("x").size == len(b"from outside")

    def test_missing_key_is_not_found(self, store: ObjectStore) -> None:
        with pytest.raises(NotFound, match="nope"):
            store.get("nope")
        with pytest.raises(FileNotFoundError):
            store.head("nope")
        assert not store.exists("nope")

    def test_get_range(self, store: ObjectStore) -> None:
        store.put("r", bytes(range(100)))
        assert store.get_range("r", 10, 5) == bytes(range(10, 15))
        assert store.get_range("r", 95, 50) == bytes(range(95, 100))
        assert store.get_range("r", 100, 10) == b""  # at the end: no bytes, not an error
        assert store.get_range("r", 150, 10) == b""

    def test_read_buffer_large_parallel(self, store: ObjectStore) -> None:
        data = bytes(range(256)) * 4096 * 12  # 12 MiB: multipart and parallel ranges on S3
        store.put("big", data)
        assert store.read_buffer("big", len(data)).to_pybytes() == data

    def test_overwrite_replaces(self, store: ObjectStore, backdoor: Backdoor) -> None:
        store.put("k", b"one")
        store.put("k", b"two")
        assert backdoor.get("k") == b"two"

    def test_create_is_exclusive(self, store: ObjectStore, backdoor: Backdoor) -> None:
        store.put("m", b"first", mode="create")
        with pytest.raises(AlreadyExists, match="m"):
            store.put("m", b"second", mode="create")
        assert backdoor.get("m") == b"first"

    def test_concurrent_creates_exactly_one_wins(
        self, store: ObjectStore, backdoor: Backdoor
    ) -> None:
        winners: list[int] = []
        losers: list[int] = []
        barrier = threading.Barrier(8)

        def race(i: int) -> None:
            barrier.wait()
            try:
                store.put("race", f"writer-{i}".encode(), mode="create")
                winners.append(i)
            except AlreadyExists:
                losers.append(i)

        threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(winners) == 1 and len(losers) == 7
        assert backdoor.get("race") == f"writer-{winners[0]}".encode()

    def test_if_match_update(self, store: ObjectStore, backdoor: Backdoor) -> None:
        first = store.put("cas", b"v1")
        assert first.etag
        second = store.put("cas", b"v2", if_match=first.etag)
        with pytest.raises(PreconditionFailed):
            store.put("cas", b"v3", if_match=first.etag)  # stale etag loses
        assert backdoor.get("cas") == b"v2"
        assert second.etag != first.etag

    def test_list_is_recursive_sorted_and_prefixed(self, store: ObjectStore) -> None:
        for key in ["d/2", "d/1", "d/sub/3", "e/4", "top"]:
            store.put(key, key.encode())
        assert [i.key for i in store.list("d/")] == ["d/1", "d/2", "d/sub/3"]
        assert [i.key for i in store.list()] == ["d/1", "d/2", "d/sub/3", "e/4", "top"]
        assert {i.key: i.size for i in store.list("e/")} == {"e/4": 3}
        assert list(store.list("nothing/")) == []

    def test_delete_is_idempotent(self, store: ObjectStore, backdoor: Backdoor) -> None:
        store.put("gone", b"x")
        store.delete("gone")
        store.delete("gone")
        assert backdoor.get("gone") is None
        assert not store.exists("gone")

    def test_no_temporaries_visible_after_puts(
        self, store: ObjectStore, backdoor: Backdoor
    ) -> None:
        for i in range(5):
            store.put(f"p/{i}", b"x" * 1000)
        store.put("p/0", b"y")
        assert backdoor.keys() == [f"p/{i}" for i in range(5)]

    def test_dotdot_keys_are_refused(self, store: ObjectStore) -> None:
        with pytest.raises(Unsupported):
            store.put("../escape", b"x")

    def test_empty_object(self, store: ObjectStore) -> None:
        store.put("empty", b"")
        assert store.get("empty") == b""
        assert store.head("empty").size == 0

    def test_open_writer_streams_and_publishes_on_commit(
        self, store: ObjectStore, backdoor: Backdoor
    ) -> None:
        data = bytes(range(256)) * 4096 * 12  # 12 MiB in uneven pieces: multipart on S3
        writer = store.open_writer("stream/obj", content_type="application/octet-stream")
        for start in range(0, len(data), 700_001):
            writer.write(data[start : start + 700_001])
        assert not store.exists("stream/obj"), "nothing is visible before commit"
        assert list(store.list()) == []
        info = writer.commit()
        assert info.size == len(data)
        assert backdoor.get("stream/obj") == data

    def test_open_writer_abort_leaves_nothing(self, store: ObjectStore, backdoor: Backdoor) -> None:
        store.put("stream/obj", b"old")
        writer = store.open_writer("stream/obj")
        writer.write(b"x" * (11 * 1024 * 1024))  # past the multipart threshold on S3
        writer.abort()
        writer.abort()
        assert backdoor.keys() == ["stream/obj"]
        assert backdoor.get("stream/obj") == b"old", "an aborted writer keeps the old object"
