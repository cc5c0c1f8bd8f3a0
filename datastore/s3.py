"""boto3 and pyarrow S3 clients built from one :class:`StorageConfig`, and S3 error translation.

boto3 carries what needs its features (conditional writes, multipart with checksums, SSE headers,
presigned URLs); pyarrow's native client carries bulk scans handed to Arrow. Both are built
here so they agree on endpoint, region and credentials. botocore's own retries are off: every
call goes through :func:`datastore.retry.call_with_retry`, so retries are bounded, jittered and
logged the same way everywhere.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import boto3
import botocore.exceptions as bex
import pyarrow.fs as pafs
from botocore.config import Config

from datastore.config import StorageConfig
from datastore.errors import (
    NotFound,
    PermissionDenied,
    PreconditionFailed,
    ShardyardError,
    Unauthenticated,
    Unreachable,
    Unsupported,
)
from datastore.retry import RetryPolicy, call_with_retry

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = [
    "arrow_filesystem",
    "drop_clients",
    "is_transient",
    "make_client",
    "obstore_s3",
    "presign_get",
    "retry_policy",
    "s3_call",
    "translate",
]

T = TypeVar("T")

_TRANSIENT_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
    "503",
    "500",
    "502",
    "504",
}
_AUTH_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
}
_NETWORK_ERRORS = (
    bex.EndpointConnectionError,
    bex.ConnectTimeoutError,
    bex.ReadTimeoutError,
    bex.ConnectionClosedError,
    bex.ResponseStreamingError,
    bex.IncompleteReadError,
    bex.HTTPClientError,
)


def _session(config: StorageConfig) -> boto3.Session:
    return boto3.Session(
        aws_access_key_id=config.access_key_id,
        aws_secret_access_key=config.secret_access_key,
        aws_session_token=config.session_token,
        profile_name=config.profile if not config.access_key_id else None,
        region_name=config.region,
    )


_CLIENTS: dict[StorageConfig, S3Client] = {}
_CLIENTS_LOCK = threading.Lock()


def make_client(config: StorageConfig) -> S3Client:
    """A boto3 S3 client with botocore retries off (we retry) and the config's timeouts.

    One client per config and process, shared by every store (boto3 clients are thread-safe):
    building one costs ~0.1 s, more than most requests a pipeline task makes. A forked child
    starts with none (it must not share the parent's sockets).
    """
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(config)
    if client is None:
        built = _build_client(config)  # outside the lock: it may look up credentials
        with _CLIENTS_LOCK:
            client = _CLIENTS.setdefault(config, built)
    return client


def drop_clients() -> None:
    """Forget the shared clients (and their pooled connections); the next store builds new
    ones, as a fresh process would."""
    global _CLIENTS_LOCK
    _CLIENTS_LOCK = threading.Lock()
    _CLIENTS.clear()


os.register_at_fork(after_in_child=drop_clients)


def _build_client(config: StorageConfig) -> S3Client:
    style = config.addressing_style
    if style == "auto" and config.endpoint_url:
        style = "path"  # self-hosted S3 (SeaweedFS, MinIO, Ceph) rarely has wildcard DNS
    client: S3Client = _session(config).client(
        "s3",
        endpoint_url=config.endpoint_url,
        region_name=config.region or "us-east-1",
        config=Config(
            connect_timeout=config.connect_timeout,
            read_timeout=config.read_timeout,
            # "total_max_attempts" counts the first try; botocore's "max_attempts" counts only
            # retries, so {"max_attempts": 1} would retry once, silently, under our policy.
            retries={"total_max_attempts": 1, "mode": "standard"},
            s3={"addressing_style": style},
            max_pool_connections=max(10, config.max_concurrency * 2),
        ),
    )
    return client


def arrow_filesystem(config: StorageConfig) -> pafs.S3FileSystem:
    """pyarrow's native S3 filesystem with the same endpoint and credentials as boto3."""
    creds = _session(config).get_credentials()
    kwargs: dict[str, Any] = {
        "region": config.region or "us-east-1",
        "connect_timeout": config.connect_timeout,
        "request_timeout": config.read_timeout,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=config.max_attempts),
    }
    if creds is not None:
        frozen = creds.get_frozen_credentials()
        kwargs.update(
            access_key=frozen.access_key,
            secret_key=frozen.secret_key,
            session_token=frozen.token,
        )
    if config.endpoint_url:
        scheme, _, host = config.endpoint_url.partition("://")
        kwargs.update(endpoint_override=host.rstrip("/"), scheme=scheme)
    if config.addressing_style == "virtual":
        kwargs["force_virtual_addressing"] = True
    return pafs.S3FileSystem(**kwargs)


def presign_get(client: S3Client, bucket: str, key: str, expires: int = 3600) -> str:
    """A presigned GET URL for ``s3://bucket/key`` valid ``expires`` seconds."""
    return client.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires
    )


def retry_policy(config: StorageConfig) -> RetryPolicy:
    """The config's retry budget as a :class:`RetryPolicy`."""
    return RetryPolicy(config.max_attempts, config.backoff_base, config.backoff_max)


def error_code(err: BaseException) -> str:
    """The S3 error code of a botocore ClientError (``NoSuchKey``, ``412``...), else ''."""
    if isinstance(err, bex.ClientError):
        return str(err.response.get("Error", {}).get("Code", ""))
    return ""


def is_transient(err: BaseException) -> bool:
    """True for errors worth retrying: throttling, 5xx, timeouts, resets."""
    if isinstance(err, _NETWORK_ERRORS):
        return True
    if isinstance(err, bex.ClientError):
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if _not_implemented(err):
            return False  # a 501 is an answer: asking again gets the same one
        return error_code(err) in _TRANSIENT_CODES or status >= 500
    return isinstance(err, ConnectionError | TimeoutError)


def _not_implemented(err: bex.ClientError) -> bool:
    status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return error_code(err) in ("NotImplemented", "501") or status == 501


def translate(err: BaseException, what: str, endpoint: str | None) -> BaseException:
    """Turn a botocore error about ``what`` (an s3:// URI) into a Shardyard error."""
    if isinstance(err, ShardyardError):
        return err
    where = endpoint or "AWS S3"
    if isinstance(err, bex.NoCredentialsError | bex.PartialCredentialsError):
        return Unauthenticated(
            f"no S3 credentials for {what}; set SHARDYARD_S3_ACCESS_KEY_ID and "
            "SHARDYARD_S3_SECRET_ACCESS_KEY (or AWS_PROFILE)"
        )
    if isinstance(err, (*_NETWORK_ERRORS, ConnectionError, TimeoutError)):
        return Unreachable(
            f"S3 endpoint {where} did not answer for {what} "
            f"({type(err).__name__}); check SHARDYARD_S3_ENDPOINT_URL and the network"
        )
    code = error_code(err)
    if isinstance(err, bex.ClientError):
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in ("NoSuchKey", "404", "NotFound"):
            return NotFound(f"{what} does not exist")
        if code == "NoSuchBucket":
            return NotFound(f"bucket of {what} does not exist at {where}; create it first")
        if code in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
            return PreconditionFailed(f"{what} was changed or created by another writer first")
        if code in _AUTH_CODES:
            return Unauthenticated(
                f"S3 endpoint {where} rejected the credentials for {what} ({code}); "
                "check the access key and secret"
            )
        if code in ("AccessDenied", "403", "Forbidden") or status == 403:
            return PermissionDenied(
                f"access denied to {what} at {where}; check the credentials and their policy"
            )
        if _not_implemented(err):
            return Unsupported(
                f"S3 endpoint {where} does not implement a feature needed for {what} ({code})"
            )
        if is_transient(err):
            return Unreachable(f"S3 endpoint {where} kept failing for {what} ({code or status})")
    return err


def s3_call(fn: Callable[[], T], *, what: str, config: StorageConfig, retry: bool = True) -> T:
    """Run one S3 request with bounded retries, then translate its error to ours."""
    try:
        if not retry:
            return fn()
        return call_with_retry(
            fn,
            what=f"S3 request for {what}",
            policy=retry_policy(config),
            is_transient=is_transient,
        )
    except Exception as err:
        mapped = translate(err, what, config.endpoint_url)
        if mapped is err:
            raise
        raise mapped from err


def obstore_s3(config: StorageConfig, bucket: str, prefix: str) -> Any:
    """An obstore S3 store (zarr 3's native S3 path) with the same endpoint and credentials."""
    from obstore.store import S3Store as ObS3Store

    creds = _session(config).get_credentials()
    cfg: dict[str, Any] = {"region": config.region or "us-east-1"}
    if creds is not None:
        frozen = creds.get_frozen_credentials()
        cfg.update(access_key_id=frozen.access_key, secret_access_key=frozen.secret_key)
        if frozen.token:
            cfg["token"] = frozen.token
    if config.endpoint_url:
        cfg["endpoint"] = config.endpoint_url
        cfg["virtual_hosted_style_request"] = config.addressing_style == "virtual"
    client = {
        "allow_http": bool(config.endpoint_url and config.endpoint_url.startswith("http://")),
        "connect_timeout": f"{config.connect_timeout}s",
        "timeout": f"{config.read_timeout}s",
    }
    retry = {
        "max_retries": config.max_attempts - 1,
        "backoff": {
            "init_backoff": timedelta(seconds=config.backoff_base),
            "max_backoff": timedelta(seconds=config.backoff_max),
        },
        "retry_timeout": timedelta(seconds=config.read_timeout * config.max_attempts),
    }
    return ObS3Store(
        bucket,
        prefix=prefix or None,
        config=cfg,  # type: ignore[arg-type]
        client_options=client,  # type: ignore[arg-type]
        retry_config=retry,  # type: ignore[arg-type]
    )
