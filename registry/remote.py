"""The registry through its server: :class:`RemoteRegistry` has the same methods and returns
the same :class:`~registry.registry.Version` objects as :class:`~registry.registry.Registry`,
so code and the CLI switch by location (``--registry https://...``) and token
(``--token`` / ``SHARDYARD_TOKEN``).

Files go through the signed URLs the server issues after its role check: registering hashes
the files locally, asks which blobs the server lacks, uploads those (the server checks each
sha256) and then registers; downloading fetches each file and checks its sha256 before it
appears at its destination. The server's JSON errors come back as the same exception types
local mode raises, with the server's message.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from datastore.errors import (
    AlreadyExists,
    Corrupt,
    InvalidInput,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
    ShardyardError,
    Unauthenticated,
    Unreachable,
)
from registry.blobs import sha256_file
from registry.lineage import Direction, Lineage
from registry.policy import Policy
from registry.refs import parse_ref
from registry.registry import Version, _collect, alias_number_at

__all__ = ["RemoteRegistry"]

_ERRORS: dict[str, type[ShardyardError]] = {
    "Unauthenticated": Unauthenticated,
    "PermissionDenied": PermissionDenied,
    "NotFound": NotFound,
    "AlreadyExists": AlreadyExists,
    "Corrupt": Corrupt,
    "InvalidInput": InvalidInput,
    "PreconditionFailed": PreconditionFailed,
}


class RemoteRegistry:
    """A registry server at ``url`` used with API ``token``."""

    def __init__(self, url: str, token: str | None = None, *, timeout: float = 60.0) -> None:
        import httpx

        self.url = url.rstrip("/")
        self.token = token or os.environ.get("SHARDYARD_TOKEN")
        headers = {"authorization": f"Bearer {self.token}"} if self.token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    # -- plumbing ----------------------------------------------------------------------------
    def _call(self, method: str, path: str, **kw: Any) -> Any:
        import httpx

        try:
            resp = self._http.request(method, path, **kw)
        except httpx.HTTPError as err:
            raise Unreachable(f"registry server {self.url} does not answer: {err}") from None
        return _result(resp, f"{method} {path}")

    def __enter__(self) -> RemoteRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- reads -------------------------------------------------------------------------------
    def resolve(self, ref: str) -> Version:
        return Version.from_dict(self._call("GET", f"/v1/versions/{ref}"))

    def resolve_many(self, refs: Sequence[str]) -> list[Version]:
        """Every ref resolved in one snapshot (never half of a release)."""
        rows = self._call("POST", "/v1/resolve", json={"refs": list(refs)})
        return [Version.from_dict(d) for d in rows]

    def versions(self, name: str, limit: int | None = None) -> list[Version]:
        params: dict[str, Any] = {"name": name}
        if limit is not None:
            params["limit"] = limit
        return [Version.from_dict(d) for d in self._call("GET", "/v1/versions", params=params)]

    def artifacts(self, namespace: str | None = None) -> list[dict[str, Any]]:
        params = {"namespace": namespace} if namespace is not None else {}
        return list(self._call("GET", "/v1/artifacts", params=params))

    def find(
        self,
        *,
        tags: Mapping[str, str] | None = None,
        name: str | None = None,
        kind: str | None = None,
        sha256: str | None = None,
        dataset: tuple[str, int] | None = None,
        limit: int | None = None,
    ) -> list[Version]:
        params: dict[str, Any] = {"tag": [f"{k}={v}" for k, v in (tags or {}).items()]}
        for key, value in (("name", name), ("kind", kind), ("sha256", sha256), ("limit", limit)):
            if value is not None:
                params[key] = value
        if dataset is not None:
            params["dataset_uri"], params["dataset_version"] = dataset[0], int(dataset[1])
        return [Version.from_dict(d) for d in self._call("GET", "/v1/find", params=params)]

    def alias_history(self, name: str, alias: str) -> list[dict[str, Any]]:
        return list(self._call("GET", "/v1/alias-history", params={"name": name, "alias": alias}))

    def alias_at(self, name: str, alias: str, when: float) -> Version | None:
        """The version ``alias`` pointed at, at UNIX time ``when`` (None: not set then)."""
        number = alias_number_at(self.alias_history(name, alias), when)
        return None if number is None else self.resolve(str(parse_ref(name).at(number)))

    def lineage(
        self, ref: str, direction: Direction = "upstream", depth: int | None = None
    ) -> Lineage:
        """What ``ref`` was made from or what was made from it; versions of namespaces the
        token may not read appear as ``(hidden)``."""
        params: dict[str, Any] = {"ref": ref, "direction": direction}
        if depth is not None:
            params["depth"] = depth
        return Lineage.from_dict(self._call("GET", "/v1/lineage", params=params))

    def deployable(self, name: str, policy: Policy | None = None) -> list[dict[str, Any]]:
        policy = policy or Policy()
        params: dict[str, Any] = {
            "name": name,
            "metric": [str(c) for c in policy.conditions],
            "upstream_tag": [f"{k}={v}" for k, v in policy.upstream_tags.items()],
        }
        if policy.alias is not None:
            params["alias"] = policy.alias
        rows = self._call("GET", "/v1/deployable", params=params)
        return [{**r, "version": Version.from_dict(r["version"])} for r in rows]

    def search(
        self,
        ref: str,
        query: str | Sequence[float],
        k: int = 10,
        *,
        mode: str = "vector",
        where: str | None = None,
    ) -> list[dict[str, Any]]:
        """The ``k`` best hits of ``query`` (text, or a vector) in registered index ``ref``,
        among what this token's access groups may read (the server decides them)."""
        body: dict[str, Any] = {"ref": ref, "k": k, "mode": mode, "where": where}
        if isinstance(query, str):
            body["query"] = query
        else:
            body["vector"] = [float(x) for x in query]
        return list(self._call("POST", "/v1/search", json=body)["hits"])

    # -- writes ------------------------------------------------------------------------------
    def register(
        self,
        name: str,
        paths: Iterable[str | os.PathLike[str]] = (),
        *,
        kind: str,
        tags: Mapping[str, str] | None = None,
        metrics: Mapping[str, float] | None = None,
        metadata: Mapping[str, Any] | None = None,
        parents: Iterable[str] = (),
        dataset: tuple[str, int] | None = None,
    ) -> Version:
        paths = list(paths)
        parents = list(parents)
        sources = _collect(paths) if paths else []
        hashed = [(inside, path, *sha256_file(path)) for inside, path in sources]
        wanted = [{"path": i, "sha256": sha, "size": size} for i, _, sha, size in hashed]
        if hashed:
            urls = self._call(
                "POST",
                "/v1/uploads",
                json={"name": name, "files": wanted, "parents": list(parents)},
            )
            for _, path, sha, _ in hashed:
                url = urls["upload"].get(sha)
                if url is not None:
                    self._upload(url, path, sha)
        body: dict[str, Any] = {
            "name": name,
            "kind": kind,
            "files": wanted,
            "tags": dict(tags or {}),
            "metrics": {k: float(v) for k, v in (metrics or {}).items()},
            "metadata": dict(metadata or {}),
            "parents": list(parents),
        }
        if dataset is not None:
            body["dataset_uri"], body["dataset_version"] = dataset[0], int(dataset[1])
        return Version.from_dict(self._call("POST", "/v1/versions", json=body))

    def _upload(self, url: str, source: Path, sha: str) -> None:
        import httpx

        def chunks() -> Iterable[bytes]:
            h = hashlib.sha256()
            with open(source, "rb") as f:
                while chunk := f.read(8 << 20):
                    h.update(chunk)
                    yield chunk
            if h.hexdigest() != sha:
                raise InvalidInput(f"{source} changed while it was uploaded; register it again")

        try:
            resp = httpx.put(url, content=chunks(), timeout=None)
        except httpx.HTTPError as err:
            raise Unreachable(f"upload of {source} to {self.url} failed: {err}") from None
        _result(resp, f"upload of {source}")

    def set_alias(self, ref: str, alias: str) -> Version:
        return Version.from_dict(
            self._call("POST", "/v1/aliases", json={"ref": ref, "alias": alias})
        )

    def release(self, refs: Sequence[str], alias: str) -> list[Version]:
        rows = self._call("POST", "/v1/releases", json={"refs": list(refs), "alias": alias})
        return [Version.from_dict(d) for d in rows]

    def link(self, parent: str, child: str, relation: str = "derived") -> None:
        body = {"parent": parent, "child": child, "relation": relation}
        self._call("POST", "/v1/links", json=body)

    def revoke(self, ref: str, reason: str = "") -> Version:
        body = {"ref": ref, "reason": reason}
        return Version.from_dict(self._call("POST", "/v1/revoke", json=body))

    def hold(self, ref: str, reason: str, *, whole_artifact: bool = False) -> int:
        body = {"ref": ref, "reason": reason, "whole_artifact": whole_artifact}
        return int(self._call("POST", "/v1/holds", json=body)["hold"])

    def holds(self, name: str) -> list[dict[str, Any]]:
        return list(self._call("GET", "/v1/holds", params={"name": name}))

    def release_hold(self, hold_id: int, name: str | None = None) -> None:
        if name is None:
            raise InvalidInput(f"releasing hold {hold_id} through a server needs its artifact name")
        self._call("DELETE", f"/v1/holds/{hold_id}", params={"name": name})

    def declassify(self, ref: str, ancestor: str, reason: str) -> None:
        body = {"ref": ref, "ancestor": ancestor, "reason": reason}
        self._call("POST", "/v1/declassify", json=body)

    def delete(self, ref: str, reason: str) -> Version:
        body = {"ref": ref, "reason": reason}
        return Version.from_dict(self._call("POST", "/v1/delete", json=body))

    def download(self, ref: str, dest: str | os.PathLike[str]) -> Path:
        return self.fetch(ref, dest)[1]

    def fetch(self, ref: str, dest: str | os.PathLike[str]) -> tuple[Version, Path]:
        """The files of ``ref`` under ``dest``, each checked against its sha256."""
        import httpx

        doc = self._call("GET", f"/v1/downloads/{ref}")
        root = Path(dest)
        for f in doc["files"]:
            target = (root / f["path"]).resolve()
            if root.resolve() not in target.parents:
                raise InvalidInput(f"file path {f['path']!r} escapes {root}")
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
            h = hashlib.sha256()
            try:
                try:
                    with (
                        os.fdopen(fd, "wb") as out,
                        httpx.stream("GET", f["url"], timeout=None) as r,
                    ):
                        if r.status_code != 200:
                            r.read()
                            _result(r, f"download of {f['path']}")
                        for chunk in r.iter_bytes(8 << 20):
                            h.update(chunk)
                            out.write(chunk)
                except httpx.HTTPError as err:  # e.g. the server stopped mid-body: a bad chunk
                    raise Unreachable(
                        f"download of {f['path']} of {ref} broke off ({type(err).__name__}: "
                        f"{err}); nothing was written to {target}"
                    ) from None
                if h.hexdigest() != f["sha256"]:
                    raise Corrupt(
                        f"{f['path']} of {ref} does not match its checksum (it arrived with "
                        f"sha256 {h.hexdigest()}, not {f['sha256']})"
                    )
                os.replace(tmp, target)
            finally:
                Path(tmp).unlink(missing_ok=True)
        return Version.from_dict(doc["version"]), root

    # -- tokens and audit (admin) ------------------------------------------------------------
    def create_token(
        self,
        namespace: str,
        role: str,
        expires_in: float | None = None,
        note: str = "",
        groups: Sequence[str] = (),
    ) -> dict[str, Any]:
        body = {
            "namespace": namespace,
            "role": role,
            "expires_in": expires_in,
            "note": note,
            "groups": list(groups),
        }
        return dict(self._call("POST", "/v1/tokens", json=body))

    def revoke_token(self, token_id: str) -> dict[str, Any]:
        return dict(self._call("DELETE", f"/v1/tokens/{token_id}"))

    def audit(self, **filters: Any) -> list[dict[str, Any]]:
        params = {k: v for k, v in filters.items() if v is not None}
        return list(self._call("GET", "/v1/audit", params=params))


def _result(resp: Any, what: str) -> Any:
    """The response's JSON, or the server's error as our exception type."""
    if resp.status_code < 400:
        return resp.json()
    try:
        doc = resp.json()
        kind, message = doc.get("error", ""), doc.get("message", "")
    except ValueError:
        kind, message = "", resp.text[:200]
    if resp.status_code == 413:
        raise InvalidInput(f"{what}: {message or 'request too large'}")
    if resp.status_code == 422 and not kind:  # FastAPI's own validation errors
        raise InvalidInput(f"{what}: the server refused the request ({message or resp.text[:200]})")
    error = _ERRORS.get(kind)
    if error is None:
        raise ShardyardError(f"{what}: server error {resp.status_code}: {message}")
    raise error(message)
