"""Names and references of registry artifacts.

A reference names an artifact version: ``ns/name:7`` (version 7), ``ns/name@production``
(what alias ``production`` points at), ``ns/name:latest`` or just ``ns/name`` (the newest
version). Namespaces may nest (``team/project/name``); a reference without one lives in the
default namespace. Names are checked here, once, so that no component can escape a storage
prefix or be mistaken for syntax: letters, digits, ``.``, ``_`` and ``-``, starting with a letter
or digit, at most 128 characters per component.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from datastore.errors import InvalidInput

__all__ = [
    "DEFAULT_NAMESPACE",
    "EVERYONE",
    "KINDS",
    "Ref",
    "check_alias",
    "check_group",
    "check_name",
    "check_namespace",
    "parse_pairs",
    "parse_ref",
]

DEFAULT_NAMESPACE = "default"

#: The access group every principal holds (chunks of documents declared public).
EVERYONE = "*"
_GROUP = re.compile(r"[A-Za-z0-9_.:@/+=-]{1,128}")


def check_group(group: str) -> str:
    """``group`` if it is a valid access group name: what chunks carry (pipelines.embed) and
    what tokens grant (registry.tokens)."""
    if group == EVERYONE or not _GROUP.fullmatch(group):
        raise InvalidInput(
            f"access group {group!r} is not valid: 1-128 of letters, digits and _.:@/+=- "
            f"({EVERYONE!r} is reserved for 'everyone')"
        )
    return group


#: What an artifact holds.
KINDS = ("dataset", "tokenizer", "checkpoint", "model", "vector-index", "other")

_COMPONENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_ALIAS = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,63}")


def check_name(component: str, what: str = "name") -> str:
    """``component`` if it is a valid artifact, namespace or tag name component."""
    if not _COMPONENT.fullmatch(component) or component in {".", ".."} or ".." in component:
        raise InvalidInput(
            f"invalid {what} {component!r}: use letters, digits, '.', '_' and '-' (starting "
            "with a letter or digit, no '..', at most 128 characters)"
        )
    return component


def check_alias(alias: str) -> str:
    """``alias`` if it is a valid alias (``latest`` is reserved: it always means the newest)."""
    if not _ALIAS.fullmatch(alias) or alias == "latest":
        raise InvalidInput(
            f"invalid alias {alias!r}: use letters, digits, '.', '_' and '-', starting with a "
            "letter, at most 64 characters ('latest' is reserved)"
        )
    return alias


@dataclass(frozen=True)
class Ref:
    """A parsed reference: ``namespace/name`` plus either a ``version`` or an ``alias``
    (neither: the latest version)."""

    namespace: str
    name: str
    version: int | None = None
    alias: str | None = None

    @property
    def artifact(self) -> str:
        """``namespace/name``."""
        return f"{self.namespace}/{self.name}"

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.artifact}:{self.version}"
        if self.alias is not None:
            return f"{self.artifact}@{self.alias}"
        return f"{self.artifact}:latest"

    def at(self, version: int) -> Ref:
        """This artifact at ``version``."""
        return Ref(self.namespace, self.name, version=version)


def parse_ref(text: str, default_namespace: str = DEFAULT_NAMESPACE) -> Ref:
    """Parse ``[ns/]name[:N|:latest|@alias]``; raises InvalidInput naming what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidInput("empty registry reference: use [namespace/]name[:version|@alias]")
    text = text.strip()
    version: int | None = None
    alias: str | None = None
    path = text
    if "@" in text:
        path, _, alias = text.rpartition("@")
        check_alias(alias)
    elif ":" in text:
        path, _, tail = text.rpartition(":")
        if tail != "latest":
            if not tail.isdigit() or int(tail) < 1:
                raise InvalidInput(
                    f"invalid version {tail!r} in reference {text!r}: a version is a positive "
                    "integer or 'latest'"
                )
            version = int(tail)
    if ":" in path or "@" in path:
        raise InvalidInput(f"invalid reference {text!r}: one ':version' or '@alias' at most")
    parts = path.split("/")
    for part in parts:
        check_name(part, "reference component")
    name = parts[-1]
    namespace = "/".join(parts[:-1]) or check_namespace(default_namespace)
    return Ref(namespace, name, version, alias)


def check_namespace(namespace: str) -> str:
    """``namespace`` (``team`` or ``team/project``...) if every component is a valid name."""
    for part in namespace.split("/"):
        check_name(part, "namespace component")
    return namespace


def parse_pairs(items: Iterable[str], what: str) -> dict[str, str]:
    """``key=value`` strings (tags, upstream tags) as a dict; InvalidInput naming a bad one."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInput(f"{what} {item!r}: write it as key=value")
        out[key] = value
    return out
