"""A hypothesis state machine that runs random operations on a store and on a dict model."""

from __future__ import annotations

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from datastore.errors import AlreadyExists, NotFound
from datastore.store import ObjectStore

__all__ = ["StoreStateMachine"]

_keys = st.sampled_from(["a", "b", "d/x", "d/y", "d/e/z"])
_data = st.binary(max_size=64)


class StoreStateMachine(RuleBasedStateMachine):
    """Subclass and set ``make_store`` to return a fresh, empty store for each run."""

    def __init__(self) -> None:
        super().__init__()
        self.store = self.make_store()
        self.model: dict[str, bytes] = {}

    def make_store(self) -> ObjectStore:
        raise NotImplementedError

    @rule(key=_keys, data=_data)
    def put(self, key: str, data: bytes) -> None:
        self.store.put(key, data)
        self.model[key] = data

    @rule(key=_keys, data=_data)
    def create(self, key: str, data: bytes) -> None:
        try:
            self.store.put(key, data, mode="create")
            assert key not in self.model, f"create of existing {key!r} succeeded"
            self.model[key] = data
        except AlreadyExists:
            assert key in self.model, f"create of absent {key!r} failed"

    @rule(key=_keys)
    def get(self, key: str) -> None:
        try:
            assert self.store.get(key) == self.model[key]
        except NotFound:
            assert key not in self.model

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.model)))
        self.store.delete(key)
        del self.model[key]

    @invariant()
    def listing_matches(self) -> None:
        listed = {info.key: info.size for info in self.store.list()}
        assert listed == {k: len(v) for k, v in self.model.items()}
