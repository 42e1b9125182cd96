"""Review of the staged group commit (0ec4196..43621ff): each test here failed on 43621ff."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import uuid
from pathlib import Path

import pytest
from support import store_temporaries
from test_batch import KILL_ENV, _rerun_completes_golden, _run_command, _small_batch, _small_batch_killed_at

from pipeline import _fs
from pipeline._fs import DeferredSyncs, deferred_syncs
from pipeline.batch import batch_status, run_batch
from pipeline.errors import Conflict
from pipeline.spec import load_job
from pipeline.stores._retry import inject_faults
from pipeline.stores.directory import DirectoryStore


def _events_around_remote_commits(tmp_path: Path, monkeypatch, store_url: str) -> list[str]:  # type: ignore[no-untyped-def]
    events: list[str] = []
    lock = threading.Lock()
    real_syncfs = _fs._syncfs
    assert real_syncfs is not None

    def syncfs(fd: int) -> int:
        result = real_syncfs(fd)
        with lock:
            events.append("sync")
        return result

    monkeypatch.setattr(_fs, "_syncfs", syncfs)
    from pipeline.session import SessionStore

    real_commit = SessionStore.commit

    def commit(self: SessionStore, manifest) -> None:  # type: ignore[no-untyped-def]
        real_commit(self, manifest)
        with lock:
            events.append(f"{manifest.state} {self.session}")

    monkeypatch.setattr(SessionStore, "commit", commit)
    job_file = _small_batch(tmp_path, files=4)
    outcomes = run_batch(load_job(job_file), store_url=store_url)
    assert all(o.error is None for o in outcomes), [o.error for o in outcomes]
    return events


@pytest.mark.parametrize("backend", ["memory", "postgres"])
def test_a_group_on_a_remote_store_makes_the_outputs_durable_before_their_complete_commit(
    tmp_path: Path, monkeypatch, request, backend: str
) -> None:  # type: ignore[no-untyped-def]
    """``_may_defer`` lets a session of a remote store (PostgreSQL, S3, memory://) defer:
    ``_local_root`` stands the working directory in for the store. Before 43621ff the group
    synced the published outputs (barrier 1) before any ``complete`` commit; now ``complete()``
    runs first and relies on the store to *stage* its ``cas`` -- which only the directory store
    does. A remote store commits ``complete`` at once (durable on return), and only then does the
    group ``syncfs`` the outputs: a power loss in between leaves a session its store calls
    complete whose outputs are empty or missing, and a rerun skips it as already complete."""
    if backend == "postgres":
        store_url = request.getfixturevalue("postgres_url")
    else:
        store_url = f"memory://review3-{uuid.uuid4().hex}"
    events = _events_around_remote_commits(tmp_path, monkeypatch, store_url)
    assert "sync" in events, f"no session was deferred: {events}"
    commits = [i for i, e in enumerate(events) if e.startswith("complete ")]
    assert commits, events
    first_sync = events.index("sync")
    assert first_sync < commits[0], f"a 'complete' commit before any sync of its outputs: {events}"


def test_a_retried_creating_cas_in_a_group_stages_once(tmp_path: Path) -> None:
    """``Retry.cas`` settles a try whose answer was lost by reading the key back; in a group
    the key is only staged, so the read finds nothing and the retry *stages the value a second
    time*. At the barrier the first link names the key and the second meets it: ``Conflict``
    for a session whose head is in place, complete and durable -- reported failed (and its
    outputs' locks released as a failure). The conformance suite's "landed; only the answer
    was lost" case, which passes outside a group, fails inside one."""
    store = DirectoryStore(str(tmp_path))
    syncs = DeferredSyncs()
    faults = inject_faults(store.retry, count=1, phase="after", ops=frozenset({"cas"}))
    with deferred_syncs(syncs), faults, syncs.owner("a"):
        store.cas("sessions/a/manifest", b"complete", None)
    failed = syncs.barrier()
    assert store.get("sessions/a/manifest") == b"complete"
    assert failed == {}, f"the session's own staged copy conflicted with itself: {failed}"


def test_a_staged_step_outside_any_owner_is_not_filed_under_an_empty_session_name(tmp_path: Path) -> None:
    """(Low: an API hazard, no caller does it today.) A ``stage`` outside any ``owner()``
    block files its failure under ``""``; a caller that maps failures back to sessions
    (``SessionGroup._commit``) reports a session named ``""`` and none of its own.
    ``stage`` should require an owner (or ``barrier`` raise for one it cannot attribute)."""
    store = DirectoryStore(str(tmp_path))
    syncs = DeferredSyncs()
    with deferred_syncs(syncs):
        store.cas("sessions/a/manifest", b"group", None)
    store.cas("sessions/a/manifest", b"another run", None)
    with pytest.raises(Conflict):  # nobody to report it for: the barrier fails as a whole
        syncs.barrier()
    assert store_temporaries(tmp_path) == []


@pytest.mark.parametrize(
    "kill_at",
    [
        "manifest-committed:1",  # after the syncs and one naming: the rest staged, unnamed
        "released:1",  # the same place: a session's release follows its naming
    ],
)
def test_sigkill_between_staging_and_naming_leaves_no_temporary_manifest_after_a_rerun(
    tmp_path: Path, kill_at: str
) -> None:
    """A staged manifest lives as ``sessions/S/.~manifest.<uuid>.tmp`` for the whole group
    (up to 32 sessions or a quarter second), not for one fsync as before. A SIGKILL in that
    window leaves one per pending session; the rerun produces golden outputs but stages
    *new* temporary files and never removes the old ones (a deferred session has no head, so
    no sweep; ``list`` hides ``.~`` names from ``sweep`` and ``pipeline rm`` anyway): they
    stay in the store forever, one per crash and pending file."""
    golden_dir, work = _small_batch_killed_at(tmp_path, kill_at)
    left = store_temporaries(work / ".pipeline")
    states = [row.state for row in batch_status(load_job(work / "nightly.yaml"))]
    assert states.count("complete") == 1, states
    _rerun_completes_golden(golden_dir, work)
    assert store_temporaries(work / ".pipeline") == [], f"left by the kill: {left}"


def test_the_released_step_of_a_group_session_comes_after_its_manifest_is_named(tmp_path: Path) -> None:
    """``_faults`` documents the steps in commit order -- ``manifest-committed`` then
    ``released`` -- and crash tests rely on "killed at released:N" meaning N heads committed.
    In a group only ``manifest-committed`` was moved to the barrier: ``released`` still fires
    inside ``complete()``, before anything is synced or named, so a kill at ``released:1``
    leaves no session complete (``manifest-committed`` of the same session comes later)."""
    work = tmp_path / "work"
    work.mkdir()
    _small_batch(work, files=4)
    killed = subprocess.run(_run_command(work, 1), env={**os.environ, KILL_ENV: "released:1"}, timeout=300)
    assert killed.returncode == -signal.SIGKILL
    states = [row.state for row in batch_status(load_job(work / "nightly.yaml"))]
    assert states.count("complete") >= 1, states


def test_a_head_that_appears_before_its_group_names_it_fails_that_session_alone(tmp_path: Path) -> None:
    """(Mend of the review's note on messages.) The naming's ``Conflict`` reaches the batch as
    the session's error, in the session's words, not the store's "compare-and-swap lost"."""
    from pipeline.batch import expand_sources, job_for, session_for
    from pipeline.runner import SessionGroup

    job = load_job(_small_batch(tmp_path, files=2))
    group = SessionGroup(job.store, base_dir=job.base_dir)
    try:
        for url in expand_sources(job):
            group.run(job_for(job, url), session=session_for(job, url))
        first, _ = group.pending
        DirectoryStore(str(tmp_path / ".pipeline")).cas(f"sessions/{first}/manifest", b"another run's", None)
        failed = group.commit().result()
    finally:
        group.close()
    assert list(failed) == [first] and isinstance(failed[first], Conflict)
    assert f"session {first!r} was committed by another run" in failed[first].message
    assert "compare-and-swap" not in str(failed[first])
    assert [row.state for row in batch_status(job)].count("complete") == 1
    assert store_temporaries(tmp_path / ".pipeline") == []
