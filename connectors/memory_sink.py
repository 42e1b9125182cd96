"""An output in fsspec's in-process ``memory://`` filesystem, for tests and notebooks.

Guarantee: **exactly-once within one process**, the same protocol as a local file: output goes
to an in-progress object beside the target (``.NAME~SESSION.part``), written in place, that
:meth:`recover` truncates back to a handle's length; :meth:`commit` moves
it onto the target. The memory filesystem lives as long as the process, so a session can be
resumed by another run in the same process, never after the process dies. A run holds the
session's output through a process-wide lock from :meth:`acquire` to :meth:`close`.
"""

from __future__ import annotations

import threading
from typing import Any

import fsspec

from pipeline.errors import SinkError, SinkGone

_held: set[tuple[str, str]] = set()
_held_lock = threading.Lock()


class MemorySink:
    """An exactly-once ``memory://`` sink (in-process)."""

    def __init__(self, url: str, session: str) -> None:
        self.url = url
        self.session = session
        self._fs = fsspec.filesystem("memory")
        self.path = self._fs._strip_protocol(url)
        directory, _, name = self.path.rpartition("/")
        self.part = f"{directory}/.{name}~{session}.part"
        self.length = 0
        self._flushed = 0
        self._file: Any = None  # the memory filesystem's own file object for the part
        self._held = False

    def acquire(self, *, wait: bool = False) -> None:
        """Hold this session's output in this process (``wait`` cannot apply: runs share a process)."""
        with _held_lock:
            if (self.url, self.session) in _held:
                raise SinkError(f"session {self.session!r} is held by another run (it is writing {self.url})")
            _held.add((self.url, self.session))
        self._held = True

    def start(self) -> None:
        """Begin a fresh session: an empty in-progress object."""
        self._fs.pipe_file(self.part, b"")
        self._file = self._fs.store[self.part]
        self.length = 0

    def recover(self, handle: dict[str, Any], *, finished: bool = False) -> None:
        """Resume from a handle: drop every byte written after it (or, ``finished``, find it published)."""
        length = int(handle["length"])
        published = self._fs.exists(self.path) and self._fs.size(self.path) == length
        if finished and not self._fs.exists(self.part) and published:
            self.length = self._flushed = length
            return
        if not self._fs.exists(self.part):
            raise SinkGone(f"sink {self.url}: in-progress object {self.part} is missing", hint="rerun with --fresh")
        if self._fs.size(self.part) < length:
            raise SinkError(
                f"sink {self.url}: in-progress object {self.part} is shorter than the checkpoint's {length} bytes",
                hint="rerun with --fresh",
            )
        self._file = self._fs.store[self.part]
        self._file.truncate(length)
        self._file.seek(length)
        self.length = self._flushed = length

    def write(self, data: memoryview | bytes) -> None:
        """Append bytes."""
        if self._file is None:
            raise SinkError(f"sink {self.url}: written before start() or recover()")
        self._file.write(data)
        self.length += len(data)

    def flush(self) -> None:
        """Note the length written: memory needs no flushing."""
        self._flushed = self.length

    def sync(self) -> dict[str, Any]:
        """The handle of what the last :meth:`flush` saw (nothing to make durable in memory)."""
        return {"length": self._flushed}

    def commit(self) -> None:
        """Publish: move the in-progress object onto the target. Idempotent."""
        if self._file is None:
            return
        self._fs.mv(self.part, self.path)
        self._file = None

    def discard(self, handle: dict[str, Any] | None = None) -> None:
        """Remove the in-progress object."""
        self._file = None
        if self._fs.exists(self.part):
            self._fs.rm_file(self.part)

    def close(self) -> None:
        """Release the session's output; safe twice."""
        self._file = None
        if self._held:
            with _held_lock:
                _held.discard((self.url, self.session))
            self._held = False
