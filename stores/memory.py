"""An in-process store for tests and throwaway runs (``memory://name``).

Stores with the same URL share their contents within one process, like fsspec's memory
filesystem, so a test can run, "crash" and resume against one ``memory://`` URL.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import xxhash

from pipeline.errors import Conflict, KeyNotFound
from pipeline.stores._keys import validate_key

_SHARED: dict[str, dict[str, bytes]] = {}
_SHARED_LOCK = threading.Lock()


def _version(data: bytes) -> str:
    return xxhash.xxh3_128_hexdigest(data)


class MemoryStore:
    """A dict behind a lock; versions are content hashes."""

    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        with _SHARED_LOCK:
            self._data = _SHARED.setdefault(url, {})
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes:
        return self.head(key)[0]

    def head(self, key: str) -> tuple[bytes, str]:
        validate_key(key)
        with self._lock:
            try:
                data = self._data[key]
            except KeyError:
                raise KeyNotFound(f"{self.url}: no object at {key!r}") from None
        return data, _version(data)

    def put(self, key: str, data: bytes) -> None:
        validate_key(key)
        with self._lock:
            self._data[key] = bytes(data)

    def cas(self, key: str, data: bytes, expected: str | None) -> str:
        validate_key(key)
        with self._lock:
            current = self._data.get(key)
            current_version = None if current is None else _version(current)
            if current_version != expected:
                raise Conflict(f"{self.url}: {key!r} changed underneath (compare-and-swap lost)")
            self._data[key] = bytes(data)
        return _version(data)

    def list(self, prefix: str) -> Iterator[str]:
        with self._lock:
            keys = [k for k in self._data if k.startswith(prefix)]
        yield from keys

    def delete(self, key: str) -> None:
        validate_key(key)
        with self._lock:
            self._data.pop(key, None)

    def close(self) -> None:
        pass
