"""Client-side envelope encryption of blobs: AES-256-GCM with a fresh data key per blob, the
data key wrapped by a key-encryption key from a :class:`KeyProvider`.

Storage (a bucket, a shared filesystem) then only ever holds ciphertext: whoever can read the
objects without the key file learns nothing but sizes, and cannot change a byte, cut a blob
short, reorder its chunks or swap two blobs without the read failing. A blob is sealed in
chunks so that large blobs stream in both directions in bounded memory:

``header`` (:data:`HEADER_SIZE` bytes: magic, key id, chunk size, the wrapped data key) then
``ceil(size / chunk)`` chunks (at least one), each ``AES-GCM(data key, nonce = index,
aad = blob sha256 | index | last)`` with its 16-byte tag. The data key is wrapped with
``AES-GCM(key-encryption key, aad = magic | key id | blob sha256)``, so a header moved onto
another blob does not open. Rotating keys means adding one to the provider and pointing the
location at it: each blob names the key that wrapped it, so older blobs stay readable.

Blobs keep their plaintext sha256 as their name (what makes them content-addressed and
deduplicated): someone who can list the store and already holds a file can confirm it is
there. Sizes are visible too. Both are the usual trade of content-addressed encrypted stores.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import stat
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from datastore.errors import Corrupt, InvalidInput, NotFound

__all__ = [
    "HEADER_SIZE",
    "KeyProvider",
    "KeyUnavailable",
    "LocalKeyFile",
    "Sealer",
    "create_key",
    "default_key_file",
    "sealed_size",
]

MAGIC = b"SYENV01\n"
_KEY_ID_BYTES = 32
_WRAPPED = 12 + 32 + 16  # nonce, data key, tag
HEADER_SIZE = len(MAGIC) + _KEY_ID_BYTES + 4 + _WRAPPED
_TAG = 16
DEFAULT_CHUNK = 4 << 20


class KeyUnavailable(NotFound):
    """The key a blob needs is not available here (no key file, or not that key)."""


def sealed_size(size: int, chunk: int = DEFAULT_CHUNK) -> int:
    """The stored size of a ``size``-byte blob sealed in ``chunk``-byte chunks."""
    return HEADER_SIZE + size + _TAG * max(1, -(-size // chunk))


def default_key_file() -> Path:
    """``SHARDYARD_KEY_FILE``, else ``keys.json`` in the shardyard home."""
    found = os.environ.get("SHARDYARD_KEY_FILE")
    if found:
        return Path(found)
    from registry.registry import default_home

    return default_home() / "keys.json"


class KeyProvider(ABC):
    """Holds key-encryption keys by id and wraps / unwraps data keys with them (a local key
    file here; a KMS or an HSM behind the same three methods)."""

    @abstractmethod
    def wrap(self, key_id: str, data_key: bytes, aad: bytes) -> bytes:
        """``data_key`` encrypted under key ``key_id`` (exactly 60 bytes)."""

    @abstractmethod
    def unwrap(self, key_id: str, wrapped: bytes, aad: bytes) -> bytes:
        """The data key of :meth:`wrap`; Corrupt when it does not open."""

    @abstractmethod
    def describe(self) -> str:
        """Where the keys are, for error messages."""


def _aesgcm(key: bytes) -> Any:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(key)


class LocalKeyFile(KeyProvider):
    """Keys in a JSON file readable only by its owner: ``{"keys": {"<id>": "<base64 of 32
    bytes>"}}``. The embedded default's key provider; made by :func:`create_key`."""

    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path) if path is not None else default_key_file()
        self._keys: dict[str, bytes] | None = None

    def describe(self) -> str:
        return f"key file {self.path}"

    def _load(self) -> dict[str, bytes]:
        if self._keys is not None:
            return self._keys
        try:
            st = self.path.stat()
        except FileNotFoundError:
            raise KeyUnavailable(
                f"no key file at {self.path}: blobs here are encrypted client-side; set "
                "SHARDYARD_KEY_FILE to the key file holding their keys (or create one with "
                "`shardyard registry key create ID`)"
            ) from None
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise InvalidInput(
                f"key file {self.path} is readable by others (mode "
                f"{stat.S_IMODE(st.st_mode):o}): chmod 600 {self.path}"
            )
        try:
            doc = json.loads(self.path.read_text())
            keys = {str(k): base64.b64decode(v, validate=True) for k, v in doc["keys"].items()}
        except (ValueError, KeyError, TypeError, AttributeError):
            raise InvalidInput(
                f'key file {self.path} is not {{"keys": {{id: base64 key}}}}'
            ) from None
        bad = sorted(k for k, v in keys.items() if len(v) != 32)
        if bad:
            raise InvalidInput(f"key file {self.path}: key {bad[0]} is not 32 bytes (AES-256)")
        self._keys = keys
        return keys

    def _key(self, key_id: str) -> bytes:
        keys = self._load()
        if key_id not in keys:  # added since the file was read (a rotation): read it again
            self._keys = None
            keys = self._load()
        if key_id not in keys:
            raise KeyUnavailable(
                f"key {key_id!r} is not in key file {self.path} (it holds "
                f"{', '.join(sorted(keys)) or 'no keys'}): use the key file the data was "
                "written with"
            )
        return keys[key_id]

    def wrap(self, key_id: str, data_key: bytes, aad: bytes) -> bytes:
        nonce = secrets.token_bytes(12)
        return nonce + bytes(_aesgcm(self._key(key_id)).encrypt(nonce, data_key, aad))

    def unwrap(self, key_id: str, wrapped: bytes, aad: bytes) -> bytes:
        from cryptography.exceptions import InvalidTag

        try:
            return bytes(_aesgcm(self._key(key_id)).decrypt(wrapped[:12], wrapped[12:], aad))
        except InvalidTag:
            raise Corrupt(
                f"the data key of this blob does not open with key {key_id!r} of "
                f"{self.describe()}: the blob's header was altered, or the key file holds "
                "another key under that id"
            ) from None


def create_key(path: Path, key_id: str) -> None:
    """Add a fresh random 256-bit key ``key_id`` to the key file at ``path`` (made readable
    by its owner only when new); refuses to replace an existing key (its data would be lost)."""
    check_key_id(key_id)
    doc: dict[str, Any] = {"keys": {}}
    if path.exists():
        try:
            doc = json.loads(path.read_text())
            if not isinstance(doc, dict) or not isinstance(doc.setdefault("keys", {}), dict):
                raise ValueError
        except ValueError:
            raise InvalidInput(
                f'key file {path} is not {{"keys": {{id: base64 key}}}}: fix or move it'
            ) from None
        if key_id in doc["keys"]:
            raise InvalidInput(
                f"key file {path} already holds key {key_id!r}: blobs sealed with it need it; "
                "pick a new id to rotate"
            )
    doc.setdefault("keys", {})[key_id] = base64.b64encode(secrets.token_bytes(32)).decode()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_key_id(key_id: str) -> str:
    """``key_id`` if it can name a key (1-32 ASCII letters, digits, '-', '_', '.')."""
    if (
        not 0 < len(key_id) <= _KEY_ID_BYTES
        or not key_id.isascii()
        or not key_id.replace("-", "").replace("_", "").replace(".", "").isalnum()
    ):
        raise InvalidInput(f"key id {key_id!r}: 1-32 ASCII letters, digits, '-', '_' or '.'")
    return key_id


class Sealer:
    """Seals blobs with key ``key_id`` of ``keys``; opens blobs sealed with any key the
    provider holds."""

    def __init__(self, keys: KeyProvider, key_id: str | None, chunk: int = DEFAULT_CHUNK) -> None:
        if not 0 < chunk < 1 << 31:
            raise InvalidInput(f"chunk size {chunk} is out of range")
        self.keys = keys
        self.key_id = check_key_id(key_id) if key_id is not None else None  # None: open only
        self.chunk = chunk

    def sealed_size(self, size: int) -> int:
        """The stored size of a ``size``-byte blob."""
        return sealed_size(size, self.chunk)

    # -- writing

    def writer(self, sha256: str, sink: Callable[[memoryview | bytes], None]) -> SealWriter:
        """A writer that takes the blob's plaintext in any pieces and hands ``sink`` the sealed
        bytes, header first; :meth:`SealWriter.close` seals the last chunk."""
        if self.key_id is None:
            raise InvalidInput("this sealer only opens blobs: give it a key id to seal")
        data_key = secrets.token_bytes(32)
        kid = self.key_id.encode().ljust(_KEY_ID_BYTES, b"\0")
        wrapped = self.keys.wrap(self.key_id, data_key, MAGIC + kid + bytes.fromhex(sha256))
        sink(MAGIC + kid + self.chunk.to_bytes(4, "big") + wrapped)
        return SealWriter(_aesgcm(data_key), bytes.fromhex(sha256), self.chunk, sink)

    # -- reading

    def _header(self, head: bytes, sha256: str, where: str) -> tuple[Any, int]:
        if len(head) < HEADER_SIZE or head[: len(MAGIC)] != MAGIC:
            raise Corrupt(f"{where} is not a sealed blob (no envelope header)")
        at = len(MAGIC)
        field = head[at : at + _KEY_ID_BYTES]
        raw_id = field.split(b"\0", 1)[0]
        try:
            key_id = check_key_id(raw_id.decode("ascii"))
        except (UnicodeDecodeError, InvalidInput):
            key_id = ""
        if not key_id or field[len(raw_id) :].strip(b"\0"):
            raise Corrupt(f"{where}: its envelope header does not name a valid key id")
        at += _KEY_ID_BYTES
        chunk = int.from_bytes(head[at : at + 4], "big")
        at += 4
        if not 0 < chunk < 1 << 31:
            raise Corrupt(f"{where}: its envelope header names chunk size {chunk}")
        aad = MAGIC + head[len(MAGIC) : len(MAGIC) + _KEY_ID_BYTES] + bytes.fromhex(sha256)
        try:
            data_key = self.keys.unwrap(key_id, head[at : at + _WRAPPED], aad)
        except Corrupt as e:
            raise Corrupt(f"{where}: {e}") from None
        return _aesgcm(data_key), chunk

    def open_stream(
        self,
        sha256: str,
        size: int,
        read: Callable[[int, int], bytes],
        where: str,
        stored: int | None = None,
    ) -> Iterator[memoryview]:
        """The plaintext of the sealed blob read by ``read(offset, length)`` (``stored`` bytes
        long when known), chunk by chunk, each authenticated before it is yielded (Corrupt on
        any change, including bytes added at the end)."""
        from cryptography.exceptions import InvalidTag

        aead, chunk = self._header(read(0, HEADER_SIZE), sha256, where)
        count = max(1, -(-size // chunk))
        expected = HEADER_SIZE + size + _TAG * count
        if stored is not None and stored != expected:
            raise Corrupt(
                f"{where} is {stored:,} bytes, not the {expected:,} of a sealed {size:,}-byte "
                "blob (cut short, extended, or not this blob)"
            )
        name = bytes.fromhex(sha256)
        per_read = max(1, (64 << 20) // (chunk + _TAG))  # chunks per ranged read
        offset = HEADER_SIZE
        for first in range(0, count, per_read):
            n = min(per_read, count - first)
            plain_total = min(size - first * chunk, n * chunk)
            data = memoryview(read(offset, plain_total + n * _TAG))
            offset += plain_total + n * _TAG
            at = 0
            for i in range(first, first + n):
                plain = min(chunk, size - i * chunk)
                piece = data[at : at + plain + _TAG]
                at += plain + _TAG
                aad = name + i.to_bytes(8, "big") + (b"\1" if i == count - 1 else b"\0")
                if len(piece) != plain + _TAG:
                    raise Corrupt(f"{where} is cut short (chunk {i} of {count})")
                try:
                    yield memoryview(aead.decrypt(i.to_bytes(12, "big"), piece, aad))
                except InvalidTag:
                    raise Corrupt(
                        f"{where}: chunk {i} of {count} fails authentication (the stored bytes "
                        "were altered, cut or moved)"
                    ) from None


class SealWriter:
    """Buffers plaintext into chunks and seals each; the last one is marked so that a cut
    blob does not open."""

    def __init__(
        self, aead: Any, name: bytes, chunk: int, sink: Callable[[memoryview | bytes], None]
    ) -> None:
        self._aead = aead
        self._name = name
        self._chunk = chunk
        self._sink = sink
        self._buf = bytearray()
        self._index = 0
        # cryptography >= 45 seals into one reused buffer; older ones allocate per chunk
        self._out = bytearray(chunk + _TAG) if hasattr(aead, "encrypt_into") else None

    def _seal(self, data: bytes | bytearray | memoryview, last: bool) -> None:
        i = self._index
        aad = self._name + i.to_bytes(8, "big") + (b"\1" if last else b"\0")
        nonce = i.to_bytes(12, "big")
        if self._out is not None:
            out = memoryview(self._out)[: len(data) + _TAG]
            self._aead.encrypt_into(nonce, data, aad, out)
            self._sink(out)  # datastore writers copy or write a mutable buffer at once
        else:
            self._sink(self._aead.encrypt(nonce, data, aad))
        self._index += 1

    def write(self, data: bytes | memoryview) -> None:
        """Take the next plaintext bytes. A full chunk is sealed only once more bytes come
        (until then it may be the last); whole chunks are sealed straight from the input, so
        at most one partial chunk per call is copied."""
        view = memoryview(data).cast("B")
        chunk = self._chunk
        while len(view):
            if len(self._buf) == chunk:  # full, and more is coming: not the last
                self._seal(self._buf, False)
                self._buf = bytearray()
            if not self._buf and len(view) > chunk:
                whole = (len(view) - 1) // chunk  # keep the last one back
                for n in range(whole):
                    self._seal(view[n * chunk : (n + 1) * chunk], False)
                view = view[whole * chunk :]
            take = min(chunk - len(self._buf), len(view))
            self._buf += view[:take]
            view = view[take:]

    def close(self) -> None:
        """Seal what is left as the last chunk (an empty blob is one empty chunk)."""
        self._seal(self._buf, True)
        self._buf = bytearray()
