"""Named outputs declared by guests and routed by the job; chains of stages, interrupted and resumed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support import Interrupt, interrupt_at

from pipeline.errors import SpecError
from pipeline.runner import run_session
from pipeline.spec import load_job
from pipeline.testing import wat

CHAIN = """\
name: chain
source: {url: in.bin}
stages:
  - guest: summary.wasm
  - guest: echo.wasm
sink: {url: out/main.bin}
checkpoint: {every: 256KiB}
"""


@pytest.fixture
def chain_dir(tmp_path: Path) -> Path:
    wat.write(wat.WITH_SUMMARY, tmp_path / "summary.wasm")
    wat.write(wat.ECHO_SUM, tmp_path / "echo.wasm")
    (tmp_path / "in.bin").write_bytes(os.urandom(2_000_000))
    return tmp_path


def _job(directory: Path, extra: str) -> Path:
    path = directory / "job.yaml"
    path.write_text(CHAIN + extra)
    return path


def test_declared_output_goes_to_its_routed_file_through_a_chain(chain_dir: Path) -> None:
    job = _job(chain_dir, "outputs:\n  summary: {url: out/summary.bin}\n")
    run_session(load_job(job))
    data = (chain_dir / "in.bin").read_bytes()
    assert (chain_dir / "out" / "main.bin").read_bytes() == data + sum(data).to_bytes(8, "little")
    assert (chain_dir / "out" / "summary.bin").read_bytes() == len(data).to_bytes(8, "little")


@pytest.mark.parametrize("crash_at", [300_000, 1_500_000])
def test_chain_interrupted_anywhere_resumes_to_the_same_outputs(chain_dir: Path, crash_at: int) -> None:
    job = load_job(_job(chain_dir, "outputs:\n  summary: {url: out/summary.bin}\n"))
    with pytest.raises(Interrupt):
        run_session(job, on_progress=interrupt_at(crash_at))
    assert run_session(job).resumed_from
    data = (chain_dir / "in.bin").read_bytes()
    assert (chain_dir / "out" / "main.bin").read_bytes() == data + sum(data).to_bytes(8, "little")
    assert (chain_dir / "out" / "summary.bin").read_bytes() == len(data).to_bytes(8, "little")


def test_a_declared_output_the_job_does_not_route_is_an_error_at_start(chain_dir: Path) -> None:
    job = _job(chain_dir, "")
    with pytest.raises(SpecError, match=r"stage 1 \(summary.wasm\) writes an output 'summary' that the job") as err:
        run_session(load_job(job))
    assert err.value.hint == "add `outputs: {summary: {url: ...}}` to the job"
    assert not (chain_dir / "out").exists() or not list((chain_dir / "out").iterdir())


def test_an_output_no_stage_writes_is_an_error_at_start(chain_dir: Path) -> None:
    job = _job(chain_dir, "outputs:\n  summary: {url: out/s.bin}\n  sumary: {url: out/t.bin}\n")
    with pytest.raises(SpecError, match=r"outputs.sumary: no stage writes an output named 'sumary' \(they write: "):
        run_session(load_job(job))


def test_rejects_shorthand_and_outputs_rejects_cannot_both_be_given(chain_dir: Path) -> None:
    job = _job(chain_dir, "rejects: {url: out/r.csv}\noutputs:\n  rejects: {url: out/r2.csv}\n")
    with pytest.raises(SpecError, match=r"rejects: is also given as outputs\.rejects"):
        load_job(job)
