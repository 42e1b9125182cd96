"""Snapshot stores: a small protocol and the backends behind it.

A store holds opaque bytes under string keys. It knows nothing about snapshots: the snapshot
logic (:mod:`pipeline.snapshot`) sits above it and works the same on every backend.

Five operations make the protocol (DESIGN §5)::

    get(key) -> bytes                                   # KeyNotFound
    put(key, data) -> None                              # immutable blobs, idempotent
    cas(key, data, expected: Version | None) -> Version # Conflict
    list(prefix) -> Iterator[str]
    delete(key) -> None                                 # missing key is not an error

``cas`` with ``expected=None`` creates the key only if it does not exist; otherwise it replaces
the value only if the stored version is still ``expected``. ``head`` returns the current value
and its version together, which is what a compare-and-swap loop needs.

Backends are chosen by URL with :func:`open_store`; see ``docs/stores.md``. A new backend can
subclass :class:`BaseStore` (key checks, retries with :class:`Retry`, ``close`` twice) and
prove itself with ``pipeline.testing.StoreConformance``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

from pipeline.stores._base import BaseStore
from pipeline.stores._keys import validate_key, validate_prefix
from pipeline.stores._registry import open_store, registered_stores
from pipeline.stores._retry import Retry, RetryPolicy, TransientError

__all__ = [
    "BaseStore",
    "Retry",
    "RetryPolicy",
    "SnapshotStore",
    "TransientError",
    "Version",
    "open_store",
    "registered_stores",
    "validate_key",
    "validate_prefix",
]

Version = str
"""An opaque token naming one stored value of a key (a content hash, an ETag, a row version)."""


@runtime_checkable
class SnapshotStore(Protocol):
    """What every snapshot store backend implements."""

    url: str

    def get(self, key: str) -> bytes:
        """Return the value at ``key``; raise ``KeyNotFound`` when there is none."""

    def head(self, key: str) -> tuple[bytes, Version]:
        """Return the value at ``key`` and its version; raise ``KeyNotFound``."""

    def put(self, key: str, data: bytes) -> None:
        """Store an immutable blob; putting the same bytes again is a no-op."""

    def cas(self, key: str, data: bytes, expected: Version | None) -> Version:
        """Replace the value if its version is ``expected`` (create if None), else ``Conflict``."""

    def list(self, prefix: str) -> Iterator[str]:
        """Yield every key that starts with ``prefix``, in no particular order."""

    def delete(self, key: str) -> None:
        """Remove ``key``; removing a missing key is not an error."""

    def close(self) -> None:
        """Release connections and files; calling it twice is fine."""
