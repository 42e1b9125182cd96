"""pipeline sessions / show / rm / gc, on real sessions in a directory store."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from support import interrupted_echo_job

from pipeline.cli import cli
from pipeline.connectors import FileSink
from pipeline.runner import run_session
from pipeline.spec import load_job
from pipeline.stores import open_store


@pytest.fixture
def interrupted(tmp_path: Path) -> Path:
    return interrupted_echo_job(tmp_path, 1_000_000)


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def test_sessions_lists_state_and_progress(interrupted: Path) -> None:
    code, out = _cli("sessions", "--job", str(interrupted))
    assert code == 0
    header, row = out.splitlines()
    assert header.split() == ["SESSION", "STATE", "PROGRESS", "LAST", "CHECKPOINT", "STORED"]
    assert row.split()[:3] == ["echo", "running", "35.0%"]


def test_show_prints_the_manifest_in_human_form(interrupted: Path) -> None:
    code, out = _cli("show", "echo", "--job", str(interrupted))
    assert code == 0
    lines = dict(line.split(None, 1) for line in out.splitlines() if line and not line.startswith(" "))
    assert lines["state"].startswith("running (checkpoint ")
    assert "at byte 1,048,576 of 3,000,000 (35.0%)" in lines["source"]
    assert lines["stage"].startswith("1. stage 1 (echo.wasm)  module ")
    assert lines["sinks"].startswith(f"main     {interrupted.parent / 'out' / 'echo.bin'}  1,048,576 bytes")
    code, out = _cli("show", "echo", "--json", "--job", str(interrupted))
    assert code == 0 and '"lease_epoch": 1' in out


def test_show_unknown_session(interrupted: Path) -> None:
    code, out = _cli("show", "nope", "--job", str(interrupted))
    assert code == 1
    assert out.splitlines() == [
        f"error: {interrupted.parent / '.pipeline'}: no session 'nope'",
        "hint: `pipeline sessions` lists them",
    ]


def test_rm_is_refused_while_a_run_holds_the_session(interrupted: Path) -> None:
    holder = FileSink(str(interrupted.parent / "out" / "echo.bin"), "echo")
    holder.acquire()
    try:
        code, out = _cli("rm", "echo", "--job", str(interrupted))
    finally:
        holder.close()
    assert code == 1
    assert "session 'echo' is held by another run" in out


def test_rm_removes_snapshots_and_in_progress_output(interrupted: Path) -> None:
    code, out = _cli("rm", "echo", "--job", str(interrupted))
    assert (code, out) == (0, "removed session 'echo'\n")
    assert list(open_store(str(interrupted.parent / ".pipeline")).list("sessions/")) == []
    assert list((interrupted.parent / "out").iterdir()) == []
    assert run_session(load_job(interrupted)).resumed_from is None


def test_gc_removes_old_complete_sessions_and_orphans(interrupted: Path) -> None:
    store = open_store(str(interrupted.parent / ".pipeline"))
    store.put("sessions/echo/pages/orphan", b"left by a crash")
    code, out = _cli("gc", "--job", str(interrupted))  # checkpointed moments ago: maybe still running
    assert (code, out) == (0, "removed sessions: none; swept 0 unreferenced keys\n")
    code, out = _cli("gc", "--older-than", "0s", "--job", str(interrupted))
    assert (code, out) == (0, "removed sessions: none; swept 1 unreferenced keys\n")
    run_session(load_job(interrupted))
    code, out = _cli("gc", "--older-than", "0s", "--job", str(interrupted))
    assert (code, out) == (0, "removed sessions: echo; swept 0 unreferenced keys\n")
    assert list(store.list("sessions/")) == []
    assert (interrupted.parent / "out" / "echo.bin").exists()  # published output stays
