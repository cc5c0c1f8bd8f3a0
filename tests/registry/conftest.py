"""Shared helpers of the registry tests (the SQL backends come from tests/conftest.py).

``client`` is the registry as its users reach it, in both modes: the local ``Registry`` and
the ``RemoteRegistry`` talking to ``shardyard serve`` (uvicorn on a loopback port) over the
same database; tests of the public API take it and run in both.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from registry import Registry


@pytest.fixture
def reg(registry_db: str, tmp_path: Path) -> Registry:
    """A fresh registry on each SQL backend, blobs in a local directory."""
    return Registry(registry_db, str(tmp_path / "blobs"))


@pytest.fixture(params=["local", "remote"])
def client(request: pytest.FixtureRequest, reg: Registry) -> Iterator[Any]:
    """``reg`` itself, or a RemoteRegistry with an admin token for every namespace talking to
    ``reg`` served over HTTP: the same API, the same answers."""
    if request.param == "local":
        yield reg
        return
    pytest.importorskip("fastapi")
    from registry import tokens
    from registry.remote import RemoteRegistry

    with serving(reg) as srv:
        secret, _ = tokens.create_token(reg.engine, "*", "admin")
        remote = RemoteRegistry(srv["url"], secret)
        try:
            yield remote
        finally:
            remote.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serving(reg: Registry, search_roots: tuple[str, ...] = ()) -> Iterator[dict[str, Any]]:
    """``reg`` served on a loopback port, with tokens of each role in ``team`` (and an admin
    of ``other``): url, reg, tokens and their ids by role."""
    import uvicorn

    from registry import tokens
    from registry.server import create_app

    port = _free_port()
    config = uvicorn.Config(
        create_app(reg, url_ttl=60, max_upload=10 << 20, search_roots=search_roots),
        host="127.0.0.1",
        port=port,
        log_level="error",
    )
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    made = {role: tokens.create_token(reg.engine, "team", role) for role in tokens.ROLES}
    made["other"] = tokens.create_token(reg.engine, "other", "admin")
    try:
        yield {
            "url": f"http://127.0.0.1:{port}",
            "reg": reg,
            "tokens": {k: v[0] for k, v in made.items()},
            "ids": {k: v[1].id for k, v in made.items()},
        }
    finally:
        srv.should_exit = True
        thread.join(10)


def write_files(root: Path, **contents: str) -> Path:
    """Files named by the keywords, holding their texts, under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for name, text in contents.items():
        (root / name).write_text(text)
    return root
