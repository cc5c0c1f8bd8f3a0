"""Typed storage configuration, resolved once at the edge.

Resolution order, first hit wins, per key:

1. explicit values (CLI flags, keyword arguments) passed as ``overrides``;
2. ``SHARDYARD_S3_*`` environment variables (each field names its variable below);
3. the Shardyard config file: ``$SHARDYARD_CONFIG``, else
   ``${XDG_CONFIG_HOME:-~/.config}/shardyard/config.toml``,
   table ``[s3]`` with the field names as keys;
4. the standard AWS chain for what is still unset: ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``,
   ``AWS_REGION`` / ``AWS_DEFAULT_REGION``, ``AWS_PROFILE``, and credentials from boto3's provider
   chain (env vars, shared credentials and config files, SSO, instance metadata).

Nothing below the edge reads the environment: I/O code receives a :class:`StorageConfig`.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from datastore.errors import Unsupported

__all__ = ["ENV_PREFIX", "StorageConfig", "default_config_path"]

ENV_PREFIX = "SHARDYARD_S3_"

AddressingStyle = Literal["auto", "path", "virtual"]


def _env(name: str) -> dict[str, str]:
    return {"env": ENV_PREFIX + name}


@dataclass(frozen=True)
class StorageConfig:
    """How to reach an S3-compatible store; every field names its environment variable.

    Timeouts are seconds; sizes are bytes. ``None`` means "let the AWS chain decide".
    """

    endpoint_url: str | None = field(default=None, metadata=_env("ENDPOINT_URL"))
    region: str | None = field(default=None, metadata=_env("REGION"))
    access_key_id: str | None = field(default=None, metadata=_env("ACCESS_KEY_ID"))
    secret_access_key: str | None = field(default=None, metadata=_env("SECRET_ACCESS_KEY"))
    session_token: str | None = field(default=None, metadata=_env("SESSION_TOKEN"))
    profile: str | None = field(default=None, metadata=_env("PROFILE"))
    addressing_style: AddressingStyle = field(default="auto", metadata=_env("ADDRESSING_STYLE"))
    max_attempts: int = field(default=6, metadata=_env("MAX_ATTEMPTS"))
    backoff_base: float = field(default=0.2, metadata=_env("BACKOFF_BASE"))
    backoff_max: float = field(default=10.0, metadata=_env("BACKOFF_MAX"))
    connect_timeout: float = field(default=5.0, metadata=_env("CONNECT_TIMEOUT"))
    read_timeout: float = field(default=60.0, metadata=_env("READ_TIMEOUT"))
    multipart_threshold: int = field(default=64 * 1024 * 1024, metadata=_env("MULTIPART_THRESHOLD"))
    multipart_chunksize: int = field(default=32 * 1024 * 1024, metadata=_env("MULTIPART_CHUNKSIZE"))
    max_concurrency: int = field(default=8, metadata=_env("MAX_CONCURRENCY"))
    sse: str | None = field(default=None, metadata=_env("SSE"))
    sse_kms_key_id: str | None = field(default=None, metadata=_env("SSE_KMS_KEY_ID"))

    def __post_init__(self) -> None:
        if self.addressing_style not in ("auto", "path", "virtual"):
            raise Unsupported(
                f"addressing_style {self.addressing_style!r} is not one of auto, path, virtual"
            )
        if self.multipart_chunksize < 5 * 1024 * 1024:
            raise Unsupported(
                f"multipart_chunksize must be at least 5 MiB (S3's minimum part), "
                f"got {self.multipart_chunksize}"
            )
        if self.max_attempts < 1:
            raise Unsupported(f"max_attempts must be >= 1, got {self.max_attempts}")

    def replace(self, **changes: Any) -> StorageConfig:
        """A copy with ``changes`` applied (a frozen dataclass cannot be edited in place)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def resolve(
        cls,
        overrides: Mapping[str, Any] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        config_file: Path | None = None,
    ) -> StorageConfig:
        """Build a config from overrides, ``SHARDYARD_S3_*`` env, the config file and AWS env.

        ``env`` defaults to ``os.environ``; pass a dict to resolve without touching the process
        environment (tests do). Unknown keys in ``overrides`` or the file raise
        :class:`~datastore.errors.Unsupported` naming the key.
        """
        environ = os.environ if env is None else env
        known = {f.name: f for f in fields(cls)}
        layers: list[Mapping[str, Any]] = []
        layers.append({k: v for k, v in (overrides or {}).items() if v is not None})
        layers.append(
            {
                name: environ[f.metadata["env"]]
                for name, f in known.items()
                if f.metadata["env"] in environ
            }
        )
        path = config_file or default_config_path(environ)
        if path.is_file():
            with path.open("rb") as fh:
                section = tomllib.load(fh).get("s3", {})
            layers.append(section)
        layers.append(_aws_env_layer(environ))
        values: dict[str, Any] = {}
        for layer in reversed(layers):  # lowest priority first, overwritten by higher ones
            for key, value in layer.items():
                if key not in known:
                    raise Unsupported(
                        f"unknown storage setting {key!r}; known: {', '.join(sorted(known))}"
                    )
                values[key] = _coerce(known[key], value)
        return cls(**values)


def default_config_path(env: Mapping[str, str] | None = None) -> Path:
    """``$SHARDYARD_CONFIG`` if set, else ``$XDG_CONFIG_HOME/shardyard/config.toml``."""
    environ = os.environ if env is None else env
    if "SHARDYARD_CONFIG" in environ:
        return Path(environ["SHARDYARD_CONFIG"])
    base = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "shardyard" / "config.toml"


def _aws_env_layer(environ: Mapping[str, str]) -> dict[str, str]:
    layer: dict[str, str] = {}
    endpoint = environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        layer["endpoint_url"] = endpoint
    region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION")
    if region:
        layer["region"] = region
    if environ.get("AWS_PROFILE"):
        layer["profile"] = environ["AWS_PROFILE"]
    return layer


def _coerce(f: dataclasses.Field[Any], value: Any) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
    try:
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
    except (TypeError, ValueError):
        raise Unsupported(
            f"storage setting {f.name!r} ({f.metadata['env']}) must be a number, got {value!r}"
        ) from None
    return value
