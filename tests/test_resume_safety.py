"""Integrity and fencing: damaged snapshots fall back or fail clearly; racing runs publish once."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
from support import ECHO_JOB, Interrupt, echo_expected, interrupt_at, interrupted_echo_job, make_echo_job

from pipeline.errors import GuestTimeout, SnapshotCorrupt
from pipeline.runner import run_session
from pipeline.session import SessionStore, list_sessions
from pipeline.snapshot import Manifest
from pipeline.spec import load_job
from pipeline.stores import open_store
from pipeline.stores.directory import DirectoryStore
from pipeline.testing import wat


@pytest.fixture
def interrupted(tmp_path: Path) -> Path:
    """An echo session interrupted at 2 MB, with several checkpoints committed."""
    return interrupted_echo_job(tmp_path, 2_000_000).parent


def _session(job_dir: Path) -> SessionStore:
    return SessionStore(open_store(str(job_dir / ".pipeline")), "echo")


def _published(job_dir: Path) -> bytes:
    return (job_dir / "out" / "echo.bin").read_bytes()


def test_only_the_last_two_manifests_and_their_pages_are_kept(interrupted: Path) -> None:
    session = _session(interrupted)
    history = sorted(session.store.list(session.history_prefix))
    assert len(history) == 2
    kept = [Manifest.from_bytes(session.store.get(key), key) for key in history]
    referenced = set().union(*(m.blob_ids() for m in kept))
    stored = {key.removeprefix(session.pages_prefix) for key in session.store.list(session.pages_prefix)}
    assert stored == referenced


@pytest.mark.parametrize("damage", [lambda b: b[: len(b) // 2], lambda b: b[:40] + bytes([b[40] ^ 1]) + b[41:]])
def test_damaged_head_falls_back_to_the_checkpoint_before_it(interrupted: Path, damage, caplog) -> None:  # type: ignore[no-untyped-def]
    session = _session(interrupted)
    head = session.store.get(session.head_key)
    head_offset = Manifest.from_bytes(head, "head").source["offset"]
    newest_copy = max(session.store.list(session.history_prefix))
    session.store.put(session.head_key, damage(head))
    session.store.put(newest_copy, damage(head))
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        result = run_session(load_job(interrupted / "job.yaml"))
    assert "sessions/echo/manifest:" in caplog.text
    assert "resuming session 'echo' from checkpoint" in caplog.text
    assert result.resumed_from == head_offset - 256 * 1024  # the checkpoint before the damaged one
    assert _published(interrupted) == echo_expected(interrupted)


def test_damaged_page_of_the_newest_checkpoint_falls_back(interrupted: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    session = _session(interrupted)
    newest, older = (
        Manifest.from_bytes(session.store.get(k), k) for k in sorted(session.store.list(session.history_prefix))[::-1]
    )
    only_newest = sorted(newest.blob_ids() - older.blob_ids())
    assert only_newest, "the echo guest's running-sum page changes every checkpoint"
    session.store.put(session.page_key(only_newest[0]), b"plain uncompressed bytes")
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        run_session(load_job(interrupted / "job.yaml"))
    assert "not a wasm-pipeline blob (uncompressed or foreign data)" in caplog.text
    assert _published(interrupted) == echo_expected(interrupted)


def test_nothing_restorable_is_a_clear_error(interrupted: Path) -> None:
    session = _session(interrupted)
    for key in [session.head_key, *session.store.list(session.history_prefix)]:
        session.store.put(key, b"garbage")
    with pytest.raises(SnapshotCorrupt, match=r"session 'echo': no checkpoint can be restored") as err:
        run_session(load_job(interrupted / "job.yaml"))
    assert err.value.hint == "rerun with --fresh to start this session over"
    run_session(load_job(interrupted / "job.yaml"), fresh=True)
    assert _published(interrupted) == echo_expected(interrupted)


def test_missing_page_blob_is_named(interrupted: Path) -> None:
    session = _session(interrupted)
    for key in list(session.store.list(session.pages_prefix)):
        session.store.delete(key)
    missing = r"no checkpoint can be restored \(sessions/echo/pages/\w+: page blob is missing"
    with pytest.raises(SnapshotCorrupt, match=missing):
        run_session(load_job(interrupted / "job.yaml"))


def test_complete_session_keeps_only_its_head(tmp_path: Path) -> None:
    run_session(load_job(make_echo_job(tmp_path)))
    store = open_store(str(tmp_path / ".pipeline"))
    assert list(store.list("sessions/")) == ["sessions/echo/manifest"]
    assert list_sessions(store) == ["echo"]


def test_four_racing_runs_publish_exactly_once(tmp_path: Path) -> None:
    job = make_echo_job(tmp_path, size=20_000_000)
    command = [sys.executable, "-m", "pipeline", "run", str(job)]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outcomes = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    completed = [o for o in outcomes if o[0] == 0 and ": complete" in o[1]]
    refused = [o for o in outcomes if o[0] == 1 and "is held by another run" in o[2]]
    already = [o for o in outcomes if o[0] == 0 and "already complete" in o[1]]
    assert len(completed) == 1, outcomes
    assert len(completed) + len(refused) + len(already) == 4, outcomes
    assert _published(tmp_path) == echo_expected(tmp_path)


def test_wait_waits_for_the_running_one(tmp_path: Path) -> None:
    job = make_echo_job(tmp_path, size=20_000_000)
    command = [sys.executable, "-m", "pipeline", "run", str(job), "--wait"]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outcomes = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    assert [o[0] for o in outcomes] == [0, 0, 0], outcomes
    assert sum(": complete" in o[1] for o in outcomes) == 1
    assert _published(tmp_path) == echo_expected(tmp_path)


def test_guest_failure_names_stage_and_input_and_a_rerun_resumes_from_the_last_good_checkpoint(
    tmp_path: Path,
) -> None:
    wat.write(wat.SLOW_ON_FF, tmp_path / "slow.wasm")
    data = bytes(1_500_000) + b"\xff" + bytes(600_000)
    (tmp_path / "in.bin").write_bytes(data)
    job = tmp_path / "job.yaml"
    job.write_text(ECHO_JOB.replace("echo.wasm\n", "slow.wasm\n    limits: {call_timeout: 50ms}\n"))
    with pytest.raises(GuestTimeout) as err:
        run_session(load_job(job))
    assert str(err.value) == (
        "stage 1 (slow.wasm) at input bytes 1,310,720-1,572,864 (pl_process): call exceeded its 0.05s deadline"
    )
    assert _session(tmp_path).read_head().source["offset"] == 1_310_720  # type: ignore[union-attr]

    job.write_text(job.read_text().replace("50ms", "30s"))  # limits do not change the job's output
    result = run_session(load_job(job))
    assert result.resumed_from == 1_310_720
    assert _published(tmp_path) == data


def test_encrypted_store_damaged_head_falls_back_and_nothing_is_plaintext(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("PIPELINE_STORE_KEY", "ab" * 32)
    job = make_echo_job(tmp_path)
    with pytest.raises(Interrupt):
        run_session(load_job(job), on_progress=interrupt_at(2_000_000))
    raw = DirectoryStore(str(tmp_path / ".pipeline"))  # the bytes at rest, without the key
    head = raw.get("sessions/echo/manifest")
    assert b"in.bin" not in head and b"echo" not in head
    raw.put("sessions/echo/manifest", head[:-1] + bytes([head[-1] ^ 1]))
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        run_session(load_job(job))
    assert "sessions/echo/manifest" in caplog.text
    assert _published(tmp_path) == echo_expected(tmp_path)


def test_a_session_done_before_its_first_checkpoint_commits_twice_and_keeps_no_copy(tmp_path: Path) -> None:
    """A small file publishes from its `starting` head: a crash until `complete` starts it over."""
    job = make_echo_job(tmp_path, size=1000)
    states: list[tuple[str, int]] = []
    original = SessionStore.commit

    def spy(self: SessionStore, manifest: Manifest) -> None:
        original(self, manifest)
        states.append((manifest.state, len(list(self.store.list(self.history_prefix)))))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SessionStore, "commit", spy)
        run_session(load_job(job))
    assert states == [("starting", 0), ("complete", 0)]
    assert _published(tmp_path) == echo_expected(tmp_path)


def test_a_finished_manifest_with_pages_keeps_its_copy(interrupted: Path) -> None:
    copies: list[int] = []
    original = SessionStore.commit

    def spy(self: SessionStore, manifest: Manifest) -> None:
        original(self, manifest)
        if manifest.state == "finished":
            copies.append(len([k for k in self.store.list(self.history_prefix) if k.endswith(f"{manifest.seq:012d}")]))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SessionStore, "commit", spy)
        run_session(load_job(interrupted / "job.yaml"))
    assert copies == [1]
