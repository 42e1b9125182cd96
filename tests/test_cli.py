"""The command line: exit codes, one-line errors, the summary line, documented commands."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from support import ECHO_JOB, make_echo_job

from pipeline import __version__
from pipeline.cli import cli
from pipeline.testing import wat as wat_guests


@pytest.fixture
def job(tmp_path: Path) -> Path:
    return make_echo_job(tmp_path, size=300_000)


def _commands() -> list[tuple[str, click.Command]]:
    found: list[tuple[str, click.Command]] = [("", cli)]
    assert isinstance(cli, click.Group)
    found += [(name, command) for name, command in cli.commands.items()]
    return found


def test_version() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"pipeline, version {__version__}\n"


@pytest.mark.parametrize(("name", "command"), _commands(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_command_has_help_with_an_example(name: str, command: click.Command) -> None:
    result = CliRunner().invoke(cli, [*([name] if name else []), "-h"])
    assert result.exit_code == 0
    assert "Example:" in result.output
    assert command.help and command.help.strip()


def test_run_prints_one_summary_line(job: Path) -> None:
    result = CliRunner().invoke(cli, ["run", str(job)])
    assert result.exit_code == 0, result.output
    assert re.fullmatch(
        r"echo: complete · 0\.3 MB in, 0\.3 MB out · [\d.]+ s · [\d.]+ MB/s · \d+ checkpoints\n", result.output
    )
    again = CliRunner().invoke(cli, ["run", str(job)])
    assert again.output == "echo: already complete (0.3 MB in, 0.3 MB out); nothing to do (--fresh runs it again)\n"


def test_quiet_prints_nothing(job: Path) -> None:
    result = CliRunner().invoke(cli, ["run", str(job), "--quiet"])
    assert result.exit_code == 0
    assert result.output == ""


def test_pipeline_error_is_one_line_and_a_hint(job: Path) -> None:
    CliRunner().invoke(cli, ["run", str(job)])
    (job.parent / "in.bin").write_bytes(b"changed")
    result = CliRunner().invoke(cli, ["run", str(job)])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"error: source {job.parent / 'in.bin'} changed since session 'echo' last ran (")
    assert lines[1] == "hint: rerun with --fresh to start this session over"
    assert "Traceback" not in result.output


def test_bad_job_file_error_names_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(ECHO_JOB.replace("sink:", "sinc:"))
    result = CliRunner().invoke(cli, ["run", str(path)])
    assert result.exit_code == 1
    assert result.output == f"error: {path}: top level: unknown key 'sinc' (did you mean 'sink'?)\n"


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["--debug", "run", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 1
    assert result.exception is not None


def test_inspect_describes_a_module(tmp_path: Path) -> None:
    path = wat_guests.write(wat_guests.ECHO_SUM, tmp_path / "echo.wasm")
    result = CliRunner().invoke(cli, ["inspect", str(path)])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[3] == "abi      v1: ok"
    assert "import   pipeline.pl_emit: func (i32, i32, i32) -> i32" in lines
    assert "export   memory: memory 20 pages (1.25 MiB), no max" in lines
    assert lines[-1] == "globals  1 defined, 1 mutable (1 unexported, snapshotted via rewritten exports)"


def test_inspect_lists_what_breaks_the_abi(tmp_path: Path) -> None:
    path = wat_guests.write(wat_guests.MISSING_FINISH, tmp_path / "bad.wasm")
    result = CliRunner().invoke(cli, ["inspect", str(path)])
    assert result.exit_code == 0
    assert "abi      v1: NOT compatible: missing export pl_finish" in result.output


def test_inspect_unknown_builtin() -> None:
    result = CliRunner().invoke(cli, ["inspect", "builtin:nope"])
    assert result.exit_code == 1
    assert result.output.startswith("error: ")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("builtin:csv-map", "builtin:csv-mapp"), "stages[0].guest: unknown builtin guest 'csv-mapp' (known: "),
        (("select: [id]", "selcet: [id]"), "stages[0].config (builtin:csv-map): config: unknown key 'selcet' (known: "),
    ],
)
def test_guest_and_config_mistakes_name_the_job_and_the_stage(
    tmp_path: Path, edit: tuple[str, str], message: str
) -> None:
    (tmp_path / "in.csv").write_text("id,name\n1,a\n")
    job = tmp_path / "job.yaml"
    text = (
        "name: t\nsource: {url: in.csv}\nstages:\n  - guest: builtin:csv-map\n"
        "    config: {select: [id]}\nsink: {url: out.csv}\n"
    )
    job.write_text(text.replace(*edit))
    result = CliRunner().invoke(cli, ["run", str(job)])
    assert result.exit_code == 1
    assert result.output.splitlines()[0].startswith(f"error: {job}: {message}")


@pytest.mark.parametrize("delay", [0.05, 0.1, 0.15, 0.2, 0.3])
def test_ctrl_c_while_the_cli_starts_exits_130_without_a_traceback(tmp_path: Path, delay: float) -> None:
    job = make_echo_job(tmp_path)
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}  # no .pyc: the imports take their longest
    command = [sys.executable, "-m", "pipeline", "run", str(job)]
    run = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    try:
        time.sleep(delay)  # somewhere in the interpreter's start, the CLI's imports or the run
        run.send_signal(signal.SIGINT)
        _, stderr = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
    assert "Traceback" not in stderr
    assert run.returncode in (0, 130, -signal.SIGINT), stderr  # 0: done first; -SIGINT: before Python's handler
