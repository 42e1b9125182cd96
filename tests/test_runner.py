"""Sessions end to end on a WAT echo guest: run, interrupt, resume, refuse what changed."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from support import ECHO_JOB, Interrupt, echo_expected, interrupt_at, make_echo_job

from pipeline.errors import Conflict, ResumeMismatch, SpecError
from pipeline.runner import run_session
from pipeline.session import SessionStore
from pipeline.snapshot import Manifest
from pipeline.spec import load_job
from pipeline.stores import open_store
from pipeline.testing import wat as wat_guests

JOB = ECHO_JOB


@pytest.fixture
def job_dir(tmp_path: Path) -> Path:
    make_echo_job(tmp_path)
    return tmp_path


def _expected(job_dir: Path) -> bytes:
    return echo_expected(job_dir)


def test_uninterrupted_run_publishes_the_output(job_dir: Path) -> None:
    result = run_session(load_job(job_dir / "job.yaml"))
    assert (job_dir / "out" / "echo.bin").read_bytes() == _expected(job_dir)
    assert result.status == "complete"
    assert result.bytes_in == 3_000_000
    assert result.checkpoints >= 10
    assert os.listdir(job_dir / "out") == ["echo.bin"]  # no in-progress file left


@pytest.mark.parametrize("crash_at", [1, 300_000, 1_000_000, 2_900_000])
def test_interrupted_run_resumes_to_identical_output(job_dir: Path, crash_at: int) -> None:
    job = load_job(job_dir / "job.yaml")
    with pytest.raises(Interrupt) as interrupted:
        run_session(job, on_progress=interrupt_at(crash_at))
    assert not (job_dir / "out" / "echo.bin").exists()
    result = run_session(job)
    assert (job_dir / "out" / "echo.bin").read_bytes() == _expected(job_dir)
    assert result.resumed_from is not None
    assert 0 <= interrupted.value.args[0] - result.resumed_from < 256 * 1024


@pytest.mark.parametrize(("every", "checkpoints"), [("1h", {0}), ("1ms", {12, 13})])
def test_a_checkpoint_interval_in_time_counts_running_time(job_dir: Path, every: str, checkpoints: set[int]) -> None:
    (job_dir / "job.yaml").write_text(
        JOB.replace("every: 256KiB", f"every: {every}").replace("{url: in.bin}", "{url: in.bin, chunk_size: 256KiB}")
    )
    # 12 chunks, each followed by 2 ms of "work": a 1 ms interval is due after every chunk
    # (perhaps not the first, which may take less); an hour never is.
    result = run_session(load_job(job_dir / "job.yaml"), on_progress=lambda done, size: time.sleep(0.002))
    # The running ones, then 'finished'; a run that took none is done without 'finished' too.
    assert result.checkpoints in checkpoints
    assert (job_dir / "out" / "echo.bin").read_bytes() == _expected(job_dir)


def test_finished_session_is_not_run_again(job_dir: Path) -> None:
    job = load_job(job_dir / "job.yaml")
    run_session(job)
    assert run_session(job).status == "already-complete"
    assert run_session(job, fresh=True).status == "complete"
    assert (job_dir / "out" / "echo.bin").read_bytes() == _expected(job_dir)


def test_changed_input_is_refused_with_a_hint(job_dir: Path) -> None:
    job = load_job(job_dir / "job.yaml")
    with pytest.raises(Interrupt):
        run_session(job, on_progress=interrupt_at(1_000_000))
    (job_dir / "in.bin").write_bytes(os.urandom(3_000_001))
    with pytest.raises(
        ResumeMismatch, match=r"in.bin changed since session 'echo' last ran \(.*size 3000000 -> 3000001"
    ) as err:
        run_session(job)
    assert err.value.hint and "--fresh" in err.value.hint
    run_session(job, fresh=True)
    assert (job_dir / "out" / "echo.bin").read_bytes() == _expected(job_dir)


def test_changed_guest_is_refused(job_dir: Path) -> None:
    job = load_job(job_dir / "job.yaml")
    with pytest.raises(Interrupt):
        run_session(job, on_progress=interrupt_at(1_000_000))
    custom_section = b"\x00\x02\x01x"  # same code, different bytes: still a different module
    (job_dir / "echo.wasm").write_bytes(wat_guests.build(wat_guests.ECHO_SUM) + custom_section)
    with pytest.raises(ResumeMismatch, match=r"guest of stage 1 \(echo.wasm\) changed"):
        run_session(job)


def test_changed_job_is_refused(job_dir: Path) -> None:
    with pytest.raises(Interrupt):
        run_session(load_job(job_dir / "job.yaml"), on_progress=interrupt_at(1_000_000))
    (job_dir / "job.yaml").write_text(JOB.replace("out/echo.bin", "out/other.bin"))
    with pytest.raises(ResumeMismatch, match=r"job job\.yaml changed"):
        run_session(load_job(job_dir / "job.yaml"))


@pytest.mark.parametrize("every", ["256KiB", "1h"])
def test_a_run_whose_lease_was_taken_stops_without_publishing(job_dir: Path, every: str) -> None:
    # With "1h" the run takes no checkpoint: its "starting" commit was its last, and it would
    # publish without a "finished" one; a read of the head before publishing fences it.
    (job_dir / "job.yaml").write_text(JOB.replace("every: 256KiB", f"every: {every}"))
    job = load_job(job_dir / "job.yaml")
    store = open_store(str(job_dir / ".pipeline"))
    manifest_key = SessionStore(store, "echo").head_key

    def steal_lease(done: int, total: int | None) -> None:
        if done >= 1_000_000:  # another host takes the session over between two checkpoints
            blob, version = store.head(manifest_key)
            manifest = Manifest.from_bytes(blob, manifest_key)
            manifest.lease_epoch += 1
            store.cas(manifest_key, manifest.to_bytes(), version)

    with pytest.raises(Conflict, match="held by another run"):
        run_session(job, on_progress=steal_lease)
    assert not (job_dir / "out" / "echo.bin").exists()


def test_unrouted_output_port_is_a_clear_error(tmp_path: Path) -> None:
    wat_guests.write(wat_guests.EMIT_TO_REJECTS, tmp_path / "echo.wasm")
    (tmp_path / "in.bin").write_bytes(b"x" * 10)
    (tmp_path / "job.yaml").write_text(JOB)
    with pytest.raises(SpecError, match=r"emitted to its rejects output, which the job does not route") as err:
        run_session(load_job(tmp_path / "job.yaml"))
    assert err.value.hint == "add `rejects: {url: ...}` to the job"


def test_store_and_session_can_be_chosen(job_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    elsewhere = tmp_path_factory.mktemp("store")
    result = run_session(load_job(job_dir / "job.yaml"), store_url=str(elsewhere), session="nightly-1")
    assert result.session == "nightly-1"
    assert (elsewhere / "sessions" / "nightly-1" / "manifest").exists()
    assert not (job_dir / ".pipeline").exists()
