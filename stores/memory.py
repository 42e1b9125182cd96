"""An in-process store for tests and throwaway runs (``memory://name``).

Stores with the same URL share their contents within one process, like fsspec's memory
filesystem, so a test can run, "crash" and resume against one ``memory://`` URL. Nothing is
shared between processes and nothing survives the process.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import xxhash

from pipeline.errors import Conflict, KeyNotFound
from pipeline.stores._base import BaseStore
from pipeline.stores._retry import RetryPolicy

# url -> (contents, the lock guarding them); shared so two stores on one URL see one dict.
_SHARED: dict[str, tuple[dict[str, bytes], threading.Lock]] = {}
_SHARED_LOCK = threading.Lock()


def _version(data: bytes) -> str:
    return xxhash.xxh3_128_hexdigest(data)


class MemoryStore(BaseStore):
    """A dict behind a lock; versions are content hashes."""

    def __init__(self, url: str = "memory://", *, retry: RetryPolicy | None = None) -> None:
        super().__init__(url, retry=retry)
        with _SHARED_LOCK:
            self._data, self._lock = _SHARED.setdefault(url, ({}, threading.Lock()))

    def _head(self, key: str) -> tuple[bytes, str]:
        with self._lock:
            data = self._data.get(key)
        if data is None:
            raise KeyNotFound(f"{self.url}: no object at {key!r}")
        return data, _version(data)

    def _put(self, key: str, data: bytes) -> None:
        with self._lock:
            self._data[key] = data

    def _cas(self, key: str, data: bytes, expected: str | None) -> str:
        with self._lock:
            current = self._data.get(key)
            if (None if current is None else _version(current)) != expected:
                raise Conflict(f"{self.url}: {key!r} changed underneath (compare-and-swap lost)")
            self._data[key] = data
        return _version(data)

    def _list(self, prefix: str) -> Iterator[str]:
        with self._lock:
            return iter([k for k in self._data if k.startswith(prefix)])

    def _delete(self, key: str) -> None:
        with self._lock:
            self._data.pop(key, None)
