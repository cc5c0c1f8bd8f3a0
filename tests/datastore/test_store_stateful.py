"""Random operation sequences against each backend agree with a dict model."""

from __future__ import annotations

import tempfile
import uuid

from hypothesis import settings

from datastore import ObjectStore, StorageConfig, open_store
from datastore.testing.stateful import StoreStateMachine
from tests.conftest import BUCKET


def test_local_store_state_machine() -> None:
    class Local(StoreStateMachine):
        def make_store(self) -> ObjectStore:
            return open_store(tempfile.mkdtemp(prefix="shardyard-sm-"))

    Local.TestCase.settings = settings(max_examples=30, stateful_step_count=25, deadline=None)
    Local.TestCase().runTest()


def test_s3_store_state_machine(s3_config: StorageConfig) -> None:
    class S3(StoreStateMachine):
        def make_store(self) -> ObjectStore:
            return open_store(f"s3://{BUCKET}/sm-{uuid.uuid4().hex[:12]}", s3_config)

    S3.TestCase.settings = settings(max_examples=10, stateful_step_count=15, deadline=None)
    S3.TestCase().runTest()
