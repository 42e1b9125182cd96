"""The sink protocol every output implements, and choosing a sink by URL.

A sink writes to an in-progress place, hands each checkpoint a recoverable handle, can be put
back to exactly that handle after a crash, and publishes at the end (DESIGN §6)::

    acquire(wait)   fence: hold the session's in-progress place for this run (or fail / wait)
    start()         a new session: empty output
    recover(handle) a resumed session: drop everything written after the handle
    write(data)     append bytes (often a view of guest memory: don't keep it)
    persist()       make all written bytes durable; return the JSON-able handle to resume from
    commit()        publish atomically; idempotent, and a no-op when already published
    discard()       throw the in-progress output away (``--fresh``, ``pipeline rm``)
    close()         release files, locks and connections; safe twice

Each sink's docstring states its guarantee (exactly-once or at-least-once).
"""

from __future__ import annotations

from typing import Any, Protocol
from urllib.parse import urlsplit

from pipeline.errors import SpecError


class Sink(Protocol):
    """One output of a session."""

    url: str
    length: int
    """Bytes written so far in the session (restored by ``recover``)."""

    def acquire(self, *, wait: bool = False) -> None: ...
    def start(self) -> None: ...
    def recover(self, handle: dict[str, Any]) -> None: ...
    def write(self, data: memoryview | bytes) -> None: ...
    def persist(self) -> dict[str, Any]: ...
    def commit(self) -> None: ...
    def discard(self) -> None: ...
    def close(self) -> None: ...


def open_sink(url: str, session: str) -> Sink:
    """The sink for ``url``: a local path (or ``file://``) for now."""
    scheme = urlsplit(url).scheme if "://" in url else "file"
    if scheme == "file":
        from pipeline.connectors.file_sink import FileSink

        return FileSink(url, session)
    raise SpecError(f"sink {url}: no sink for {scheme}:// URLs yet (local paths are supported)")
