"""The registry's metadata database: an SQLite file (embedded default) or PostgreSQL by URL.

SQLite runs in WAL mode with a busy timeout, and every write transaction starts with ``BEGIN
IMMEDIATE``: writers queue for the one write lock instead of failing halfway, so concurrent
processes registering versions serialise cleanly; reads (``shardyard_read`` execution option)
start a plain snapshot transaction that never waits for writers. The schema is migrated with Alembic
(``registry/migrations``); opening a database checks its revision with one query and only
imports Alembic when it must upgrade, which keeps a CLI read in a fresh process fast.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from datastore.errors import InvalidInput, Unreachable

__all__ = ["HEAD", "open_engine"]

_VERSIONS = Path(__file__).parent / "migrations" / "versions"

#: The schema revision this code expects: the newest ``NNNN_*.py`` in migrations/versions
#: (revision ids are their four-digit prefixes).
HEAD = max(p.name[:4] for p in _VERSIONS.glob("[0-9][0-9][0-9][0-9]_*.py"))


def _url(location: str) -> str:
    if "://" in location:
        return location
    path = Path(location).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def open_engine(location: str) -> Engine:
    """An engine for ``location`` (a SQLAlchemy URL, or a path for an SQLite file), its
    schema at :data:`HEAD`."""
    url = _url(location)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 60})

        @event.listens_for(engine, "connect")
        def _connect(dbapi_conn: Any, _: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Any) -> None:
            # writers take the lock up front (queue instead of failing on upgrade); readers
            # get a snapshot without it
            read = conn.get_execution_options().get("shardyard_read")
            conn.exec_driver_sql("BEGIN" if read else "BEGIN IMMEDIATE")

    elif url.startswith(("postgresql", "postgres")):
        if url.startswith("postgres://"):
            url = "postgresql://" + url[len("postgres://") :]
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url[len("postgresql://") :]
        # pool: the server's 40 request threads plus its event loop may each hold a connection
        engine = create_engine(
            url,
            pool_pre_ping=True,
            pool_size=10,
            max_overflow=40,
            connect_args={"connect_timeout": 10},
        )
    else:
        raise InvalidInput(
            f"unsupported registry database {location!r}: use a path (SQLite) or a "
            "postgresql:// URL"
        )
    try:
        try:
            _migrate(engine)
        except DBAPIError:  # another process created the schema at the same moment
            time.sleep(0.5)
            _migrate(engine)
    except DBAPIError as err:
        shown = engine.url.render_as_string(hide_password=True)
        reason = str(err.orig).strip().splitlines()[0] if err.orig else type(err).__name__
        raise Unreachable(f"registry database {shown} does not answer: {reason}") from None
    return engine


def _migrate(engine: Engine) -> None:
    with engine.connect() as conn:
        try:
            current = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        except DBAPIError:
            conn.rollback()
            current = None
    if current == HEAD:
        return
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
