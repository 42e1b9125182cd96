"""A session's persistent state in a snapshot store: its manifests and page blobs.

Keys, for session ``S``::

    sessions/S/manifest            the head: the one compare-and-swap commit point
    sessions/S/manifests/<seq>     copies of the last ``keep`` committed manifests (immutable)
    sessions/S/pages/<blob id>     page blobs, content-addressed

The head decides; the copies are the fallback when the head is damaged. A blob is released only
when no manifest in the window of the last ``keep`` references it, so resuming from any of them
finds all its pages.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from pipeline.errors import Conflict, KeyNotFound, SnapshotCorrupt
from pipeline.snapshot import Manifest, blob_key
from pipeline.stores import SnapshotStore

log = logging.getLogger("pipeline")

DEFAULT_KEEP = 2


@dataclass
class Candidate:
    """A manifest a run could resume from, with the key it was read from."""

    manifest: Manifest
    key: str


class SessionStore:
    """Reads and commits one session's manifests; releases what no kept manifest needs."""

    def __init__(self, store: SnapshotStore, session: str, *, keep: int = DEFAULT_KEEP) -> None:
        self.store = store
        self.session = session
        self.keep = max(1, keep)
        self.prefix = f"sessions/{session}/"
        self.head_key = f"{self.prefix}manifest"
        self.history_prefix = f"{self.prefix}manifests/"
        self.pages_prefix = f"{self.prefix}pages/"
        self.version: str | None = None
        """The head's version as this process last read or wrote it: the CAS expectation."""
        self._window: deque[tuple[int, frozenset[str]]] = deque()

    def page_key(self, blob_id: str) -> str:
        return blob_key(self.pages_prefix, blob_id)

    def _history_key(self, seq: int) -> str:
        return f"{self.history_prefix}{seq:012d}"

    # -- reading --------------------------------------------------------------------------
    def candidates(self) -> Iterator[Candidate]:
        """Committed manifests, newest first: the head, then the kept copies older than it.

        A damaged head is skipped with a warning. Sets :attr:`version` to the head's version
        (damaged or not), so the first commit replaces it.
        """
        head_seq: int | None = None
        try:
            head = self.read_head()
        except SnapshotCorrupt as exc:
            log.warning("%s; trying the checkpoint before it", exc)
        else:
            if head is None:
                return
            head_seq = head.seq
            yield Candidate(head, self.head_key)
        for key in sorted(self.store.list(self.history_prefix), reverse=True):
            try:
                manifest = Manifest.from_bytes(self.store.get(key), key)
            except (SnapshotCorrupt, KeyNotFound) as exc:
                log.warning("%s; trying an older checkpoint", exc)
                continue
            if head_seq is None or manifest.seq < head_seq:
                yield Candidate(manifest, key)

    def read_head(self) -> Manifest | None:
        """The head manifest, or None when the session does not exist.

        A damaged head raises ``SnapshotCorrupt``, with :attr:`version` still set to the damaged
        value's version so a commit can replace it.
        """
        try:
            blob, self.version = self.store.head(self.head_key)
        except KeyNotFound:
            return None
        except SnapshotCorrupt as exc:  # an encrypting store checks integrity as it reads
            self.version = getattr(exc, "version", None)
            raise
        return Manifest.from_bytes(blob, self.head_key)

    # -- committing -----------------------------------------------------------------------
    def adopt(self, manifest: Manifest) -> None:
        """Start the retention window from a manifest this run resumes (or starts) from."""
        self._window = deque([(manifest.seq, frozenset(manifest.blob_ids()))])

    def adopt_kept(self) -> None:
        """Start the window from every committed manifest still readable (for a sweep)."""
        self._window = deque(sorted((c.manifest.seq, frozenset(c.manifest.blob_ids())) for c in self.candidates()))

    def check_lease(self) -> None:
        """Raise ``Conflict`` unless the head is still the one this process last committed.

        A read, not a write: before publishing, a run whose last commit was its ``starting``
        manifest makes sure no other run has taken the session since.
        """
        try:
            _, version = self.store.head(self.head_key)
        except (KeyNotFound, SnapshotCorrupt):
            version = None
        if version is None or version != self.version:
            raise self._lost()

    def _lost(self) -> Conflict:
        return Conflict(
            f"session {self.session!r} is held by another run (its checkpoint moved underneath this one)",
            hint="only one run per session may proceed; this run stopped without publishing",
        )

    def commit(self, manifest: Manifest) -> None:
        """CAS the head (``Conflict`` = the lease was lost), then keep a copy of it.

        The copy is written only after the CAS wins, so a run that lost its lease never
        overwrites the winner's copies. A crash between the two loses only a fallback.
        """
        data = manifest.to_bytes()
        try:
            self.version = self.store.cas(self.head_key, data, self.version)
        except Conflict:
            raise self._lost() from None
        # A copy is a fallback worth its write only where it saves work: a "starting" or
        # "complete" head resumes nothing, and a session that finished before its first
        # checkpoint (no pages: a small file) redoes no more with --fresh than from a copy.
        if manifest.state == "running" or (manifest.state == "finished" and manifest.stages):
            self.store.put(self._history_key(manifest.seq), data)

    def release(self, manifest: Manifest) -> None:
        """After a commit: forget manifests beyond the window and blobs only they referenced."""
        keep = 1 if manifest.state == "complete" else self.keep
        self._window.append((manifest.seq, frozenset(manifest.blob_ids())))
        dropped: list[tuple[int, frozenset[str]]] = []
        while len(self._window) > keep:
            dropped.append(self._window.popleft())
        if not dropped:
            return
        live = self.referenced()
        for seq, blobs in dropped:
            for blob_id in blobs - live:
                self.store.delete(self.page_key(blob_id))
            self.store.delete(self._history_key(seq))

    def referenced(self) -> frozenset[str]:
        """Blob ids some manifest in the window still needs."""
        return frozenset().union(*(blobs for _, blobs in self._window))

    def sweep(self) -> int:
        """Delete page blobs and manifest copies outside the window (left by a crash).

        Call it only while holding the session (after taking the lease); returns how many keys
        it deleted.
        """
        live_blobs = self.referenced()
        live_seqs = {seq for seq, _ in self._window}
        deleted = 0
        for key in list(self.store.list(self.pages_prefix)):
            if key.removeprefix(self.pages_prefix) not in live_blobs:
                self.store.delete(key)
                deleted += 1
        for key in list(self.store.list(self.history_prefix)):
            suffix = key.removeprefix(self.history_prefix)
            if not suffix.isdigit() or int(suffix) not in live_seqs:
                self.store.delete(key)
                deleted += 1
        return deleted

    def delete_all(self) -> None:
        """Remove every key of the session (``pipeline rm``)."""
        for key in list(self.store.list(self.prefix)):
            if key != self.head_key:
                self.store.delete(key)
        self.store.delete(self.head_key)  # last, so a crash mid-way still lists the session


def list_sessions(store: SnapshotStore) -> list[str]:
    """Names of the sessions a store holds, sorted."""
    names = set()
    for key in store.list("sessions/"):
        parts = key.split("/")
        if len(parts) == 3 and parts[2] == "manifest":
            names.add(parts[1])
    return sorted(names)
