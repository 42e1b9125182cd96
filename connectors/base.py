"""The sink protocol every output implements, and choosing a sink by URL.

A sink writes to an in-progress place, hands each checkpoint a recoverable handle, can be put
back to exactly that handle after a crash, and publishes at the end (DESIGN §6)::

    acquire(wait)   fence: hold the session's in-progress place for this run (or fail / wait)
    start()         a new session: empty output
    recover(handle, finished)  a resumed session: drop everything written after the handle;
                    with ``finished`` (the handle is from the run's last checkpoint) the output
                    may turn out to be published already
    write(data)     append bytes (often a view of guest memory: don't keep it)
    flush()         at a checkpoint, on the run's thread: hand every byte written so far on to
                    the next sync(); cheap (no waiting on a disk or a network)
    sync()          make the bytes the last flush() handed on durable and return the JSON-able
                    handle naming exactly them; may run on the checkpoint thread while write()
                    goes on (the next flush() comes only after it returned)
    commit()        publish atomically; idempotent, and a no-op when already published
    discard(handle) throw the in-progress output a handle names away (``--fresh``, ``pipeline rm``)
    close()         release files, locks and connections; safe twice

A sink that cannot make every byte durable at its destination between checkpoints (an S3
upload's tail, buffered below the part size) keeps those bytes in the session's snapshot store
through a :class:`Stash`, and lists the blobs in its handle under ``"blobs"`` (blob id ->
stored size) so that the store keeps them exactly as long as a manifest needs them.

Each sink's docstring states its guarantee (exactly-once or at-least-once).
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from typing import Any, Protocol

from pipeline.errors import SpecError
from pipeline.spec import OutputSpec


class Sink(Protocol):
    """One output of a session."""

    url: str
    length: int
    """Bytes written so far in the session (restored by ``recover``)."""

    def acquire(self, *, wait: bool = False) -> None: ...
    def start(self) -> None: ...
    def recover(self, handle: dict[str, Any], *, finished: bool = False) -> None: ...
    def write(self, data: memoryview | bytes) -> None: ...
    def flush(self) -> None: ...
    def sync(self) -> dict[str, Any]: ...
    def commit(self) -> None: ...
    def discard(self, handle: dict[str, Any] | None = None) -> None: ...
    def close(self) -> None: ...


class Stash(Protocol):
    """Bytes a sink keeps in the session's snapshot store, content-addressed."""

    def put(self, data: bytes) -> tuple[str, int]:
        """Store ``data``; return its blob id and the bytes it occupies in the store."""
        ...

    def get(self, blob_id: str) -> bytes:
        """The bytes a :meth:`put` stored (``SnapshotCorrupt`` if missing or damaged)."""
        ...


def open_sink(spec: OutputSpec, session: str, *, stash: Stash | None = None) -> Sink:
    """The sink writing ``spec`` for ``session`` (``stash`` is needed by ``s3://`` outputs)."""
    if spec.format == "parquet":
        parquet_sink = _connector("parquet_sink", "pyarrow", "parquet", "format: parquet")
        return parquet_sink.ParquetSink(spec, session, stash=stash)
    scheme = spec.scheme
    if scheme == "file":
        from pipeline.connectors.file_sink import FileSink

        return FileSink(spec.url, session)
    if scheme == "s3":
        return _connector("s3_sink", "s3fs", "s3", "s3:// outputs").S3Sink(spec, session, stash=stash)
    if scheme == "memory":
        from pipeline.connectors.memory_sink import MemorySink

        return MemorySink(spec.url, session)
    raise SpecError(f"sink {spec.url}: no sink writes {scheme}:// URLs (local paths, s3:// and memory:// do)")


def _connector(module: str, needs: str, extra: str, what: str) -> Any:
    """A sink module that needs an optional dependency, or a clear error saying how to get it."""
    try:
        importlib.import_module(needs)  # up front: the Parquet sink imports pyarrow only to convert
        return importlib.import_module(f"pipeline.connectors.{module}")
    except ImportError as exc:
        raise SpecError(
            f"{what} need an optional dependency ({exc.name or needs} is missing)",
            hint=f"pip install 'wasm-pipeline[{extra}]'",
        ) from None


@contextlib.contextmanager
def open_recorded_sink(entry: dict[str, Any], session: str) -> Iterator[Sink]:
    """The sink of a manifest's ``sinks`` entry, held (``acquire``) until the block ends.

    For discarding what an earlier run left in progress. Manifests never record storage
    options: remote outputs are reached with the environment's (``AWS_ENDPOINT_URL``, profiles,
    fsspec config).
    """
    sink = open_sink(OutputSpec(url=entry["url"], format=entry.get("format", "raw")), session)
    try:
        sink.acquire()
        yield sink
    finally:
        sink.close()
