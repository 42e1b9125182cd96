"""Shared test helpers: an echo job on random bytes, and an in-process "crash" between chunks."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from pipeline.testing import wat

ECHO_JOB = """\
name: echo
source: {url: in.bin}
stages:
  - guest: echo.wasm
sink: {url: out/echo.bin}
checkpoint: {every: 256KiB}
"""


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


def echo_expected(directory: Path) -> bytes:
    """What the echo job must publish: the input, then its byte sum as 8 little-endian bytes."""
    data = (directory / "in.bin").read_bytes()
    return data + sum(data).to_bytes(8, "little")
