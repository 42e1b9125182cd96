"""Batch jobs over globs and lists: one session per file, safe to rerun, parallel, killed and resumed."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline._faults import ENV as KILL_ENV
from pipeline.batch import batch_status, expand_sources, run_batch
from pipeline.cli import cli
from pipeline.errors import SourceError, SpecError
from pipeline.spec import load_job
from pipeline.testing.data import write_orders_csv

JOB = """\
name: nightly
source: {url: "incoming/*.csv"}
stages:
  - guest: builtin:csv-map
    config: {select: [id, name, amount], upper: [name], filter: {column: amount, op: ">", value: 100}}
sink: {url: "out/{stem}.csv"}
rejects: {url: "out/{stem}-rejects.csv"}
checkpoint: {every: 256KiB}
"""


def _batch(directory: Path, files: int = 3, size: int = 3_000_000) -> Path:
    (directory / "incoming").mkdir(parents=True)
    for i in range(files):
        write_orders_csv(directory / "incoming" / f"day{i}.csv", size, seed=i)
    (directory / "nightly.yaml").write_text(JOB)
    return directory / "nightly.yaml"


def _digests(directory: Path) -> dict[str, str]:
    out = directory / "out"
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir())}


def test_glob_runs_one_session_per_file_and_a_rerun_skips_them(tmp_path: Path) -> None:
    job = load_job(_batch(tmp_path))
    outcomes = run_batch(job, parallel=2)
    assert [o.url.rsplit("/", 1)[-1] for o in outcomes] == ["day0.csv", "day1.csv", "day2.csv"]
    assert all(o.error is None and o.result and o.result.status == "complete" for o in outcomes)
    assert sorted(_digests(tmp_path)) == sorted(f"day{i}{s}.csv" for i in range(3) for s in ("", "-rejects"))
    again = run_batch(job, parallel=2)
    assert [o.result.status for o in again if o.result] == ["already-complete"] * 3


def test_a_new_file_is_processed_and_the_finished_ones_are_not(tmp_path: Path) -> None:
    job_file = _batch(tmp_path, files=2)
    run_batch(load_job(job_file))
    before = (tmp_path / "out" / "day0.csv").stat().st_mtime_ns
    write_orders_csv(tmp_path / "incoming" / "day9.csv", 1_000_000, seed=9)
    statuses = {o.url.rsplit("/", 1)[-1]: o.result.status for o in run_batch(load_job(job_file)) if o.result}
    assert statuses == {"day0.csv": "already-complete", "day1.csv": "already-complete", "day9.csv": "complete"}
    assert (tmp_path / "out" / "day0.csv").stat().st_mtime_ns == before


def test_a_failing_file_does_not_stop_the_others_and_the_exit_is_non_zero(tmp_path: Path) -> None:
    job_file = _batch(tmp_path, files=2, size=200_000)
    (tmp_path / "incoming" / "broken.csv").write_text("no,such,columns\n1,2,3\n")
    result = CliRunner().invoke(cli, ["run", str(job_file), "--parallel", "2"])
    assert result.exit_code == 1
    assert "broken.csv: error: stage 1 (builtin:csv-map)" in result.output
    assert "select: column 'id' is not in the header" in result.output
    assert result.output.splitlines()[-1] == "nightly: 3 files · 2 complete, 1 failed"
    assert (tmp_path / "out" / "day0.csv").exists() and (tmp_path / "out" / "day1.csv").exists()


def _golden_and_work(tmp_path: Path) -> tuple[Path, Path]:
    golden_dir, work = tmp_path / "golden", tmp_path / "work"
    for directory in (golden_dir, work):
        directory.mkdir()
        _batch(directory)
    run_batch(load_job(golden_dir / "nightly.yaml"))
    return golden_dir, work


def _run_command(work: Path, parallel: int) -> list[str]:
    return [sys.executable, "-m", "pipeline", "run", str(work / "nightly.yaml"), "--parallel", str(parallel), "--quiet"]


def _rerun_completes_golden(golden_dir: Path, work: Path) -> None:
    states = {row.state for row in batch_status(load_job(work / "nightly.yaml"))}
    assert states & {"running", "starting", "new"}, states
    rerun = subprocess.run(_run_command(work, 2), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert _digests(work) == _digests(golden_dir)
    assert {row.state for row in batch_status(load_job(work / "nightly.yaml"))} == {"complete"}


def test_sigkill_mid_batch_then_rerun_gives_every_output_golden(tmp_path: Path) -> None:
    golden_dir, work = _golden_and_work(tmp_path)
    killed = subprocess.run(_run_command(work, 1), env={**os.environ, KILL_ENV: "manifest-committed:6"}, timeout=300)
    assert killed.returncode == -signal.SIGKILL
    _rerun_completes_golden(golden_dir, work)


def test_a_worker_that_dies_fails_only_its_file(tmp_path: Path) -> None:
    (tmp_path / "incoming").mkdir()
    write_orders_csv(tmp_path / "incoming" / "day0.csv", 3_000_000, seed=0)  # a dozen checkpoints
    for i in (1, 2, 3):
        write_orders_csv(tmp_path / "incoming" / f"day{i}.csv", 10_000, seed=i)  # one commit counted each
    (tmp_path / "nightly.yaml").write_text(JOB)
    # Counted per process: only the worker running day0 reaches a 5th checkpoint.
    env = {**os.environ, KILL_ENV: "manifest-committed:5"}
    killed = subprocess.run(_run_command(tmp_path, 2), env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == 1, killed.stderr
    assert "day0.csv: error: the worker process running this file died (killed by signal 9)" in killed.stderr
    assert "nightly: 4 files · 3 complete, 1 failed" in killed.stderr


def test_workers_that_die_are_replaced_and_a_rerun_completes_their_files(tmp_path: Path) -> None:
    golden_dir, work = _golden_and_work(tmp_path)
    env = {**os.environ, KILL_ENV: "manifest-committed:3"}  # every worker dies at its 3rd checkpoint
    killed = subprocess.run(_run_command(work, 2), env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == 1, killed.stderr
    assert killed.stderr.count("the worker process running this file died (killed by signal 9)") == 3
    assert "nightly: 3 files · 3 failed" in killed.stderr  # the third file went to a new worker
    _rerun_completes_golden(golden_dir, work)


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended while we looked
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc; workers die with their parent through prctl")
def test_sigkill_of_a_parallel_batch_takes_its_worker_processes_with_it(tmp_path: Path) -> None:
    golden_dir, work = _golden_and_work(tmp_path)
    run = subprocess.Popen(_run_command(work, 2))
    try:
        deadline = time.monotonic() + 60
        while len(workers := _descendants(run.pid)) < 3 and time.monotonic() < deadline:  # server + 2 workers
            time.sleep(0.01)
        assert len(workers) >= 3, "the batch never started its worker processes"
        os.kill(run.pid, signal.SIGKILL)
    finally:
        run.wait(timeout=60)
    deadline = time.monotonic() + 30
    while (alive := {pid for pid in workers if Path(f"/proc/{pid}").exists()}) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive, f"worker processes outlived their batch: {alive}"
    _rerun_completes_golden(golden_dir, work)


def test_status_shows_new_complete_and_changed_files(tmp_path: Path) -> None:
    job_file = _batch(tmp_path, files=2, size=200_000)
    assert [r.state for r in batch_status(load_job(job_file))] == ["new", "new"]
    run_batch(load_job(job_file))
    (tmp_path / "incoming" / "day1.csv").write_text("id,name,amount\n1,a,200\n")
    result = CliRunner().invoke(cli, ["status", str(job_file)])
    assert result.exit_code == 0
    states = [line.split()[1] for line in result.output.splitlines()[1:]]
    assert states == ["complete", "changed"]


def test_a_replaced_file_is_refused_for_resume(tmp_path: Path) -> None:
    job_file = _batch(tmp_path, files=1)
    command = [sys.executable, "-m", "pipeline", "run", str(job_file), "--quiet"]
    subprocess.run(command, env={**os.environ, KILL_ENV: "manifest-committed:4"}, timeout=300)
    write_orders_csv(tmp_path / "incoming" / "day0.csv", 3_000_000, seed=42)
    outcome = run_batch(load_job(job_file))[0]
    assert outcome.error is not None and "changed since session 'nightly.day0.csv." in outcome.error.message


@pytest.mark.parametrize(
    ("sink", "message"),
    [
        ("out/all.csv", "a batch job writes one output per file: use {stem} or {name} in it"),
        ("out/{stme}.csv", "bad placeholder 'stme' (available: {stem}, {name})"),
    ],
)
def test_batch_output_templates_are_checked(tmp_path: Path, sink: str, message: str) -> None:
    job_file = _batch(tmp_path, files=1, size=1000)
    job_file.write_text(JOB.replace("out/{stem}.csv", sink))
    with pytest.raises(SpecError) as err:
        load_job(job_file)
    assert message in str(err.value)


def test_urls_list_and_no_matches(tmp_path: Path) -> None:
    job_file = _batch(tmp_path, files=2, size=1000)
    job_file.write_text(JOB.replace('{url: "incoming/*.csv"}', "{urls: [incoming/day1.csv, incoming/day0.csv]}"))
    assert [u.rsplit("/", 1)[-1] for u in expand_sources(load_job(job_file))] == ["day1.csv", "day0.csv"]
    job_file.write_text(JOB.replace("incoming/*.csv", "nothing/*.csv"))
    with pytest.raises(SourceError, match="no files match"):
        expand_sources(load_job(job_file))


def test_ctrl_c_stops_a_parallel_batch_and_a_rerun_resumes_it(tmp_path: Path) -> None:
    golden_dir, work = tmp_path / "golden", tmp_path / "work"
    for directory in (golden_dir, work):
        directory.mkdir()
        _batch(directory, files=4, size=20_000_000)
    run_batch(load_job(golden_dir / "nightly.yaml"))
    run = subprocess.Popen(_run_command(work, 2), stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not list((work / ".pipeline" / "sessions").glob("*/manifests/*")) and time.monotonic() < deadline:
            time.sleep(0.01)  # until some session has committed a running checkpoint
        os.killpg(run.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole process group
        _, stderr = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode == 130, stderr
    assert "rerun the same command to resume" in stderr
    assert "Traceback" not in stderr
    _rerun_completes_golden(golden_dir, work)


def test_workers_see_the_environment_of_each_batch_not_the_first(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    first, second = tmp_path / "first", tmp_path / "second"
    for directory in (first, second):
        directory.mkdir()
        _batch(directory, files=2, size=10_000)
    monkeypatch.delenv("PIPELINE_STORE_KEY", raising=False)
    assert all(o.error is None for o in run_batch(load_job(first / "nightly.yaml"), parallel=2))
    # The forkserver the first batch started keeps the environment it started with.
    monkeypatch.setenv("PIPELINE_STORE_KEY", "ab" * 32)
    assert all(o.error is None for o in run_batch(load_job(second / "nightly.yaml"), parallel=2))
    heads = list((second / ".pipeline" / "sessions").glob("*/manifest"))
    assert len(heads) == 2 and not any(head.read_bytes().startswith(b"PLB1") for head in heads)  # encrypted
    assert {row.state for row in batch_status(load_job(second / "nightly.yaml"))} == {"complete"}


# -- group commit of small sessions ----------------------------------------------------------
def _small_batch(directory: Path, files: int, big: tuple[int, ...] = ()) -> Path:
    """A batch of small files (one chunk each), but those numbered in ``big`` (3 MB: checkpoints)."""
    (directory / "incoming").mkdir(parents=True)
    for i in range(files):
        write_orders_csv(directory / "incoming" / f"day{i:02d}.csv", 3_000_000 if i in big else 20_000, seed=i)
    (directory / "nightly.yaml").write_text(JOB)
    return directory / "nightly.yaml"


def _small_batch_killed_at(tmp_path: Path, kill_at: str, files: int = 8) -> tuple[Path, Path]:
    """A small batch run whole in ``golden/``, and in ``work/`` SIGKILLed at ``kill_at`` (one worker)."""
    golden_dir, work = tmp_path / "golden", tmp_path / "work"
    for directory in (golden_dir, work):
        directory.mkdir()
        _small_batch(directory, files=files)
    run_batch(load_job(golden_dir / "nightly.yaml"))
    killed = subprocess.run(_run_command(work, 1), env={**os.environ, KILL_ENV: kill_at}, timeout=300)
    assert killed.returncode == -signal.SIGKILL
    return golden_dir, work


def test_small_new_sessions_are_made_durable_by_group_barriers_not_fsyncs(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from pipeline import _fs

    fsyncs: list[int] = []
    barriers: list[int] = []
    real_fsync, real_syncfs = os.fsync, _fs._syncfs
    assert real_syncfs is not None  # Linux: the barrier is syncfs
    monkeypatch.setattr(os, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd))[1])
    monkeypatch.setattr(_fs, "_syncfs", lambda fd: (barriers.append(fd), real_syncfs(fd))[1])
    outcomes = run_batch(load_job(_small_batch(tmp_path, files=8)))  # one thread: one group of 4, then 4
    assert all(o.error is None and o.result and o.result.checkpoints == 0 for o in outcomes)
    assert len(barriers) == 6  # three per group (outputs; manifests' bytes; their names), one filesystem
    assert fsyncs == []  # outputs, manifests and their names: all made durable by the syncs
    heads = sorted((tmp_path / ".pipeline" / "sessions").glob("*/manifest"))
    assert len(heads) == 8 and not list((tmp_path / ".pipeline" / "sessions").glob("*/manifests/*"))
    assert {row.state for row in batch_status(load_job(tmp_path / "nightly.yaml"))} == {"complete"}


def test_a_group_mixes_deferred_small_sessions_with_a_checkpointing_one(tmp_path: Path) -> None:
    golden_dir, work = tmp_path / "golden", tmp_path / "work"
    for directory in (golden_dir, work):
        directory.mkdir()
        _small_batch(directory, files=6, big=(2,))
    for outcome in run_batch(load_job(golden_dir / "nightly.yaml"), parallel=1):
        assert outcome.error is None and outcome.result is not None
        assert (outcome.result.checkpoints > 1) == outcome.url.endswith("day02.csv")
    # The reference: each file alone, through run_session's own path.
    from pipeline.batch import job_for, session_for
    from pipeline.runner import run_session

    job = load_job(work / "nightly.yaml")
    for url in expand_sources(job):
        run_session(job_for(job, url), session=session_for(job, url))
    assert _digests(work) == _digests(golden_dir)


@pytest.mark.parametrize(
    "kill_at",
    [
        "published:3",  # mid-group: two sessions published and pending, none complete
        "manifest-committed:2",  # after the first sync, two manifests named: two complete, two pending
    ],
)
def test_sigkill_inside_a_group_then_rerun_gives_every_output_golden(tmp_path: Path, kill_at: str) -> None:
    golden_dir, work = _small_batch_killed_at(tmp_path, kill_at)
    states = [row.state for row in batch_status(load_job(work / "nightly.yaml"))]
    assert states.count("complete") == (2 if kill_at.startswith("manifest") else 0), states
    _rerun_completes_golden(golden_dir, work)


def test_a_workers_warnings_reach_the_batchs_handlers(tmp_path: Path) -> None:
    """Worker processes send their log records to the batch: the CLI prints them as `warning:` lines."""
    golden_dir, work = _golden_and_work(tmp_path)
    killed = subprocess.run(_run_command(work, 1), env={**os.environ, KILL_ENV: "manifest-committed:4"}, timeout=300)
    assert killed.returncode == -signal.SIGKILL  # in day0.csv, after a few running checkpoints
    (head,) = [p for p in (work / ".pipeline" / "sessions").glob("*day0*/manifest")]
    head.write_bytes(b"PLB1 damaged")
    rerun = subprocess.run(_run_command(work, 2), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    lines = [line for line in rerun.stderr.splitlines() if "trying the checkpoint before it" in line]
    assert len(lines) == 1 and lines[0].startswith("warning: "), rerun.stderr
    assert _digests(work) == _digests(golden_dir)


def test_where_syncfs_cannot_be_trusted_a_group_fsyncs_as_single_runs_do(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from pipeline import _fs

    barriers: list[int] = []
    real_syncfs = _fs._syncfs
    assert real_syncfs is not None
    monkeypatch.setattr(_fs, "_syncfs", lambda fd: (barriers.append(fd), real_syncfs(fd))[1])
    monkeypatch.setattr(_fs, "_kernel", lambda: (5, 4))  # syncfs hid writeback errors before 5.8
    outcomes = run_batch(load_job(_small_batch(tmp_path, files=4)))
    assert all(o.error is None for o in outcomes)
    assert barriers == []
    assert {row.state for row in batch_status(load_job(tmp_path / "nightly.yaml"))} == {"complete"}
