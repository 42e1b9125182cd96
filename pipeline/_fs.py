"""Small filesystem helpers shared by stores and sinks: URL schemes, fsyncs, deferred fsyncs.

Every fsync the directory store and the file sinks make goes through :func:`fsync` or
:func:`fsync_dir`. Inside :func:`deferred_syncs` they only note the file's filesystem, and
:meth:`DeferredSyncs.barrier` later syncs each noted filesystem once (``syncfs``): a group of
small sessions then makes its writes durable with three syncs instead of ~7 fsyncs each
(group commit; see ``runner.SessionGroup``). Outside it they fsync at once, as always. A rename
that must not reach the disk before the bytes it names (the store's manifests) is *staged*
instead: the barrier makes it between its two syncs.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

_libc = ctypes.CDLL(None, use_errno=True)
_syncfs = getattr(_libc, "syncfs", None)  # Linux only
_statfs = getattr(_libc, "statfs", None)
# Local filesystems whose syncfs makes writes durable as fsync does (statfs f_type): ext2/3/4,
# XFS, btrfs, F2FS, tmpfs. Not FUSE (sshfs, gcsfuse: the daemon gets no FSYNC), network or
# cluster filesystems (NFS, SMB, 9p, Ceph, Lustre), nor overlayfs (older kernels did not pass
# the upper layer's writeback errors to syncfs): an allowlist, so one not known here is refused.
_SYNCFS_TRUSTED = {0xEF53, 0x58465342, 0x9123683E, 0xF2F52010, 0x01021994}


@functools.cache
def _kernel() -> tuple[int, ...]:
    release = os.uname().release.split("-")[0].split(".")
    return tuple(int(part) for part in release[:2] if part.isdigit())


def barrier_covers(path: Path) -> bool:
    """Whether a :class:`DeferredSyncs` barrier can stand in for fsyncs of files in ``path``.

    Linux 5.8 or later (before, syncfs returned 0 even when writeback failed) and a local
    filesystem it knows; elsewhere a group commit fsyncs as a single run does.
    """
    if _syncfs is None or _statfs is None or _kernel() < (5, 8):
        return False
    buffer = ctypes.create_string_buffer(256)  # struct statfs; f_type is its first field
    if _statfs(os.fsencode(path), buffer) != 0:
        return False
    # A long (signed) on most ABIs: the mask reads a 32-bit one's magic above 2**31 right. Where
    # f_type is laid out otherwise (s390x), no magic matches and deferral is refused.
    return ctypes.c_long.from_buffer(buffer).value & 0xFFFFFFFF in _SYNCFS_TRUSTED


@dataclass
class _Staged:
    owner: str | None
    key: object
    publish: Callable[[], None]
    discard: Callable[[], None] | None

    def drop(self) -> None:
        if self.discard is not None:
            self.discard()


class DeferredSyncs:
    """Fsyncs put off to one :meth:`barrier`: it syncs every filesystem they touched, once.

    Why whole filesystems: a barrier of small sessions covers some 7 fsyncs of small files each
    (their data, the renames publishing them, the store's manifests); on the benchmark disk one
    ``syncfs`` per 8-32 sessions cost 0.24 ms a session against 1.27 ms for the fsyncs. The
    price: a barrier also waits for whatever else is dirty on those filesystems.
    """

    def __init__(self) -> None:
        self._filesystems: dict[int, int] = {}  # st_dev -> an fd open on that filesystem
        self._directories: set[Path] = set()  # noted already: no need to open them again
        self._staged: list[_Staged] = []
        self._keyed: dict[object, _Staged] = {}  # the staged steps that have a key, by key
        self._owner: str | None = None

    @contextlib.contextmanager
    def owner(self, name: str) -> Iterator[None]:
        """Within the block, :meth:`stage` files what it stages under ``name``: the barrier
        reports its failure under that name and skips the owner's later steps."""
        previous, self._owner = self._owner, name
        try:
            yield
        finally:
            self._owner = previous

    def stage(
        self, publish: Callable[[], None], discard: Callable[[], None] | None = None, *, key: object = None
    ) -> None:
        """A step that must wait until what is noted so far is durable — naming a file whose
        bytes were written unsynced, say: :meth:`barrier` calls ``publish`` between its two
        syncs, or ``discard`` (if any) when it never gets that far. ``publish`` makes changes
        only on filesystems already noted (the second sync covers those alone).

        A step staged again under the same ``key`` (not None) replaces the earlier one, which
        is discarded: a store's retried write stages its value once.
        """
        item = _Staged(self._owner, key, publish, discard)
        if key is not None:
            replaced = self._keyed.pop(key, None)
            if replaced is not None:
                self._staged.remove(replaced)
                replaced.drop()
            self._keyed[key] = item
        self._staged.append(item)

    def keyed_owners(self) -> set[str]:
        """The owners of a keyed step still staged: a store's staged value, which the barrier
        must name before their commit holds."""
        return {item.owner for item in self._keyed.values() if item.owner is not None}

    def drop(self, owner: str) -> None:
        """Discard what ``owner`` staged (its later work failed: none of it may be published)."""
        for item in [item for item in self._staged if item.owner == owner]:
            self._staged.remove(item)
            self._keyed.pop(item.key, None)
            item.drop()

    def note(self, fd: int) -> None:
        """Remember ``fd``'s filesystem for the next barrier (``fd`` may be closed after)."""
        device = os.fstat(fd).st_dev
        if device not in self._filesystems:
            self._filesystems[device] = os.dup(fd)

    def note_directory(self, path: Path) -> None:
        """:meth:`note` for a directory (opened only the first time before a barrier)."""
        if path not in self._directories:
            fd = os.open(path, os.O_RDONLY)
            try:
                self.note(fd)
            finally:
                os.close(fd)
            self._directories.add(path)

    def barrier(self) -> dict[str, Exception]:
        """Make everything written on the noted filesystems durable; then, if anything is
        staged, publish it in order and sync again; then forget it all.

        Returns the owners whose step raised, with what it raised: their later steps are
        discarded, every other owner's go on. Raises ``OSError`` when a sync fails (what was
        not yet published is discarded), and what a step outside any :meth:`owner` raised.
        """
        failed: dict[str, Exception] = {}
        try:
            self.sync()
            if self._staged:
                while self._staged:
                    item = self._staged.pop(0)
                    self._keyed.pop(item.key, None)
                    if item.owner in failed:
                        item.drop()
                        continue
                    try:
                        item.publish()
                    except Exception as exc:
                        if item.owner is None:
                            raise  # nobody to report it for: the whole barrier fails
                        failed[item.owner] = exc
                self.sync()
        finally:
            self.close()
        return failed

    def sync(self) -> None:
        """Make everything written on the noted filesystems durable now; raises ``OSError``."""
        for fd in self._filesystems.values():
            assert _syncfs is not None, "deferred only where barrier_covers() said so"
            if _syncfs(fd) != 0:
                errno = ctypes.get_errno()
                raise OSError(errno, os.strerror(errno))

    def close(self) -> None:
        """Forget what is noted without syncing it, and discard what is staged (the group
        failed; nothing relies on it)."""
        staged, self._staged, self._keyed = self._staged, [], {}
        try:
            for item in staged:
                item.drop()
        finally:
            for fd in self._filesystems.values():
                os.close(fd)
            self._filesystems = {}
            self._directories = set()


_deferred: ContextVar[DeferredSyncs | None] = ContextVar("pipeline_deferred_syncs", default=None)


@contextlib.contextmanager
def deferred_syncs(syncs: DeferredSyncs) -> Iterator[DeferredSyncs]:
    """Within the block (on this thread), :func:`fsync` and :func:`fsync_dir` note into ``syncs``."""
    token = _deferred.set(syncs)
    try:
        yield syncs
    finally:
        _deferred.reset(token)


def deferring() -> DeferredSyncs | None:
    """The :class:`DeferredSyncs` this thread notes into (inside :func:`deferred_syncs`), or None."""
    return _deferred.get()


def fsync(fd: int) -> None:
    """``os.fsync(fd)``, or inside :func:`deferred_syncs` a note for the barrier."""
    deferred = _deferred.get()
    if deferred is None:
        os.fsync(fd)
    else:
        deferred.note(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable (POSIX needs the directory fsynced)."""
    deferred = _deferred.get()
    if deferred is not None:
        deferred.note_directory(path)
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def url_scheme(url: str) -> str:
    """``s3`` for ``s3://b/k``; ``file`` for a plain path. Case kept, as fsspec keeps it."""
    return url.split("://", 1)[0] if "://" in url else "file"
