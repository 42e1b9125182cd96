"""What the built-in backends share: key checks, retries, the closed state, ``with`` support.

A backend subclasses :class:`BaseStore` and implements five raw operations (``_head``,
``_put``, ``_cas``, ``_list``, ``_delete``) that talk to its storage once and translate its
"not found" and "precondition failed" answers to ``KeyNotFound`` / ``Conflict``. The public
methods around them validate keys, refuse to run after ``close()``, and go through the one
:class:`~pipeline.stores._retry.Retry` of the store.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from pipeline.errors import StoreError
from pipeline.stores._keys import validate_key, validate_prefix
from pipeline.stores._retry import Retry, RetryPolicy


class BaseStore:
    """Template for a snapshot store backend (see the module docstring)."""

    url: str
    retry: Retry

    def __init__(
        self,
        url: str,
        *,
        retry: RetryPolicy | None = None,
        is_transient: Callable[[BaseException], bool] | None = None,
        describe: Callable[[BaseException], str] | None = None,
    ) -> None:
        self.url = url
        self.retry = Retry(url, retry or RetryPolicy.from_env())
        if is_transient is not None:
            self.retry.is_transient = is_transient
        if describe is not None:
            self.retry.describe = describe
        self._closed = False

    # -- the protocol ------------------------------------------------------------------------

    def get(self, key: str) -> bytes:
        """Return the value at ``key``; raise ``KeyNotFound`` when there is none."""
        return self.head(key)[0]

    def head(self, key: str) -> tuple[bytes, str]:
        """Return the value at ``key`` and its version; raise ``KeyNotFound``."""
        self._check(key)
        return self.retry("get", key, lambda: self._head(key))

    def put(self, key: str, data: bytes) -> None:
        """Store an immutable blob; putting the same bytes again is a no-op."""
        self._check(key)
        data = _as_bytes(data)
        self.retry("put", key, lambda: self._put(key, data))

    def cas(self, key: str, data: bytes, expected: str | None) -> str:
        """Replace the value if its version is ``expected`` (create if None), else ``Conflict``."""
        self._check(key)
        data = _as_bytes(data)
        return self.retry.cas(key, data, lambda: self._cas(key, data, expected), self.head)

    def list(self, prefix: str) -> Iterator[str]:
        """Yield every key that starts with ``prefix``, in no particular order."""
        validate_prefix(prefix, self.url)
        self._check_open(prefix)
        # Collected in full inside the retry, so a fault mid-listing restarts it cleanly.
        return iter(self.retry("list", prefix, lambda: list(self._list(prefix))))

    def delete(self, key: str) -> None:
        """Remove ``key``; removing a missing key is not an error."""
        self._check(key)
        self.retry("delete", key, lambda: self._delete(key))

    def close(self) -> None:
        """Release connections and files; calling it twice is fine."""
        if not self._closed:
            self._closed = True
            self._close()

    def __enter__(self) -> BaseStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    # -- for subclasses ----------------------------------------------------------------------

    def _head(self, key: str) -> tuple[bytes, str]:
        raise NotImplementedError

    def _put(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    def _cas(self, key: str, data: bytes, expected: str | None) -> str:
        raise NotImplementedError

    def _list(self, prefix: str) -> Iterator[str]:
        raise NotImplementedError

    def _delete(self, key: str) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        """Release resources; called once, by the first ``close()``."""

    def _check(self, key: str) -> None:
        validate_key(key, self.url)
        self._check_open(key)

    def _check_open(self, key: str) -> None:
        if self._closed:
            raise StoreError(f"{self.url}: store is closed (while accessing {key!r})")


def _as_bytes(data: bytes) -> bytes:
    # bytearray / memoryview are accepted; bytes pass through without a copy.
    return data if type(data) is bytes else bytes(data)
