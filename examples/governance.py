"""The demo's governance step: serve the registry on a loopback port, make a writer token and
a reader token for namespace ``demo``, and show one allowed and one refused request, then the
audit trail (who did what, hash-chained) and its verification.

Run after the registry steps of ``make demo``:
``SHARDYARD_HOME=... python examples/governance.py``
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

from datastore.errors import PermissionDenied
from registry import Registry, audit, tokens
from registry.remote import RemoteRegistry


def main() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).parent / "shardyard"
    server = subprocess.Popen([str(exe), "serve", "--port", str(port)])
    url = f"http://127.0.0.1:{port}"
    try:
        reg = Registry()
        writer, _ = tokens.create_token(reg.engine, "demo", "writer", note="ci pipeline")
        reader, _ = tokens.create_token(reg.engine, "demo", "reader", expires_in=3600)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("the registry server did not start") from None
                time.sleep(0.2)
        as_reader = RemoteRegistry(url, reader)
        v = as_reader.resolve("demo/tokens@production")
        print(f"reader: resolve demo/tokens@production -> {v.ref} (allowed)")
        try:
            as_reader.set_alias(str(v.ref), "staging")
        except PermissionDenied as err:
            print(f"reader: alias set -> refused: {err}")
        moved = RemoteRegistry(url, writer).set_alias(str(v.ref), "staging")
        print(f"writer: alias set -> {moved.ref} is now @staging (allowed)")
        for r in audit.records(reg.engine)[-4:]:
            print(f"audit {r.seq}: {r.actor} {r.action} {r.target}")
        count, problems = audit.verify(reg.engine)
        print(f"audit verify: {count} records, {problems or 'intact'}")
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
