"""Review of the mends to the staged group commit (1f05fda..7fc9147): each test here fails on 7fc9147."""

from __future__ import annotations

import ctypes
import errno
import threading
import uuid
from pathlib import Path

import pytest
from support import store_temporaries
from test_batch import _digests, _small_batch, _small_batch_killed_at

from pipeline import _fs
from pipeline.batch import run_batch
from pipeline.session import SessionStore
from pipeline.spec import load_job
from pipeline.stores import open_store


def test_a_fresh_rerun_after_a_crash_in_a_group_removes_the_staged_temporary_manifests(tmp_path: Path) -> None:
    """A SIGKILL after a group's syncs but before all its namings leaves one staged
    ``sessions/S/.~manifest.<uuid>.tmp`` per pending session. Only ``_stage_creation`` (a
    *deferred* creation) calls ``_remove_stale_temporaries``; a rerun that is not deferred --
    ``--fresh`` here, or a file that grew past one chunk, or outputs moved to S3 -- creates the
    head through ``_cas``/``_write_atomically``, which removes nothing. The rerun completes every
    session, after which no creation in those folders ever comes again, and ``list`` hides
    ``.~`` names from ``sweep``, ``pipeline rm`` and ``gc``: the files stay in the store forever.
    The docs ("the next creation of the key in that folder removes them") promise otherwise.

    Fix: remove the key's stale temporaries in every creating ``cas`` (``expected is None``),
    deferred or not -- under the directory's flock, where ``_name_created`` links -- or let
    ``SessionStore.sweep``/``pipeline gc`` remove ``.~*.tmp`` files of a session folder."""
    golden_dir, work = _small_batch_killed_at(tmp_path, "manifest-committed:1")
    left = store_temporaries(work / ".pipeline")
    assert left, "the kill left no staged manifest: the scenario did not happen"
    outcomes = run_batch(load_job(work / "nightly.yaml"), fresh=True)
    assert all(o.error is None for o in outcomes), [o.error for o in outcomes]
    assert _digests(work) == _digests(golden_dir)
    assert store_temporaries(work / ".pipeline") == [], f"left by the kill, never removed: {left}"


@pytest.mark.parametrize("backend", ["memory", "postgres"])
def test_a_failed_barrier_does_not_report_sessions_a_remote_store_already_holds_complete(
    tmp_path: Path, monkeypatch, request, backend: str
) -> None:  # type: ignore[no-untyped-def]
    """With a remote store (memory://, PostgreSQL, S3) ``run.complete()`` commits ``complete``
    durably at once, after the first sync made the outputs durable: the session *is* complete.
    The barrier that follows only publishes the staged ``_committed`` steps (release, fault
    points) and syncs local filesystems that hold nothing this store needs. If one of its
    syncfs calls fails -- since Linux 5.8 syncfs reports any writeback error on the filesystem
    since its fd was opened, an unrelated process's included -- ``_commit`` turns it into a
    ``StoreError`` for *every* session of the group: the batch reports failed (exit 1, no
    result) sessions whose store says complete, and their rerun says "already complete".

    Fix: a session whose ``complete`` commit returned without staging its naming (a store that
    is durable on return) is complete whatever the barrier does: map a barrier failure only to
    the sessions with a staged naming not yet synced (or do not run the barrier's syncs for a
    remote store's group at all: its first sync is the one that matters)."""
    store_url = request.getfixturevalue("postgres_url") if backend == "postgres" else f"memory://r4-{uuid.uuid4().hex}"
    in_barrier = threading.local()
    real_barrier, real_syncfs = _fs.DeferredSyncs.barrier, _fs._syncfs
    assert real_syncfs is not None

    def barrier(self: _fs.DeferredSyncs) -> dict[str, Exception]:
        in_barrier.on = True
        try:
            return real_barrier(self)
        finally:
            in_barrier.on = False

    refused: list[int] = []

    def syncfs(fd: int) -> int:
        if getattr(in_barrier, "on", False):
            refused.append(fd)
            ctypes.set_errno(errno.EIO)
            return -1
        return real_syncfs(fd)

    monkeypatch.setattr(_fs.DeferredSyncs, "barrier", barrier)
    monkeypatch.setattr(_fs, "_syncfs", syncfs)
    job = load_job(_small_batch(tmp_path, files=4))
    outcomes = run_batch(job, store_url=store_url)
    assert refused, "no group barrier ran: the scenario did not happen"
    failed = [o.session for o in outcomes if o.error is not None]
    store = open_store(store_url, base_dir=job.base_dir)
    try:
        heads = {o.session: SessionStore(store, o.session).read_head() for o in outcomes}
    finally:
        store.close()
    assert all(head is not None and head.state == "complete" for head in heads.values()), heads
    assert failed == [], f"reported failed, yet complete (and durable) in the store: {failed}"
