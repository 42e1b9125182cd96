"""A local file written exactly once (DESIGN §6).

Guarantee: **exactly-once.** Output goes to an in-progress file beside the target
(``.NAME~SESSION.part``). At a checkpoint :meth:`FileSink.flush` hands the written bytes to the
OS and :meth:`FileSink.sync` fsyncs them and returns a handle holding their length; the snapshot
points after the last byte in that length.
After a crash :meth:`FileSink.recover` truncates the in-progress file back to the handle's
length, dropping whatever was written after the checkpoint, so the bytes written again on
resume appear once. :meth:`FileSink.commit` renames the in-progress file onto the target
atomically: the target path never holds partial output. A commit repeated after it succeeded
is a no-op.

Fencing: a run holds an exclusive ``flock`` on ``.NAME~SESSION.lock`` from :meth:`acquire` to
:meth:`close` — past the publish, until the run has recorded that it published — so a second run
of the session can neither write the in-progress file nor resume a session whose first run is
still finishing. The kernel drops the lock when a process dies, even by SIGKILL. The lock file
is never renamed; it is unlinked by its holder at close, and a waiter that finds it unlinked or
replaced after getting the lock simply locks the new one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Any, BinaryIO

from pipeline._fs import fsync, fsync_dir
from pipeline.errors import SinkError, SinkGone

# Writes at least this large go from guest memory to the kernel without a copy; smaller ones
# are gathered. Guests emit blocks of 64 KiB and more: a 1 MiB buffer copied each one first
# (200 MB csv-map job: 0.82 -> 0.69 s of CPU without checkpoints, medians of 5).
_WRITE_BUFFER = 64 * 1024
_WRITE_BACK_EVERY = 8 * 1024 * 1024


class FileSink:
    """An exactly-once local file sink."""

    def __init__(self, url: str, session: str) -> None:
        self.url = url
        self.session = session
        self.path = Path(url.removeprefix("file://"))
        # "~" cannot occur in a session id, so NAME~SESSION names one (target, session) pair.
        self.part = self.path.with_name(f".{self.path.name}~{session}.part")
        self.lock_path = self.path.with_name(f".{self.path.name}~{session}.lock")
        self.length = 0
        self._written_back = 0
        self._durable = 0  # bytes known to be on disk
        self._flushed = 0  # bytes handed to the OS by the last flush()
        self._lock_fd: int | None = None
        self._file: BinaryIO | None = None

    # -- fencing --------------------------------------------------------------------------
    def acquire(self, *, wait: bool = False) -> None:
        """Take the session's lock on this output; fail at once, or with ``wait`` block, if held."""
        while True:
            try:
                fd = self._open_lock_file()
            except OSError as exc:
                raise SinkError(f"sink {self.url}: cannot open {self.lock_path}: {exc.strerror}") from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise SinkError(
                    f"session {self.session!r} is held by another run (it is writing {self.path})",
                    hint="pass --wait to wait for it, or stop that run first",
                ) from None
            if _same_file(fd, self.lock_path):
                self._lock_fd = fd
                return
            os.close(fd)  # its holder unlinked it while we waited: lock the current one

    def _open_lock_file(self) -> int:
        try:
            return os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # the first output into a new folder (tried second: one syscall less)
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise SinkError(f"sink {self.url}: cannot create {self.path.parent}: {exc.strerror}") from exc
            return os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)

    def _check_held(self) -> None:
        if self._lock_fd is None:
            raise SinkError(f"sink {self.url}: used before acquire()")

    # -- writing --------------------------------------------------------------------------
    def _open_part(self, *, truncate: bool) -> BinaryIO:
        self._check_held()
        flags = os.O_RDWR | os.O_CREAT | (os.O_TRUNC if truncate else 0)
        try:
            fd = os.open(self.part, flags, 0o644)
        except OSError as exc:
            raise SinkError(f"sink {self.url}: cannot open {self.part}: {exc.strerror}") from exc
        return os.fdopen(fd, "r+b", buffering=_WRITE_BUFFER)

    def start(self) -> None:
        """Begin a fresh session: an empty in-progress file."""
        self._file = self._open_part(truncate=True)
        self.length = self._durable = self._flushed = self._written_back = 0

    def recover(self, handle: dict[str, Any], *, finished: bool = False) -> None:
        """Resume from a checkpoint's handle: drop every byte written after it.

        With ``finished`` a missing in-progress file and a target of the handle's length mean
        the run published before it could record so: ``commit()`` has nothing left to do.
        """
        self._check_held()
        length = int(handle["length"])
        if not self.part.exists():
            if finished and self.path.exists() and self.path.stat().st_size == length:
                self.length = length
                return
            raise SinkGone(
                f"sink {self.url}: in-progress file {self.part} is missing",
                hint="it was removed outside pipeline; rerun with --fresh",
            )
        file = self._open_part(truncate=False)
        actual = os.fstat(file.fileno()).st_size
        if actual < length:
            file.close()
            raise SinkError(
                f"sink {self.url}: in-progress file {self.part} has {actual} bytes, "
                f"fewer than the {length} the checkpoint committed",
                hint="it was changed or removed outside pipeline; rerun with --fresh",
            )
        file.truncate(length)
        file.seek(length)
        self._file = file
        self.length = self._durable = self._flushed = self._written_back = length

    def write(self, data: memoryview | bytes) -> None:
        """Append bytes (a view of guest memory is written without copying it first)."""
        if self._file is None:
            raise SinkError(f"sink {self.url}: written before start() or recover()")
        try:
            self._file.write(data)
        except OSError as exc:
            raise SinkError(f"sink {self.url}: write failed: {exc.strerror}") from exc
        self.length += len(data)
        if self.length - self._written_back >= _WRITE_BACK_EVERY:
            self._start_write_back()

    def _start_write_back(self) -> None:
        """Have the kernel start writing to disk what is surely in its hands (all but the buffer).

        Why: otherwise a file's dirty pages wait for the next fsync, which then writes them all
        while the run stands still: on the 300 MB csv-map benchmark the closing fsync took 48 ms
        of a 0.46 s run, 6 ms after this. ``POSIX_FADV_DONTNEED`` starts writeback of the range
        without waiting for it (dirty pages stay cached until written).
        """
        assert self._file is not None
        end = self.length - _WRITE_BUFFER
        os.posix_fadvise(self._file.fileno(), self._written_back, end - self._written_back, os.POSIX_FADV_DONTNEED)
        self._written_back = end

    def flush(self) -> None:
        """Hand every written byte to the OS, for :meth:`sync` to make durable."""
        if self._file is not None:
            try:
                self._file.flush()
            except OSError as exc:
                raise SinkError(f"sink {self.url}: cannot persist: {exc.strerror}") from exc
        self._flushed = self.length

    def sync(self) -> dict[str, Any]:
        """Fsync the bytes the last :meth:`flush` handed on (safe while writes go on); their handle."""
        flushed = self._flushed
        if self._file is None or self._durable == flushed:
            return {"length": flushed}  # nothing new since the last sync: skip an fsync (small files do it often)
        try:
            fsync(self._file.fileno())
        except OSError as exc:
            raise SinkError(f"sink {self.url}: cannot persist: {exc.strerror}") from exc
        self._durable = flushed
        return {"length": flushed}

    def commit(self) -> None:
        """Publish: atomically rename the in-progress file onto the target. Idempotent."""
        if self._file is None:
            return  # recover() found it already published
        self.flush()
        self.sync()
        try:
            os.replace(self.part, self.path)
            fsync_dir(self.path.parent)
        except OSError as exc:
            raise SinkError(f"sink {self.url}: cannot publish: {exc.strerror}") from exc
        self._close_file()

    def discard(self, handle: dict[str, Any] | None = None) -> None:
        """Remove the in-progress file (its handle says nothing more): a restart, or ``pipeline rm``."""
        self._close_file()
        with contextlib.suppress(FileNotFoundError):
            self.part.unlink()

    # -- closing --------------------------------------------------------------------------
    def _close_file(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    def close(self) -> None:
        """Close the file and release the lock (removing the lock file); safe to call twice."""
        self._close_file()
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                self.lock_path.unlink()  # while still holding it: waiters re-check and retry
            os.close(self._lock_fd)
            self._lock_fd = None


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``fd`` is still the file at ``path`` (not unlinked or replaced)."""
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)
