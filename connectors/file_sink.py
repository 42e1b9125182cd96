"""A local file written exactly once (DESIGN §6).

Guarantee: **exactly-once.** Output goes to an in-progress file beside the target
(``.NAME.SESSION.part``). At a checkpoint :meth:`FileSink.persist` flushes and fsyncs it and
returns a handle holding its length; the snapshot points after the last byte in that length.
After a crash :meth:`FileSink.recover` truncates the in-progress file back to the handle's
length, dropping whatever was written after the checkpoint, so the bytes written again on
resume appear once. :meth:`FileSink.commit` renames the in-progress file onto the target
atomically: the target path never holds partial output. A commit repeated after it succeeded
is a no-op.

Fencing: the in-progress file is held under an exclusive ``flock`` for the life of the run, so
a second run on the same session cannot write it while the first is alive; the kernel drops the
lock when a process dies, even by SIGKILL.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Any, BinaryIO

from pipeline._fs import fsync_dir
from pipeline.errors import SinkError

_WRITE_BUFFER = 1024 * 1024


class FileSink:
    """An exactly-once local file sink."""

    def __init__(self, url: str, session: str) -> None:
        self.url = url
        self.session = session
        self.path = Path(url.removeprefix("file://"))
        self.part = self.path.with_name(f".{self.path.name}.{session}.part")
        self.length = 0
        self._file: BinaryIO | None = None

    def acquire(self, *, wait: bool = False) -> None:
        """Open the in-progress file under an exclusive lock.

        If another run holds it, fail at once, or with ``wait`` block until that run ends.
        """
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SinkError(f"sink {self.url}: cannot create {self.path.parent}: {exc.strerror}") from exc
        while True:
            fd = self._open_part()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise SinkError(
                    f"session {self.session!r} is held by another run (it is writing {self.path})",
                    hint="pass --wait to wait for it, or stop that run first",
                ) from None
            if self._is_current(fd):
                break
            os.close(fd)  # published or removed while we waited for the lock: lock the new one
        self._file = os.fdopen(fd, "r+b", buffering=_WRITE_BUFFER)

    def _open_part(self) -> int:
        try:
            return os.open(self.part, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise SinkError(f"sink {self.url}: cannot open {self.part}: {exc.strerror}") from exc

    def _is_current(self, fd: int) -> bool:
        """Whether ``fd`` is still the file at the in-progress path (not renamed or unlinked)."""
        try:
            on_disk = os.stat(self.part)
        except FileNotFoundError:
            return False
        held = os.fstat(fd)
        return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)

    def start(self) -> None:
        """Begin a fresh session: an empty in-progress file."""
        self._locked().truncate(0)
        self.length = 0

    def recover(self, handle: dict[str, Any]) -> None:
        """Resume from a checkpoint's handle: drop every byte written after it."""
        file = self._locked()
        length = int(handle["length"])
        actual = os.fstat(file.fileno()).st_size
        if actual == 0 and length > 0 and self.path.exists() and self.path.stat().st_size == length:
            # Published before the crash: the empty file is the one acquire() just created.
            self.part.unlink()
            self.close()
        elif actual < length:
            raise SinkError(
                f"sink {self.url}: in-progress file {self.part} has {actual} bytes, "
                f"fewer than the {length} the checkpoint committed",
                hint="it was changed or removed outside pipeline; rerun with --fresh",
            )
        else:
            file.truncate(length)
            file.seek(length)
        self.length = length

    def _locked(self) -> BinaryIO:
        if self._file is None:
            raise SinkError(f"sink {self.url}: used before acquire()")
        return self._file

    def write(self, data: memoryview | bytes) -> None:
        """Append bytes (a view of guest memory is written without copying it first)."""
        try:
            self._locked().write(data)
        except OSError as exc:
            raise SinkError(f"sink {self.url}: write failed: {exc.strerror}") from exc
        self.length += len(data)

    def persist(self) -> dict[str, Any]:
        """Make everything written so far durable and return the handle to resume from."""
        if self._file is not None:
            try:
                self._file.flush()
                os.fsync(self._file.fileno())
            except OSError as exc:
                raise SinkError(f"sink {self.url}: cannot persist: {exc.strerror}") from exc
        return {"part": str(self.part), "length": self.length}

    def commit(self) -> None:
        """Publish: atomically rename the in-progress file onto the target. Idempotent."""
        if self._file is None or not self.part.exists():
            return  # recover() found it already published, or this sink already committed
        self.persist()
        try:
            os.replace(self.part, self.path)
            fsync_dir(self.path.parent)
        except OSError as exc:
            raise SinkError(f"sink {self.url}: cannot publish: {exc.strerror}") from exc
        # The lock stays held (now on the published file) until close(): a waiting run must not
        # get in before this run has marked the session complete.

    def discard(self) -> None:
        """Remove the in-progress file: a run with nothing to write, or an output a job dropped."""
        with contextlib.suppress(FileNotFoundError):
            self.part.unlink()
        self.close()

    def close(self) -> None:
        """Close the file and release the lock; safe to call twice."""
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
