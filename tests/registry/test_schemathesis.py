"""Schemathesis generates requests from the server's OpenAPI description (in process, through
ASGI) with an admin token: no request may produce a server error (5xx)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

from registry import Registry, tokens  # noqa: E402
from registry.server import create_app  # noqa: E402

_ROOT = Path(tempfile.mkdtemp(prefix="shardyard-schemathesis-"))
_REG = Registry(str(_ROOT / "r.db"), str(_ROOT / "blobs"))
_REG.register("team/model", kind="model", dataset=("file:///d", 1), tags={"k": "v"})
_TOKEN, _ = tokens.create_token(_REG.engine, "*", "admin")
schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(_REG))


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_no_request_makes_a_server_error(case: schemathesis.Case) -> None:
    case.call_and_validate(
        headers={"authorization": f"Bearer {_TOKEN}"}, checks=[not_a_server_error]
    )
