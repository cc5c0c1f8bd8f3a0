"""The demo's governance step: declare the registry's blob store an encrypted EU location
(client-side AES-GCM with a key from the local key file), serve the registry on a loopback
port, make a writer token and a reader token for namespace ``demo``, and show one allowed and
one refused request; search the demo's index through the server as a ``legal`` and an ``eng``
reader (the groups come from their tokens); register a file and show it is stored sealed; then
the audit trail (who did what, hash-chained) and its verification.

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
from registry.envelope import create_key, default_key_file
from registry.remote import RemoteRegistry
from registry.residency import set_location

QUERY = "license terms for redistribution"


def main() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    reg = Registry()
    keys = default_key_file()
    if not keys.exists() or '"demo-k1"' not in keys.read_text():
        create_key(keys, "demo-k1")
    loc = set_location(reg.engine, reg.blob_location, "eu-west-1", "aes-gcm", "demo-k1")
    print(f"location {loc.prefix}: {loc.region}, {loc.encryption} with key {loc.kms_key_id}")
    exe = Path(sys.executable).parent / "shardyard"
    roots = Path(reg.blob_location).parent.parent / "indexes"  # the demo's indexes, by namespace
    server = subprocess.Popen(
        [str(exe), "serve", "--port", str(port), "--workers", "2", "--search-root", str(roots)]
    )
    url = f"http://127.0.0.1:{port}"
    try:
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
        for group in ("legal", "eng"):
            secret, _ = tokens.create_token(reg.engine, "demo", "reader", groups=[group])
            hits = RemoteRegistry(url, secret).search("demo/docs-index@production", QUERY, 3)
            seen = ", ".join(f"{h['doc_id']} {h['access_groups']}" for h in hits)
            print(f"{group} reader: search {QUERY!r} -> {seen}")
        card = Path(reg.blob_location).parent / "model-card.txt"
        card.write_text("demo model card: trained on demo/tokens, evaluated on held-out text\n")
        made = RemoteRegistry(url, writer).register("demo/model-card", [card], kind="model")
        sealed = Registry()  # opened after the location was declared: it seals and opens
        raw = sealed.blobs.store.get(sealed.blobs.key(made.files[0].sha256))
        print(
            f"writer: registered {made.ref}; in storage {len(raw)} bytes of AES-GCM for "
            f"{made.files[0].size} bytes of text, plaintext absent: {b'demo model card' not in raw}"
        )
        for r in audit.records(reg.engine)[-6:]:
            print(f"audit {r.seq}: {r.actor} {r.action} {r.target}")
        count, problems = audit.verify(reg.engine)
        print(f"audit verify: {count} records, {problems or 'intact'}")
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
