"""Where data may live: storage locations with a region and an encryption mode, and
namespaces that may keep data only in some regions.

An administrator declares locations by URI prefix (``s3://eu-models/``, ``/mnt/lustre/eu``):
their region and how their writes are encrypted (``sse-s3`` or ``sse-kms`` with a key: the
blob store then sends those headers on every write; ``aes-gcm`` with a key id: the registry
seals blobs itself before they reach storage, :mod:`registry.envelope`). A namespace's
residency policy lists the regions its data may be in; it applies to the namespace and the
namespaces under it, and to whatever is derived from its data: a version whose lineage reaches
a namespace with a policy must live where that policy allows too (a checkpoint trained on EU
data stays in the EU, whichever namespace it is registered in). Registering a version checks
the registry's blob store (when the version holds files) and the dataset it points at: a
location outside the allowed regions, or one nobody declared, is refused with one line saying
which and how to fix it. Policy and location changes are audited.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sqlalchemy import delete, insert, select
from sqlalchemy.engine import Connection, Engine

from datastore.errors import InvalidInput
from registry import audit
from registry import schema as t
from registry.refs import check_namespace

__all__ = [
    "ENCRYPTIONS",
    "Location",
    "allowed_regions",
    "check_residency",
    "location_of",
    "set_location",
    "set_residency",
]

ENCRYPTIONS = ("none", "sse-s3", "sse-kms", "aes-gcm")


@dataclass(frozen=True)
class Location:
    """A declared storage location (``kms_key_id``: the KMS key of ``sse-kms``, or the key
    provider's key id of ``aes-gcm``)."""

    prefix: str
    region: str
    encryption: str
    kms_key_id: str | None = None


def _canonical(uri: str) -> str:
    from datastore.uri import parse_uri

    return parse_uri(uri).uri.rstrip("/") + "/"


def set_location(
    engine: Engine,
    uri: str,
    region: str,
    encryption: str = "none",
    kms_key_id: str | None = None,
    *,
    actor: str = "operator",
) -> Location:
    """Declare (or re-declare) the location ``uri`` (a prefix) with its region and encryption."""
    if encryption not in ENCRYPTIONS:
        raise InvalidInput(f"encryption {encryption!r}: one of {', '.join(ENCRYPTIONS)}")
    if encryption == "sse-kms" and not kms_key_id:
        raise InvalidInput("sse-kms needs the KMS key id (--kms-key-id)")
    if encryption == "aes-gcm":
        from registry.envelope import check_key_id

        if not kms_key_id:
            raise InvalidInput("aes-gcm needs the id of a key in the key provider (--key-id)")
        check_key_id(kms_key_id)
    if not region or not region.replace("-", "").replace("_", "").isalnum():
        raise InvalidInput(f"region {region!r}: letters, digits, '-' and '_'")
    loc = Location(_canonical(uri), region, encryption, kms_key_id)
    with engine.begin() as conn:
        conn.execute(delete(t.locations).where(t.locations.c.prefix == loc.prefix))
        conn.execute(insert(t.locations).values(**loc.__dict__))
        audit.append(conn, actor, "location.set", loc.prefix, dict(loc.__dict__))
    return loc


def location_of(conn: Connection, uri: str) -> Location | None:
    """The declared location holding ``uri`` (the longest matching prefix), or None."""
    target = _canonical(uri)
    best = None
    for row in conn.execute(select(t.locations)).mappings():
        if target.startswith(row["prefix"]) and (best is None or len(row["prefix"]) > len(best[0])):
            best = (row["prefix"], Location(**row))
    return best[1] if best else None


def set_residency(
    engine: Engine, namespace: str, regions: list[str], *, actor: str = "operator"
) -> None:
    """Data of ``namespace`` (and the namespaces under it) may live only in ``regions``
    (an empty list removes the policy)."""
    namespace = check_namespace(namespace)
    with engine.begin() as conn:
        conn.execute(delete(t.residency).where(t.residency.c.namespace == namespace))
        if regions:
            conn.execute(
                insert(t.residency).values(namespace=namespace, regions=json.dumps(sorted(regions)))
            )
        audit.append(conn, actor, "residency.set", namespace, {"regions": sorted(regions)})


def allowed_regions(conn: Connection, namespace: str) -> tuple[str, list[str]] | None:
    """(the namespaces whose policies apply, the regions all of them allow) for
    ``namespace``, or None when none has a policy."""
    return _allowed(_policies(conn), namespace)


def _policies(conn: Connection) -> dict[str, str]:
    return {
        r[0]: r[1] for r in conn.execute(select(t.residency.c.namespace, t.residency.c.regions))
    }


def _allowed(rows: dict[str, str], namespace: str) -> tuple[str, list[str]] | None:
    parts = namespace.split("/")
    owners = [o for o in ("/".join(parts[: i + 1]) for i in range(len(parts))) if o in rows]
    if not owners:
        return None
    allowed: set[str] | None = None
    for owner in owners:  # a sub-namespace can narrow its parents' policy, never widen it
        regions = set(json.loads(rows[owner]))
        allowed = regions if allowed is None else allowed & regions
    return " and ".join(owners), sorted(allowed or set())


def _derived_from(conn: Connection, version_ids: Iterable[int]) -> list[tuple[str, str]]:
    """(namespace, a version ref there) for the versions ``version_ids`` and everything they
    derive from: the namespaces whose residency a version made from them inherits."""
    from registry.lineage import ancestors

    ids = list(version_ids)
    if not ids:
        return []
    _, nodes = ancestors(conn, ids)
    v, a = t.versions.c, t.artifacts.c
    own = conn.execute(
        select(v.id, v.number, a.namespace, a.name)
        .select_from(t.versions.join(t.artifacts, a.id == v.artifact_id))
        .where(v.id.in_(ids))
    )
    found = {r.namespace: f"{r.namespace}/{r.name}:{r.number}" for r in own}
    for node in nodes.values():
        found.setdefault(node["ref"].rsplit("/", 1)[0], node["ref"])
    return sorted(found.items())


def check_residency(
    conn: Connection,
    namespace: str,
    uris: list[tuple[str, str]],
    parents: Callable[[], Iterable[int]] | None = None,
) -> None:
    """Refuse (InvalidInput) when a location in ``uris`` ((what, uri) pairs) lies outside the
    regions ``namespace`` may use, or those of every namespace the data comes from:
    ``parents`` gives the ids of the versions it derives from, whose lineage is walked only
    when some residency policy exists at all."""
    rows = _policies(conn)
    if not rows or not uris:
        return
    derived = _derived_from(conn, parents()) if parents is not None else []
    checks: list[tuple[str, str | None]] = [(namespace, None)] + [(n, r) for n, r in derived]
    for ns, source in checks:
        policy = _allowed(rows, ns)
        if policy is None:
            continue
        owner, regions = policy
        why = f"namespace {owner!r} keeps data only in {', '.join(regions) or 'no region'}"
        if source is not None:
            why += f" (this derives from {source}, and what derives from its data stays there)"
        for what, uri in uris:
            loc = location_of(conn, uri)
            if loc is None:
                raise InvalidInput(
                    f"{why}; {what} {uri} is in no declared location: declare it (shardyard "
                    "registry location set URI --region R)"
                )
            if loc.region not in regions:
                raise InvalidInput(
                    f"{why}; {what} {uri} is in {loc.region} (location {loc.prefix})"
                )
