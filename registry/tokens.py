"""API tokens for the registry server: who may do what, in which namespaces.

A token is ``sy_<id>_<secret>``; the database keeps only the sha256 of the secret, so a copy
of the database grants nothing. Each token is scoped to one namespace (and the namespaces
under it: ``team`` covers ``team/project``; ``*`` covers all) with one role:

* ``reader``: resolve, list, show, lineage, deployable, download, search (a token also
  carries its principal's access groups: searches of vector indexes through the server see
  only the chunks those groups may read);
* ``writer``: also register, move aliases, link, release;
* ``admin``: also revoke versions, create and revoke tokens in its scope, read the audit log.

Tokens may expire and can be revoked; creation and revocation are audited. Authentication
failures say what is wrong (missing, malformed, unknown, expired, revoked) without saying
more than that.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Engine

from datastore.errors import InvalidInput, NotFound, PermissionDenied, Unauthenticated
from registry import audit
from registry import schema as t
from registry.refs import check_group, check_namespace

__all__ = [
    "ROLES",
    "Principal",
    "TokenInfo",
    "authenticate",
    "create_token",
    "list_tokens",
    "parse_duration",
    "revoke_token",
]

ROLES = ("reader", "writer", "admin")
_RANK = {r: i for i, r in enumerate(ROLES)}
_TOKEN = re.compile(r"sy_([0-9a-f]{12})_([A-Za-z0-9_-]{20,128})")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


@dataclass(frozen=True)
class TokenInfo:
    """A token's record (never its secret)."""

    id: str
    namespace: str
    role: str
    created_at: float
    created_by: str
    expires_at: float | None
    revoked_at: float | None
    note: str
    groups: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "groups": list(self.groups)}

    @classmethod
    def from_row(cls, row: Any) -> TokenInfo:
        fields = {k: row[k] for k in cls.__dataclass_fields__ if k != "groups"}
        return cls(**fields, groups=tuple(json.loads(row["groups"] or "[]")))


@dataclass(frozen=True)
class Principal:
    """Who a request acts as: a token's scope and role (or the operator, with database
    access, for whom every check passes)."""

    actor: str
    namespace: str
    role: str
    groups: tuple[str, ...] = ()  # access groups for searches (none: public chunks only)
    operator: bool = False  # database access (the CLI on the registry's host): may grant any group

    def covers(self, namespace: str) -> bool:
        """Whether the token's scope includes ``namespace``."""
        return (
            self.namespace == "*"
            or namespace == self.namespace
            or namespace.startswith(self.namespace + "/")
        )

    def can(self, namespace: str, role: str) -> bool:
        return self.covers(namespace) and _RANK[self.role] >= _RANK[role]

    def require(self, namespace: str, role: str) -> None:
        """PermissionDenied unless the principal holds ``role`` in ``namespace``."""
        if not self.covers(namespace):
            raise PermissionDenied(
                f"{self.actor} may not access namespace {namespace!r} (its token is scoped to "
                f"{self.namespace!r})"
            )
        if _RANK[self.role] < _RANK[role]:
            raise PermissionDenied(
                f"{self.actor} is a {self.role} in {self.namespace!r}; this needs {role}"
            )


OPERATOR = Principal("operator", "*", "admin", operator=True)


def parse_duration(text: str) -> float:
    """Seconds in ``30d``, ``12h``, ``90m``, ``1w2d`` (InvalidInput otherwise)."""
    parts = _DURATION.findall(text.strip().lower())
    if not parts or "".join(a + u for a, u in parts) != re.sub(r"\s+", "", text.strip().lower()):
        raise InvalidInput(f"duration {text!r}: write it like 30d, 12h, 90m or 1w2d")
    return sum(float(a) * _UNITS[u] for a, u in parts)


def _scope(namespace: str) -> str:
    if namespace == "*":
        return namespace
    return check_namespace(namespace)


def create_token(
    engine: Engine,
    namespace: str,
    role: str,
    *,
    expires_in: float | None = None,
    by: Principal = OPERATOR,
    note: str = "",
    groups: Sequence[str] = (),
) -> tuple[str, TokenInfo]:
    """A new token (its full secret string, shown once, and its record); ``by`` must be an
    admin covering ``namespace``."""
    if role not in ROLES:
        raise InvalidInput(f"role {role!r}: one of {', '.join(ROLES)}")
    namespace = _scope(namespace)
    if namespace == "*" and by.namespace != "*":
        raise PermissionDenied(f"{by.actor} may not create tokens for every namespace")
    by.require(namespace if namespace != "*" else "", "admin")
    if expires_in is not None and expires_in <= 0:
        raise InvalidInput("a token's lifetime must be positive")
    groups = tuple(sorted({check_group(g.strip()) for g in groups}))
    if not by.operator and not set(groups) <= set(by.groups):
        raise PermissionDenied(
            f"{by.actor} may not grant access groups it does not hold: "
            f"{', '.join(sorted(set(groups) - set(by.groups)))}"
        )
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    now = time.time()
    info = TokenInfo(
        id=token_id,
        namespace=namespace,
        role=role,
        created_at=now,
        created_by=by.actor,
        expires_at=now + expires_in if expires_in is not None else None,
        revoked_at=None,
        note=note,
        groups=groups,
    )
    with engine.begin() as conn:
        conn.execute(
            insert(t.tokens).values(
                secret_sha256=hashlib.sha256(secret.encode()).hexdigest(),
                **{**asdict(info), "groups": json.dumps(list(groups))},
            )
        )
        audit.append(
            conn,
            by.actor,
            "token.create",
            f"token:{token_id}",
            {
                "namespace": namespace,
                "role": role,
                "expires_at": info.expires_at,
                "groups": list(groups),
            },
        )
    return f"sy_{token_id}_{secret}", info


def list_tokens(engine: Engine, by: Principal = OPERATOR) -> list[TokenInfo]:
    """The tokens whose scope ``by`` administers, oldest first."""
    with engine.connect() as conn:
        rows = conn.execute(select(t.tokens).order_by(t.tokens.c.created_at)).mappings().all()
    out = []
    for r in rows:
        info = TokenInfo.from_row(r)
        scope = "" if info.namespace == "*" else info.namespace
        if (info.namespace != "*" or by.namespace == "*") and by.can(scope, "admin"):
            out.append(info)
    return out


def revoke_token(engine: Engine, token_id: str, by: Principal = OPERATOR) -> TokenInfo:
    """Revoke token ``token_id`` (at once: its next request is refused)."""
    with engine.begin() as conn:
        row = conn.execute(select(t.tokens).where(t.tokens.c.id == token_id)).mappings().first()
        if row is None:
            raise NotFound(f"no token {token_id!r}")
        scope = "" if row["namespace"] == "*" else row["namespace"]
        if row["namespace"] == "*" and by.namespace != "*":
            raise PermissionDenied(f"{by.actor} may not revoke a token for every namespace")
        by.require(scope, "admin")
        now = time.time()
        if row["revoked_at"] is None:
            conn.execute(update(t.tokens).where(t.tokens.c.id == token_id).values(revoked_at=now))
            audit.append(conn, by.actor, "token.revoke", f"token:{token_id}", {})
        info = TokenInfo.from_row(row)
    return replace(info, revoked_at=info.revoked_at or now)


def authenticate(engine: Engine, token: str | None) -> Principal:
    """The principal ``token`` stands for; Unauthenticated naming what is wrong."""
    if not token:
        raise Unauthenticated(
            "no API token: pass --token or set SHARDYARD_TOKEN (shardyard token create)"
        )
    m = _TOKEN.fullmatch(token.strip())
    if m is None:
        raise Unauthenticated("malformed API token (expected sy_<id>_<secret>)")
    token_id, secret = m.groups()
    from registry.reads import Reader

    row = Reader(engine).token(token_id)
    digest = hashlib.sha256(secret.encode()).hexdigest()
    if row is None or not hmac.compare_digest(digest, row["secret_sha256"]):
        raise Unauthenticated("unknown API token")
    if row["revoked_at"] is not None:
        raise Unauthenticated(f"API token {token_id} was revoked")
    if row["expires_at"] is not None and row["expires_at"] <= time.time():
        raise Unauthenticated(f"API token {token_id} has expired")
    groups = tuple(json.loads(row["groups"] or "[]"))
    return Principal(f"token:{token_id}", row["namespace"], row["role"], groups)
