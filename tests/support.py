"""Shared test helpers: an echo job on random bytes, and an in-process "crash" between chunks."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.testing import run_guest, wat

ECHO_JOB = """\
name: echo
source: {url: in.bin}
stages:
  - guest: echo.wasm
sink: {url: out/echo.bin}
checkpoint: {every: 256KiB}
"""


class DictStash:
    """A sink's stash in a dict, for driving a sink by hand."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}

    def put(self, data: bytes) -> tuple[str, int]:
        blob_id = hashlib.sha256(data).hexdigest()
        self.blobs[blob_id] = bytes(data)
        return blob_id, len(data)

    def get(self, blob_id: str) -> bytes:
        return self.blobs[blob_id]


def persist(sink: Any) -> dict[str, Any]:
    """A checkpoint's two halves on one thread: the sink's ``flush()``, then the handle ``sync()`` returns."""
    sink.flush()
    handle: dict[str, Any] = sink.sync()
    return handle


class Interrupt(Exception):
    """Stands in for a crash between two chunks; ``args[0]`` is the input offset reached."""


def interrupt_at(offset: int) -> Callable[[int, int | None], None]:
    """A progress callback that "crashes" the run once ``offset`` input bytes are done."""

    def on_progress(done: int, total: int | None) -> None:
        if done >= offset:
            raise Interrupt(done)

    return on_progress


def make_echo_job(directory: Path, size: int = 3_000_000) -> Path:
    """Write the echo guest, ``size`` random input bytes and the job file; return the job path."""
    wat.write(wat.ECHO_SUM, directory / "echo.wasm")
    (directory / "in.bin").write_bytes(os.urandom(size))
    (directory / "job.yaml").write_text(ECHO_JOB)
    return directory / "job.yaml"


def interrupted_echo_job(directory: Path, at: int) -> Path:
    """An echo job whose session was interrupted once ``at`` input bytes were done."""
    from pipeline.runner import run_session
    from pipeline.spec import load_job

    job = make_echo_job(directory)
    try:
        run_session(load_job(job), on_progress=interrupt_at(at))
    except Interrupt:
        return job
    raise AssertionError("the run was not interrupted")


def echo_expected(directory: Path) -> bytes:
    """What the echo job must publish: the input, then its byte sum as 8 little-endian bytes."""
    data = (directory / "in.bin").read_bytes()
    return data + sum(data).to_bytes(8, "little")


def check_resume(directory: Path, job: str, inputs: dict[str, bytes], interrupt: int, outputs: list[str]) -> None:
    """Run ``job`` interrupted once ``interrupt`` input bytes are done, then resumed; then run it
    again uninterrupted in a sibling folder: each file of ``outputs`` must be byte-identical."""
    from pipeline.runner import run_session
    from pipeline.spec import load_job

    results = []
    for name, crash in (("interrupted", True), ("straight", False)):
        folder = directory / name
        folder.mkdir()
        for file, data in inputs.items():
            (folder / file).write_bytes(data)
        (folder / "job.yaml").write_text(job)
        if crash:
            try:
                run_session(load_job(folder / "job.yaml"), on_progress=interrupt_at(interrupt))
            except Interrupt:
                pass
            else:
                raise AssertionError("the run was not interrupted")
            assert run_session(load_job(folder / "job.yaml")).resumed_from
        else:
            run_session(load_job(folder / "job.yaml"))
        results.append({out: (folder / out).read_bytes() for out in outputs})
    assert results[0] == results[1]


def run_record_guest(
    guest: str, config: dict[str, Any], data: bytes, chunk_size: int | None = None
) -> tuple[bytes, bytes, tuple[int, int, int]]:
    """Run a record guest (main + rejects outputs); return (main, rejects, counters)."""
    result = run_guest(guest, config, data, chunk_size=chunk_size)
    assert result.counters is not None
    assert set(result.outputs) <= {0, 1}
    return result.outputs.get(0, b""), result.outputs.get(1, b""), result.counters


PEAK_RSS = """
import resource, sys
from pipeline.runner import run_session
from pipeline.spec import load_job
run_session(load_job(sys.argv[1]))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux
"""


def peak_rss(job: Path) -> int:
    """Run ``job`` in a fresh process; return that process's peak RSS in bytes."""
    out = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, str(job)], capture_output=True, text=True, timeout=600, check=True
    )
    return int(out.stdout.split()[-1]) * 1024


# The csv-map job of the sink tests: source, sink and rejects filled in by write_job().
CSV_MAP_JOB = """\
name: orders
source: {{url: "{source}", options: {source_options}}}
stages:
  - guest: builtin:csv-map
    config:
      select: [id, name, amount, city]
      rename: {{name: customer}}
      upper: [customer]
      filter: {{column: amount, op: ">", value: 100}}
sink: {sink}
rejects: {rejects}
store: store
checkpoint: {{every: 1MiB}}
"""


def write_job(directory: Path, *, source: str, sink: str, rejects: str, source_options: str = "{}") -> Path:
    """Write CSV_MAP_JOB with these (YAML-flow) values into ``directory``; return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "job.yaml"
    path.write_text(CSV_MAP_JOB.format(source=source, sink=sink, rejects=rejects, source_options=source_options))
    return path


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``pipeline ARGS...`` in a child process (``env`` added to this one's), output captured."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def store_temporaries(root: Path) -> list[str]:
    """The directory store's own temporary files (``.~`` names) below ``root``, relative to it."""
    return sorted(str(p.relative_to(root)) for p in root.rglob(".~*"))
