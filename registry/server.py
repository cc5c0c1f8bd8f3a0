"""The registry as an HTTP service (``shardyard serve``): FastAPI over the SQL metadata store,
every endpoint behind an API token (:mod:`registry.tokens`) and its namespace role.

Blobs never travel with a bearer token: after the role check the server hands out short-lived
signed URLs (HMAC over method, blob, size and expiry with a key of this server process), to an
S3 presigned GET when the blob store is ``s3://`` and to its own ``/v1/blobs`` endpoint
otherwise; an upload URL is for one blob of one size, and the server checks the sha256 while it
stores it. Clients therefore need no bucket credentials. Every change, upload, download and
token operation is written to the audit trail with the token as actor (reads of versions'
metadata are not).

Errors are JSON ``{"error": KIND, "message": ...}`` with 400 (bad input), 401 (no, unknown,
expired or revoked token), 403 (role or namespace), 404, 409, 413 (request too large) and 422
(checksum mismatch); the OpenAPI description is at ``/openapi.json``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, StreamingResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from datastore.errors import (
    AlreadyExists,
    Corrupt,
    InvalidInput,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
    ShardyardError,
    Unauthenticated,
)
from registry import audit, tokens
from registry.blobs import Staged
from registry.envelope import KeyUnavailable
from registry.policy import Policy, parse_condition
from registry.refs import parse_pairs, parse_ref
from registry.registry import Registry
from registry.residency import check_residency

__all__ = ["create_app"]

MAX_JSON = 1 << 20  # bytes of a JSON request
_STATUS: list[tuple[type[Exception], int]] = [
    (Unauthenticated, 401),
    (PermissionDenied, 403),
    (NotFound, 404),
    (AlreadyExists, 409),
    (PreconditionFailed, 409),
    (Corrupt, 422),
    (InvalidInput, 400),
]


class FileIn(BaseModel):
    path: str = Field(max_length=1024)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)


class RegisterIn(BaseModel):
    name: str = Field(max_length=700)
    kind: str = Field(max_length=32)
    files: list[FileIn] = Field(default_factory=list, max_length=100_000)
    dataset_uri: str | None = Field(default=None, max_length=4096)
    dataset_version: int | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)
    parents: list[str] = Field(default_factory=list, max_length=1000)


class UploadIn(BaseModel):
    name: str = Field(max_length=700)
    files: list[FileIn] = Field(max_length=100_000)
    parents: list[str] = Field(default=[], max_length=1000)  # residency follows lineage


class AliasIn(BaseModel):
    ref: str = Field(max_length=800)
    alias: str = Field(max_length=64)


class ReleaseIn(BaseModel):
    refs: list[str] = Field(max_length=1000)
    alias: str = Field(max_length=64)


class ResolveIn(BaseModel):
    refs: list[str] = Field(max_length=1000)


class RevokeIn(BaseModel):
    ref: str = Field(max_length=800)
    reason: str = Field(default="", max_length=4096)


class LinkIn(BaseModel):
    parent: str = Field(max_length=800)
    child: str = Field(max_length=800)
    relation: str = Field(default="derived", max_length=64)


class HoldIn(BaseModel):
    ref: str = Field(max_length=800)
    reason: str = Field(max_length=4096)
    whole_artifact: bool = False


class DeleteIn(BaseModel):
    ref: str = Field(max_length=800)
    reason: str = Field(max_length=4096)


class DeclassifyIn(BaseModel):
    ref: str = Field(max_length=800)
    ancestor: str = Field(max_length=800)
    reason: str = Field(max_length=4096)


class SearchIn(BaseModel):
    ref: str = Field(max_length=800)
    query: str | None = Field(default=None, max_length=20_000)
    vector: list[float] | None = Field(default=None, max_length=8192)
    k: int = Field(default=10, ge=1, le=1000)
    mode: str = Field(default="vector", pattern="^(vector|text|hybrid)$")
    where: str | None = Field(default=None, max_length=2000)


class TokenIn(BaseModel):
    namespace: str = Field(max_length=512)
    role: str = Field(max_length=16)
    expires_in: float | None = None
    note: str = Field(default="", max_length=1024)
    groups: list[str] = Field(default=[], max_length=256)


def create_app(
    registry: Registry,
    *,
    url_ttl: float = 300.0,
    max_upload: int = 64 << 30,
    signing_key: bytes | None = None,
    storage: Any = None,
    search_roots: Sequence[str] = (),
) -> FastAPI:
    """The app serving ``registry``; signed blob URLs live ``url_ttl`` seconds; ``storage``:
    the StorageConfig searches open indexes with (S3 tables). ``search_roots``: where the
    indexes this server may search live, one directory per namespace (an index of namespace
    ``team/nlp`` is searched only if its table is under ``<root>/team/nlp/``): the server opens
    tables with its own credentials, so a writer must not be able to point an index at another
    team's table."""
    roots = [_canonical_prefix(r) for r in search_roots]
    key = signing_key or _signing_key() or secrets.token_bytes(32)
    app = FastAPI(
        title="Shardyard registry",
        version="1",
        description="Versioned datasets, checkpoints, models and indexes with lineage.",
    )

    # A principal may register a version holding a blob only if it proved it holds the bytes
    # (uploaded them through a URL issued to it: the audit trail's "upload" record, which every
    # worker process sees) or may read a version holding the blob. A bare hash is not enough
    # (it would let a writer attach, and then download, another namespace's files).

    def sign(method: str, sha: str, size: int, exp: int, actor: str) -> str:
        msg = f"{method}\n{sha}\n{size}\n{exp}\n{actor}".encode()
        return hmac.new(key, msg, hashlib.sha256).hexdigest()

    def blob_url(request: Request, method: str, sha: str, size: int, actor: str) -> str:
        exp = int(time.time() + url_ttl)
        base = str(request.base_url).rstrip("/")
        sig = sign(method, sha, size, exp, actor)
        return f"{base}/v1/blobs/{sha}?size={size}&exp={exp}&a={actor}&sig={sig}"

    def check_signature(method: str, sha: str, size: int, exp: int, actor: str, sig: str) -> None:
        if not hmac.compare_digest(sign(method, sha, size, exp, actor).encode(), sig.encode()):
            raise PermissionDenied("the blob URL's signature is not valid")
        if exp < time.time():
            raise PermissionDenied("the blob URL has expired: ask for a new one")

    def may_use_blob(who: tokens.Principal, sha: str) -> bool:
        if audit.exists(registry.engine, who.actor, "upload", f"blob:{sha}"):
            return True
        return bool(visible(who, registry.find(sha256=sha, limit=50)))

    @app.exception_handler(ShardyardError)
    async def _errors(_: Request, err: ShardyardError) -> JSONResponse:
        status = next((code for kind, code in _STATUS if isinstance(err, kind)), 500)
        return JSONResponse({"error": type(err).__name__, "message": str(err)}, status)

    app.add_middleware(_BodyLimit, max_upload=max_upload)

    async def principal(request: Request) -> tokens.Principal:
        # on the event loop: one indexed lookup costs less than a hop to the thread pool
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        token = value.strip() if scheme.lower() == "bearer" else None
        return tokens.authenticate(registry.engine, token)

    Auth = Depends(principal)

    def ns(ref: str) -> str:
        return parse_ref(ref).namespace

    def as_(who: tokens.Principal) -> Registry:
        return registry.acting_as(who.actor)

    def inherited(who: tokens.Principal, ref: str) -> None:
        """PermissionDenied unless ``who`` may read every restricted ancestor of ``ref``."""
        for anc in registry.restrictions(ref):
            if not who.can(ns(anc), "reader"):
                raise PermissionDenied(
                    f"{ref} derives from restricted {anc}, which {who.actor} may not read"
                )

    def guard(who: tokens.Principal, ref: str, role: str) -> None:
        """``role`` in ``ref``'s namespace and the right to read its restricted ancestors:
        what every endpoint that names a version checks."""
        who.require(ns(ref), role)
        inherited(who, ref)

    def visible(
        who: tokens.Principal, versions: Iterable[Any], restricted: bool | None = None
    ) -> list[Any]:
        """The ``versions`` ``who`` may read. Whether any version is restricted is probed
        once for the whole list (``restricted``: already known), not once per version."""
        if restricted is None:
            restricted = registry.any_restricted()
        out = []
        for v in versions:
            ref = str(v.ref)
            if not who.can(ns(ref), "reader"):
                continue
            if restricted:
                try:
                    inherited(who, ref)
                except PermissionDenied:
                    continue
            out.append(v)
        return out

    @app.get("/v1/health")
    def health() -> dict[str, Any]:
        return {"ok": True, "registry": registry.id, "worker": os.getpid()}

    @app.get("/v1/versions/{ref:path}", response_model=None)
    async def resolve(ref: str, who: tokens.Principal = Auth) -> Response:
        # on the event loop: two indexed statements, cheaper than the hop to a thread; a
        # lineage walk (restricted versions exist) goes to the thread pool
        def body() -> Response:
            inherited(who, ref)
            return _json(registry.resolve(ref).to_dict())

        who.require(ns(ref), "reader")
        if registry.any_restricted():
            return await run_in_threadpool(body)
        return _json(registry.resolve(ref).to_dict())

    @app.post("/v1/resolve")
    def resolve_many(body: ResolveIn, who: tokens.Principal = Auth) -> list[dict[str, Any]]:
        """Several references resolved in one snapshot (a release is seen whole or not)."""
        for ref in body.refs:
            who.require(ns(ref), "reader")
        found = registry.resolve_many(body.refs)
        for v in found:
            guard(who, str(v.ref), "reader")
        return [v.to_dict() for v in found]

    @app.get("/v1/versions", response_model=None)
    async def versions(
        name: str = Query(max_length=700),
        limit: int | None = Query(default=None, ge=0, le=100_000),
        who: tokens.Principal = Auth,
    ) -> Response:
        who.require(ns(name), "reader")

        def listing(restricted: bool | None = None) -> Response:
            found = visible(who, registry.versions(name, limit), restricted)
            return _json([v.to_dict() for v in found])

        small = limit is not None and limit <= 100
        if small and not registry.any_restricted():  # small pages on the loop, else a thread
            return listing(restricted=False)
        return await run_in_threadpool(listing)

    @app.get("/v1/artifacts")
    def artifacts(
        namespace: str | None = Query(default=None, max_length=512),
        who: tokens.Principal = Auth,
    ) -> list[dict[str, Any]]:
        return [a for a in registry.artifacts(namespace) if who.can(a["namespace"], "reader")]

    @app.get("/v1/find")
    def find(
        tag: list[str] = Query(default=[]),
        name: str | None = Query(default=None, max_length=700),
        kind: str | None = Query(default=None, max_length=32),
        sha256: str | None = Query(default=None, pattern=r"^[0-9a-f]{64}$"),
        dataset_uri: str | None = Query(default=None, max_length=2048),
        dataset_version: int | None = Query(default=None, ge=0),
        limit: int | None = Query(default=None, ge=1, le=100_000),
        who: tokens.Principal = Auth,
    ) -> list[dict[str, Any]]:
        pairs = parse_pairs(tag, "tag")
        if name is not None:
            who.require(ns(name), "reader")
        dataset = None
        if dataset_uri is not None and dataset_version is not None:
            dataset = (dataset_uri, dataset_version)
        elif dataset_uri is not None or dataset_version is not None:
            raise InvalidInput("dataset_uri and dataset_version go together")
        found = registry.find(
            tags=pairs, name=name, kind=kind, sha256=sha256, dataset=dataset, limit=limit
        )
        return [v.to_dict() for v in visible(who, found)]

    @app.get("/v1/alias-history")
    def alias_history(
        name: str = Query(max_length=700),
        alias: str = Query(max_length=64),
        who: tokens.Principal = Auth,
    ) -> list[dict[str, Any]]:
        who.require(ns(name), "reader")
        return registry.alias_history(name, alias)

    @app.get("/v1/lineage")
    def lineage(
        ref: str = Query(max_length=800),
        direction: str = Query(default="upstream", pattern="^(upstream|downstream)$"),
        depth: int | None = Query(default=None, ge=1, le=1000),
        who: tokens.Principal = Auth,
    ) -> dict[str, Any]:
        guard(who, ref, "reader")
        doc = registry.lineage(ref, direction, depth).to_dict()  # type: ignore[arg-type]
        hidden = {n["ref"] for n in doc["nodes"] if not who.can(ns(n["ref"]), "reader")}
        for n in doc["nodes"]:
            if n["ref"] in hidden:  # another namespace's version: that it exists, nothing more
                n.update(ref="(hidden)", tags={}, kind="hidden")
        for e in doc["edges"]:
            e["parent"] = "(hidden)" if e["parent"] in hidden else e["parent"]
            e["child"] = "(hidden)" if e["child"] in hidden else e["child"]
        return doc

    @app.get("/v1/deployable", response_model=None)
    def deployable(
        name: str = Query(max_length=700),
        alias: str | None = Query(default=None, max_length=64),
        metric: list[str] = Query(default=[]),
        upstream_tag: list[str] = Query(default=[]),
        who: tokens.Principal = Auth,
    ) -> Response:
        who.require(ns(name), "reader")
        policy = Policy(
            alias=alias,
            conditions=tuple(parse_condition(m) for m in metric),
            upstream_tags=parse_pairs(upstream_tag, "upstream tag"),
        )
        rows = registry.deployable(name, policy)
        shown = {id(v) for v in visible(who, [r["version"] for r in rows])}
        return _json(
            [{**r, "version": r["version"].to_dict()} for r in rows if id(r["version"]) in shown]
        )

    @app.post("/v1/uploads")
    def uploads(body: UploadIn, request: Request, who: tokens.Principal = Auth) -> dict[str, Any]:
        """Signed upload URLs for the blobs of a coming registration the store lacks."""
        who.require(ns(body.name), "writer")
        for parent in body.parents:
            guard(who, parent, "reader")
        with registry.engine.connect() as conn:  # before any byte is sent where it may not be
            check_residency(
                conn,
                ns(body.name),
                [("blob store", registry.blob_location)],
                lambda: [registry.resolve(p).id for p in body.parents],
            )
            registry.refresh_storage(conn)  # uploads follow the location as it is now
        urls = {}
        for f in body.files:
            if f.size > max_upload:
                raise InvalidInput(f"{f.path}: {f.size:,} bytes is over {max_upload:,}")
            if not (registry.blobs.has(f.sha256, f.size) and may_use_blob(who, f.sha256)):
                urls[f.sha256] = blob_url(request, "PUT", f.sha256, f.size, who.actor)
        return {"upload": urls}

    @app.put("/v1/blobs/{sha}")
    async def put_blob(
        sha: str,
        request: Request,
        size: int,
        exp: int,
        a: str = Query(max_length=64),
        sig: str = Query(max_length=64),
    ) -> dict[str, Any]:
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise InvalidInput("a blob name is a sha256 in hex")
        check_signature("PUT", sha, size, exp, a, sig)
        known = await run_in_threadpool(registry.blobs.has, sha, size)
        # a plain local store: staged next to the blobs, published by rename; otherwise
        # (S3, or a sealed store: no plaintext on this server's disk) streamed into the store
        local = not known and registry.blobs.is_local
        dest = registry.blobs.staging_file() if local else None
        out = None
        if not known and not local:
            out = await run_in_threadpool(registry.blobs.writer, sha)
        h = hashlib.sha256()
        got = 0
        f = await run_in_threadpool(open, dest, "wb") if dest is not None else None
        try:
            async for chunk in request.stream():  # hashed even when stored: proof of holding it
                got += len(chunk)
                if got > size:
                    raise InvalidInput(f"the upload is longer than the {size:,} bytes signed")
                h.update(chunk)
                if f is not None:
                    await run_in_threadpool(f.write, chunk)
                elif out is not None:
                    await run_in_threadpool(out.write, chunk)
            if f is not None:
                await run_in_threadpool(_close_synced, f)
                f = None
            if got != size or h.hexdigest() != sha:
                raise Corrupt(
                    f"the upload ({got:,} bytes, sha256 {h.hexdigest()}) is not blob {sha} "
                    f"({size:,} bytes)"
                )
            stored = False
            if out is not None:
                await run_in_threadpool(out.commit)
                out, stored = None, True
            if dest is not None:
                staged = Staged("upload", sha, size, dest, owned=True)
                stored = await run_in_threadpool(registry.blobs.put_staged, staged)
            await run_in_threadpool(
                registry.acting_as(a).record, "upload", f"blob:{sha}", {"size": size}
            )
        finally:
            if f is not None:
                f.close()
            if dest is not None:
                dest.unlink(missing_ok=True)
            if out is not None:
                out.abort()
        return {"stored": stored}

    @app.get("/v1/blobs/{sha}", response_model=None)
    def get_blob(
        sha: str,
        size: int,
        exp: int,
        a: str = Query(max_length=64),
        sig: str = Query(max_length=64),
    ) -> FileResponse | RedirectResponse | StreamingResponse:
        check_signature("GET", sha, size, exp, a, sig)
        path = registry.blobs.local_path(sha)
        if path is not None:
            if not path.is_file():
                raise NotFound(f"blob {sha} is not in this server's store")
            return FileResponse(path, media_type="application/octet-stream")
        # sealed (or remote): opened here, chunk by chunk; the client checks the sha256
        pieces = registry.blobs.pieces(sha, size)
        try:
            first = next(pieces)  # a missing or damaged blob fails here, as an error response
        except KeyUnavailable:  # the server's key file is its operator's business, not the client's
            raise NotFound(
                f"blob {sha} is sealed with a key this server does not hold: ask its operator"
            ) from None
        return StreamingResponse(
            _chain(first, pieces),
            media_type="application/octet-stream",
            headers={"Content-Length": str(size)},
        )

    @app.post("/v1/versions")
    def register(body: RegisterIn, who: tokens.Principal = Auth) -> dict[str, Any]:
        who.require(ns(body.name), "writer")
        for parent in body.parents:
            guard(who, parent, "reader")
        dataset = None
        if body.dataset_uri is not None:
            if body.dataset_version is None:
                raise InvalidInput("dataset_uri needs dataset_version")
            dataset = (body.dataset_uri, body.dataset_version)
        for f in body.files:
            if not may_use_blob(who, f.sha256):
                raise PermissionDenied(
                    f"{f.path}: blob {f.sha256} is neither one {who.actor} uploaded nor one it "
                    "may read: upload it (POST /v1/uploads)"
                )
        staged = [Staged(f.path, f.sha256, f.size) for f in body.files]
        v = as_(who).register(
            body.name,
            kind=body.kind,
            tags=body.tags,
            metrics=body.metrics,
            metadata=body.metadata,
            parents=body.parents,
            dataset=dataset,
            staged=staged,
        )
        return v.to_dict()

    @app.post("/v1/aliases")
    def set_alias(body: AliasIn, who: tokens.Principal = Auth) -> dict[str, Any]:
        guard(who, body.ref, "writer")
        return as_(who).set_alias(body.ref, body.alias).to_dict()

    @app.post("/v1/releases")
    def release(body: ReleaseIn, who: tokens.Principal = Auth) -> list[dict[str, Any]]:
        for ref in body.refs:
            guard(who, ref, "writer")
        return [v.to_dict() for v in as_(who).release(body.refs, body.alias)]

    @app.post("/v1/links")
    def link(body: LinkIn, who: tokens.Principal = Auth) -> dict[str, Any]:
        who.require(ns(body.child), "writer")
        who.require(ns(body.parent), "reader")
        as_(who).link(body.parent, body.child, body.relation)
        return {"ok": True}

    @app.post("/v1/revoke")
    def revoke(body: RevokeIn, who: tokens.Principal = Auth) -> dict[str, Any]:
        guard(who, body.ref, "admin")
        return as_(who).revoke(body.ref, body.reason).to_dict()

    @app.post("/v1/holds")
    def hold(body: HoldIn, who: tokens.Principal = Auth) -> dict[str, Any]:
        who.require(ns(body.ref), "admin")
        hid = as_(who).hold(body.ref, body.reason, whole_artifact=body.whole_artifact)
        return {"hold": hid}

    @app.get("/v1/holds")
    def holds(name: str = Query(max_length=700), who: tokens.Principal = Auth) -> list[Any]:
        who.require(ns(name), "admin")
        return registry.holds(name)

    @app.delete("/v1/holds/{hold_id}")
    def release_hold(
        hold_id: int, name: str = Query(max_length=700), who: tokens.Principal = Auth
    ) -> dict[str, Any]:
        who.require(ns(name), "admin")
        as_(who).release_hold(hold_id, name)
        return {"released": hold_id}

    @app.post("/v1/declassify")
    def declassify(body: DeclassifyIn, who: tokens.Principal = Auth) -> dict[str, Any]:
        who.require(ns(body.ref), "admin")
        who.require(ns(body.ancestor), "admin")  # the ancestor's owner decides
        as_(who).declassify(body.ref, body.ancestor, body.reason)
        return {"ok": True}

    @app.post("/v1/delete")
    def delete_version(body: DeleteIn, who: tokens.Principal = Auth) -> dict[str, Any]:
        guard(who, body.ref, "admin")
        return as_(who).delete(body.ref, body.reason).to_dict()

    @app.get("/v1/downloads/{ref:path}")
    def downloads(ref: str, request: Request, who: tokens.Principal = Auth) -> dict[str, Any]:
        """Signed URLs of a version's files (audited as a download)."""
        guard(who, ref, "reader")
        version = registry.resolve(ref)
        if version.revoked_at is not None:
            raise InvalidInput(f"{version.ref} is revoked: it is kept for audit, not for use")
        files = []
        for f in version.files:
            if registry.blobs.is_local or registry.blobs.sealer is not None:  # we serve them
                url = blob_url(request, "GET", f.sha256, f.size, who.actor)
            else:
                url = registry.blobs.store.presign(  # type: ignore[attr-defined]
                    registry.blobs.key(f.sha256), int(url_ttl)
                )
            files.append({"path": f.path, "sha256": f.sha256, "size": f.size, "url": url})
        as_(who).record("download", str(version.ref), {"files": len(files)})
        return {"version": version.to_dict(), "files": files}

    def check_search_root(version: Any) -> None:
        if not roots:
            raise InvalidInput(
                "this server searches no indexes: start it with --search-root URI (indexes of "
                "namespace NS under URI/NS/)"
            )
        if version.dataset_uri is None:
            return  # not an index: the searcher lookup refuses it
        where = _canonical_prefix(version.dataset_uri)
        home = [r + version.ref.namespace + "/" for r in roots]
        if not any(where.startswith(h) for h in home):
            raise PermissionDenied(
                f"{version.ref}'s table {version.dataset_uri} is not under its namespace's "
                f"directory in this server's search roots ({', '.join(home)})"
            )

    @app.post("/v1/search")
    def search(body: SearchIn, who: tokens.Principal = Auth) -> dict[str, Any]:
        """Search a registered index as the token's principal: only what the access groups
        recorded on the token may read (a client cannot name other groups). Audited."""
        from registry.search import load_searcher

        guard(who, body.ref, "reader")
        version = registry.resolve(body.ref)
        searcher = load_searcher(version.kind, str(version.ref))
        check_search_root(version)
        if (body.query is None) == (body.vector is None):
            raise InvalidInput("a search takes a query text or a query vector (one of them)")
        query: str | list[float] = body.query if body.query is not None else body.vector or []
        hits = searcher.search(
            version,
            query,
            body.k,
            mode=body.mode,
            groups=who.groups,
            where=body.where,
            storage=storage,
        )
        asked = body.query if body.query is not None else repr(body.vector)
        as_(who).record(
            "search",
            str(version.ref),
            {
                "mode": body.mode,
                "k": body.k,
                "hits": len(hits),
                "groups": list(who.groups),
                "query_sha256": hashlib.sha256(asked.encode()).hexdigest(),
                "where": body.where,
            },
        )
        return {"version": version.to_dict(), "hits": hits}

    @app.post("/v1/tokens")
    def create_token(body: TokenIn, who: tokens.Principal = Auth) -> dict[str, Any]:
        secret, info = tokens.create_token(
            registry.engine,
            body.namespace,
            body.role,
            expires_in=body.expires_in,
            by=who,
            note=body.note,
            groups=body.groups,
        )
        return {"token": secret, **info.to_dict()}

    @app.get("/v1/tokens")
    def list_tokens(who: tokens.Principal = Auth) -> list[dict[str, Any]]:
        return [i.to_dict() for i in tokens.list_tokens(registry.engine, by=who)]

    @app.delete("/v1/tokens/{token_id}")
    def revoke_token(token_id: str, who: tokens.Principal = Auth) -> dict[str, Any]:
        return tokens.revoke_token(registry.engine, token_id, by=who).to_dict()

    @app.get("/v1/audit")
    def audit_log(
        since: float | None = None,
        actor: str | None = Query(default=None, max_length=256),
        artifact: str | None = Query(default=None, max_length=800),
        action: str | None = Query(default=None, max_length=64),
        limit: int | None = Query(default=1000, ge=1, le=100_000),
        who: tokens.Principal = Auth,
    ) -> list[dict[str, Any]]:
        who.require("" if who.namespace == "*" else who.namespace, "admin")
        found = audit.records(
            registry.engine, since=since, actor=actor, target=artifact, action=action, limit=limit
        )
        return [r.to_dict() for r in found if _visible(who, r)]

    @app.get("/v1/audit/verify")
    def audit_verify(who: tokens.Principal = Auth) -> dict[str, Any]:
        who.require("", "admin")  # the whole chain: a token for every namespace
        count, problems = audit.verify(registry.engine)
        return {"records": count, "ok": not problems, "problems": [str(p) for p in problems]}

    return app


_REF_ACTIONS = {
    "register",
    "alias",
    "release",
    "link",
    "revoke",
    "download",
    "delete",
    "hold",
    "declassify",
}


def _visible(who: tokens.Principal, record: Any) -> bool:
    """Whether an audit record concerns the principal's namespaces (records about tokens,
    blobs, locations, residency and hold releases: only for a token of every namespace)."""
    if who.namespace == "*":
        return True
    if record.action not in _REF_ACTIONS:
        return False
    try:
        return who.covers(parse_ref(record.target).namespace)
    except ShardyardError:
        return False


def _close_synced(f: Any) -> None:
    f.flush()
    os.fsync(f.fileno())
    f.close()


def serve(
    db: str | None,
    blobs: str | None,
    host: str,
    port: int,
    config: Any = None,
    workers: int = 1,
    search_roots: Sequence[str] = (),
) -> None:
    """Run the server until interrupted: uvicorn with ``workers`` processes sharing the port
    (and one URL-signing key)."""
    import dataclasses

    import uvicorn

    if workers < 1:
        raise InvalidInput(f"--workers {workers}: at least 1")
    _signing_key()  # a bad shared key: one line now, not a traceback in every worker
    if workers == 1:
        registry = Registry(db, blobs, config=config, actor="server")
        app = create_app(registry, storage=config, search_roots=search_roots)
        uvicorn.run(app, host=host, port=port, log_level="warning")
        return
    Registry(db, blobs, config=config, actor="server").close()  # migrate once, fail early
    os.environ.setdefault("SHARDYARD_SIGNING_KEY", secrets.token_bytes(32).hex())
    os.environ["_SHARDYARD_SERVE"] = json.dumps(
        {
            "db": db,
            "blobs": blobs,
            "storage": dataclasses.asdict(config) if config is not None else None,
            "search_roots": list(search_roots),
        }
    )
    uvicorn.run(
        "registry.server:_worker_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="warning",
    )


def _worker_app() -> FastAPI:
    """The app in one of :func:`serve`'s worker processes (settings from the parent)."""
    from datastore import StorageConfig

    doc = json.loads(os.environ["_SHARDYARD_SERVE"])
    config = StorageConfig(**doc["storage"]) if doc["storage"] is not None else None
    registry = Registry(doc["db"], doc["blobs"], config=config, actor="server")
    return create_app(registry, storage=config, search_roots=doc["search_roots"])


def _signing_key() -> bytes | None:
    """SHARDYARD_SIGNING_KEY (several workers or hosts sign blob URLs with one key): at least
    32 bytes, in hex."""
    shared = os.environ.get("SHARDYARD_SIGNING_KEY")
    if not shared:
        return None
    try:
        key = bytes.fromhex(shared.strip())
    except ValueError:
        key = b""
    if len(key) < 32:
        raise InvalidInput(
            "SHARDYARD_SIGNING_KEY must be at least 32 bytes in hex (64 hex digits): "
            "python -c 'import secrets; print(secrets.token_hex(32))'"
        )
    return key


def _canonical_prefix(uri: str) -> str:
    from datastore.uri import parse_uri

    return parse_uri(uri).uri.rstrip("/") + "/"


def _json(doc: Any) -> Response:
    """``doc`` as a JSON response, serialised once (the hot reads skip FastAPI's response
    validation and encoder: their documents are plain JSON types already)."""
    return Response(json.dumps(doc, separators=(",", ":")), media_type="application/json")


class _BodyLimit:
    """Refuses bodies over the limit (JSON: MAX_JSON; blob uploads: ``max_upload``) before
    they are read, and chunked JSON bodies (they would be read whole before any check). Plain
    ASGI: no per-request task or stream wrapping."""

    def __init__(self, app: Any, max_upload: int) -> None:
        self.app = app
        self.max_upload = max_upload

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            blob = scope["path"].startswith("/v1/blobs/")
            limit = self.max_upload if blob else MAX_JSON
            length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
            refusal = None
            writes = scope["method"] in ("POST", "PUT", "PATCH")
            if length is None and not blob and writes:
                refusal = (411, "LengthRequired", "send a Content-Length")
            elif length is not None and (not length.isdigit() or int(length) > limit):
                refusal = (413, "TooLarge", f"request body over {limit:,} bytes")
            if refusal is not None:
                status, kind, message = refusal
                response = JSONResponse({"error": kind, "message": message}, status)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _chain(first: memoryview, rest: Iterator[memoryview]) -> Iterator[bytes]:
    yield bytes(first)
    for piece in rest:
        yield bytes(piece)
