"""A store in an S3 bucket (``s3://bucket/prefix``), for runs shared by several machines.

Each key is the object ``prefix/key``. Single PutObject requests are atomic: a reader sees the
old or the new object, never a mix. ``cas`` is a conditional PutObject: ``IfNoneMatch="*"``
creates only when the object does not exist, ``IfMatch=<etag>`` replaces only that version; S3
answers 412 PreconditionFailed (or 409 ConditionalRequestConflict when two conditional writes
race), which becomes ``Conflict``. Versions are ETags.

Configuration, without code: the standard AWS environment and config files (``AWS_PROFILE``,
``AWS_ACCESS_KEY_ID``, ``AWS_REGION``, ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3``, ...) are
honoured by botocore, and the URL may carry ``?endpoint_url=``, ``&region=`` and ``&profile=``.
Credentials never go in the URL.

The store talks to S3 through s3fs's aiobotocore client with botocore's and s3fs's own retries
turned off (:func:`open_client`), so the shared :class:`~pipeline.stores._retry.Retry` is the
only retry layer and its bounds hold. The S3 sink opens its client the same way and shares the
retry policy, :func:`is_transient`, :func:`is_missing` and :func:`describe`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import aiohttp
import botocore.exceptions
import botocore.parsers
import s3fs
from fsspec.asyn import sync

from pipeline.errors import Conflict, KeyNotFound, StoreError
from pipeline.stores._base import BaseStore
from pipeline.stores._keys import validate_key
from pipeline.stores._retry import RetryPolicy

_OPTIONS = {"endpoint_url", "region", "profile"}

# Error codes S3 (and S3-compatible servers) use for "slow down" and "try again".
_TRANSIENT_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "RequestTimeout",
    "InternalError",
    "ServiceUnavailable",
}
_CONFLICT_CODES = {"PreconditionFailed", "ConditionalRequestConflict"}
_MISSING_CODES = {"NoSuchKey", "NoSuchUpload", "NotFound", "404"}  # "404": a HEAD has no error body

_TRANSIENT_TYPES: tuple[type[BaseException], ...] = (
    botocore.exceptions.HTTPClientError,  # connection closed, read/connect timeouts
    botocore.exceptions.ConnectionError,  # endpoint unreachable
    botocore.parsers.ResponseParserError,  # throttling answers with broken XML (s3fs #484)
    aiohttp.ClientError,  # payload errors while streaming a body
    ConnectionError,
    TimeoutError,
)


def _client_error(exc: BaseException) -> botocore.exceptions.ClientError | None:
    """S3's answer behind ``exc``: itself, or the one s3fs translated into an ``OSError``."""
    for error in (exc, exc.__cause__):
        if isinstance(error, botocore.exceptions.ClientError):
            return error
    return None


def _error_code(exc: BaseException) -> tuple[str, int]:
    error = _client_error(exc)
    if error is None:
        return "", 0
    code = str(error.response.get("Error", {}).get("Code", ""))
    status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
    return code, status


def is_transient(exc: BaseException) -> bool:
    """Whether an S3 failure is worth another try: 5xx, throttling, connection trouble."""
    code, status = _error_code(exc)
    if code or status:
        return status >= 500 or status == 429 or code in _TRANSIENT_CODES
    return isinstance(exc, _TRANSIENT_TYPES)


def is_missing(exc: BaseException) -> bool:
    """Whether S3 answered that the key, or the multipart upload, does not exist (not the bucket)."""
    return _error_code(exc)[0] in _MISSING_CODES


def describe(exc: BaseException) -> str:
    """A one-line account of an S3 failure for the final error message."""
    code, status = _error_code(exc)
    if code or status:
        message = _client_error(exc).response.get("Error", {}).get("Message", "")  # type: ignore[union-attr]
        return f"{code or status}: {message}".rstrip(": ")
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return "no AWS credentials found (set AWS_PROFILE or AWS_ACCESS_KEY_ID)"
    return str(exc) or type(exc).__name__


class S3Store(BaseStore):
    """A snapshot store under a prefix of an S3 bucket."""

    def __init__(self, url: str, *, retry: RetryPolicy | None = None) -> None:
        super().__init__(url, retry=retry, is_transient=is_transient, describe=describe)
        parts = urlsplit(url)
        self.bucket = parts.netloc
        self.prefix = parts.path.strip("/")
        options = dict(parse_qsl(parts.query, keep_blank_values=True))
        unknown = sorted(set(options) - _OPTIONS)
        if not self.bucket:
            raise StoreError(f"{url}: an S3 store URL needs a bucket: s3://bucket/prefix")
        if unknown:
            raise StoreError(
                f"{url}: unknown S3 store option {', '.join(unknown)} (known: {', '.join(sorted(_OPTIONS))})"
            )
        if self.prefix:
            validate_key(self.prefix, url)
        client_kwargs = {"region_name": options["region"]} if options.get("region") else {}
        self._fs = open_client(
            endpoint_url=options.get("endpoint_url") or None,
            profile=options.get("profile") or None,
            client_kwargs=client_kwargs,
        )

    def _object(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, method: str, key: str, **kwargs: Any) -> dict[str, Any]:
        """Run one S3 request on s3fs's event loop; turn the answers we expect into errors."""
        try:
            return sync(self._fs.loop, self._request, method, self._object(key), kwargs)
        except botocore.exceptions.ClientError as exc:
            self._translate(exc, key, writing=method == "put_object")
            raise

    def _translate(self, exc: botocore.exceptions.ClientError, key: str, *, writing: bool) -> None:
        """Raise the store error an expected S3 answer means; return for anything else."""
        code, status = _error_code(exc)
        if code == "NoSuchBucket":
            raise StoreError(f"{self.url}: bucket {self.bucket!r} does not exist (at {key!r})") from exc
        if code in _CONFLICT_CODES or (writing and is_missing(exc)):
            # IfMatch on a key deleted underneath answers 404: that version is gone too.
            raise Conflict(f"{self.url}: {key!r} changed underneath (compare-and-swap lost)") from exc
        if is_missing(exc) or status == 404:
            raise KeyNotFound(f"{self.url}: no object at {key!r}") from None

    async def _request(self, method: str, name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        client = await self._fs.set_session()
        response: dict[str, Any] = await getattr(client, method)(Bucket=self.bucket, Key=name, **kwargs)
        if method == "get_object":
            # Read the body here, on the loop, so a broken stream is a retried fault too.
            async with response["Body"] as body:
                response["Body"] = await body.read()
        return response

    def _head(self, key: str) -> tuple[bytes, str]:
        response = self._call("get_object", key)
        return response["Body"], response["ETag"]

    def _put(self, key: str, data: bytes) -> None:
        self._call("put_object", key, Body=data)

    def _cas(self, key: str, data: bytes, expected: str | None) -> str:
        condition = {"IfNoneMatch": "*"} if expected is None else {"IfMatch": expected}
        return str(self._call("put_object", key, Body=data, **condition)["ETag"])

    def _delete(self, key: str) -> None:
        self._call("delete_object", key)

    def _list(self, prefix: str) -> Iterator[str]:
        base = f"{self.prefix}/" if self.prefix else ""
        try:
            return iter(sync(self._fs.loop, self._list_all, base, base + prefix))
        except botocore.exceptions.ClientError as exc:
            self._translate(exc, prefix, writing=False)
            raise

    async def _list_all(self, base: str, full_prefix: str) -> list[str]:
        client = await self._fs.set_session()
        keys: list[str] = []
        token: dict[str, str] = {}
        while True:  # bounded by the listing: every page moves the continuation token on
            page = await client.list_objects_v2(Bucket=self.bucket, Prefix=full_prefix, **token)
            keys.extend(item["Key"][len(base) :] for item in page.get("Contents", ()))
            if not page.get("IsTruncated"):
                return keys
            if token.get("ContinuationToken") == page["NextContinuationToken"]:
                raise StoreError(f"{self.url}: listing {full_prefix!r} does not advance (server bug?)")
            token = {"ContinuationToken": page["NextContinuationToken"]}

    def _close(self) -> None:
        close_client(self._fs)


def open_client(**options: Any) -> s3fs.S3FileSystem:
    """An s3fs instance of our own (closing it breaks nobody else's) that tries each request once.

    ``options`` are s3fs's (``endpoint_url``, ``profile``, ``s3_additional_kwargs``...). botocore's
    and s3fs's own retries are turned off, so a :class:`~pipeline.stores._retry.Retry` around the
    requests is the only retry layer and its bounds hold (left on, they multiply: a throttled
    request went out up to 5 x 5 times).
    """
    config = {"connect_timeout": 10, "read_timeout": 60, **(options.pop("config_kwargs", None) or {})}
    config["retries"] = {"total_max_attempts": 1}
    fs = s3fs.S3FileSystem(**options, skip_instance_cache=True, config_kwargs=config)
    fs.retries = 1  # s3fs's loop around call_s3
    return fs


def close_client(fs: s3fs.S3FileSystem) -> None:
    """Close an s3fs instance's aiohttp session now (safe twice).

    At garbage collection an unclosed connector warns, and pytest's filterwarnings=error would
    fail a test; a long-lived process would hold the connections.
    """
    creator = getattr(fs, "_s3creator", None)
    if creator is not None:
        sync(fs.loop, creator.__aexit__, None, None, None)
        fs._s3 = None
        fs._s3creator = None
