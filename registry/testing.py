"""A real PostgreSQL server for tests and benchmarks: ``initdb`` into a private directory and
``pg_ctl start`` on a free loopback port, as the ``postgres`` user when run as root (PostgreSQL
refuses to run as root). ``stop()`` shuts it down fast and leaves nothing running.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from types import TracebackType

from datastore.errors import ShardyardError
from datastore.testing.seaweedfs import free_port

__all__ = ["PostgresServer", "pg_bin"]


def pg_bin() -> Path:
    """The directory of ``initdb`` / ``pg_ctl`` (newest installed PostgreSQL)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(on_path).parent
    raise ShardyardError("PostgreSQL is not installed (no pg_ctl): apt install postgresql")


class PostgresServer:
    """One PostgreSQL server under ``workdir``; ``url(db)`` gives a SQLAlchemy URL."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.data = self.workdir / "data"
        self.port = free_port()
        self.bin = pg_bin()
        self.user = "postgres"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [str(a) for a in args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if done.returncode:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise ShardyardError(f"{Path(args[0]).name} failed (exit {done.returncode}): {tail[0]}")
        return done

    def start(self) -> PostgresServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.workdir, self.user, self.user)
            os.chmod(self.workdir, 0o700)
        self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-U",
            self.user,
            "-A",
            "trust",
            "--no-sync",
            "-E",
            "UTF8",
        )
        options = (
            f"-p {self.port} -k {self.workdir} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=200"
        )
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.workdir / "log"),
            "-w",
            "-t",
            "60",
            "start",
        )
        return self

    def create_database(self, name: str | None = None) -> str:
        """A fresh database; its URL."""
        import psycopg

        name = name or f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def url(self, database: str) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            try:
                self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
            except (ShardyardError, subprocess.SubprocessError):
                pass

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
