"""Micro-benchmarks of the hot paths (pytest-benchmark): ``pytest benchmarks/``.

A guest call, page hashing and compression, a checkpoint (full and delta, at 1 MiB and 64 MiB of
guest memory), a warm restore, and one 1 MiB chunk through the csv-map guest.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import xxhash

from pipeline.runtime import Guest, GuestModule
from pipeline.snapshot import PAGE_SIZE, PageWriter, encode_blob, restore
from pipeline.stores.memory import MemoryStore
from pipeline.testing import wat
from pipeline.testing.data import _row

MiB = 1024 * 1024


def _csv_bytes(size: int) -> bytes:
    import random

    rng = random.Random(1)
    text = "id,name,amount,city,email,notes\n" + "".join(_row(rng, i) for i in range(size // 40))
    return text.encode()[:size]


def _echo() -> Guest:
    guest = Guest(GuestModule.load(wat.build(wat.ECHO_SUM), name="echo"), stage="echo", on_emit=lambda p, v: None)
    guest.start(b"{}")
    return guest


@pytest.fixture
def echo() -> Iterator[Guest]:
    with _echo() as guest:
        yield guest


def test_guest_call(benchmark, echo: Guest) -> None:  # type: ignore[no-untyped-def]
    benchmark(echo.process, 0)


def test_page_hash(benchmark) -> None:  # type: ignore[no-untyped-def]
    page = _csv_bytes(PAGE_SIZE)
    benchmark(xxhash.xxh3_128_hexdigest, page)


def test_page_compress(benchmark) -> None:  # type: ignore[no-untyped-def]
    page = _csv_bytes(PAGE_SIZE)
    benchmark(encode_blob, page)


def _filled(guest: Guest, mib: int) -> None:
    guest.grow_to(max(guest.memory_pages(), mib * MiB // PAGE_SIZE))
    memory = guest.memory_view()
    data = _csv_bytes(mib * MiB)
    memory[: len(data)] = data
    memory.release()


@pytest.mark.parametrize("mib", [1, 64])
def test_checkpoint_full(benchmark, echo: Guest, mib: int) -> None:  # type: ignore[no-untyped-def]
    _filled(echo, mib)

    written: list[int] = []

    def full() -> None:
        writer = PageWriter(MemoryStore(f"memory://bench-full-{mib}"), "p/")
        writer.capture(echo, "echo")
        written.append(writer.bytes_written)

    benchmark(full)
    benchmark.extra_info["bytes written per checkpoint"] = written[-1]


@pytest.mark.parametrize("mib", [1, 64])
def test_checkpoint_delta_4_dirty_pages(benchmark, echo: Guest, mib: int) -> None:  # type: ignore[no-untyped-def]
    _filled(echo, mib)
    writer = PageWriter(MemoryStore(f"memory://bench-delta-{mib}"), "p/")
    writer.capture(echo, "echo")
    counter = iter(range(10**9))

    def delta() -> None:
        memory = echo.memory_view()
        value = next(counter) & 0xFF
        for page in (0, 5, 9, 15):
            memory[page * PAGE_SIZE] = value
        memory.release()
        writer.capture(echo, "echo")

    before = writer.bytes_written
    benchmark(delta)
    benchmark.extra_info["bytes written per checkpoint"] = (writer.bytes_written - before) // max(
        1, benchmark.stats.stats.rounds
    )


def test_warm_resume(benchmark) -> None:  # type: ignore[no-untyped-def]
    store = MemoryStore("memory://bench-resume")
    with _echo() as guest:
        guest.feed(_csv_bytes(200_000))
        state = PageWriter(store, "p/").capture(guest, "echo")
    module = GuestModule.load(wat.build(wat.ECHO_SUM), name="echo")

    def resume() -> None:
        with Guest(module, stage="echo", on_emit=lambda p, v: None) as fresh:
            restore(fresh, state, store, "p/")

    benchmark(resume)


def test_csv_map_chunk_1mib(benchmark) -> None:  # type: ignore[no-untyped-def]
    chunk = _csv_bytes(MiB)
    config = {"select": ["id", "name", "amount", "city"], "rename": {"name": "customer"}, "upper": ["customer"]}
    config["filter"] = {"column": "amount", "op": ">", "value": 100}
    module = GuestModule.load("builtin:csv-map")
    with Guest(module, stage="csv-map", on_emit=lambda p, v: None) as guest:
        guest.start(json.dumps(config).encode())
        benchmark(guest.feed, chunk)
    benchmark.extra_info["MB/s"] = MiB / 1e6 / benchmark.stats.stats.mean


def test_cold_resume_new_process(benchmark, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A new process resumes an interrupted session 256 KiB from its end and finishes it."""
    import subprocess
    import sys

    from pipeline.runner import run_session
    from pipeline.spec import load_job

    class Stop(Exception):
        pass

    def stop_near_end(done: int, total: int | None) -> None:
        if done >= 4 * MiB - 256 * 1024:
            raise Stop

    rounds = iter(range(10**6))

    def setup() -> tuple[tuple[str, ...], dict[str, object]]:
        work = tmp_path / f"run{next(rounds)}"
        work.mkdir()
        wat.write(wat.ECHO_SUM, work / "echo.wasm")
        (work / "in.bin").write_bytes(bytes(4 * MiB))
        (work / "job.yaml").write_text(
            "name: echo\nsource: {url: in.bin}\nstages:\n  - guest: echo.wasm\n"
            "sink: {url: out/echo.bin}\ncheckpoint: {every: 256KiB}\n"
        )
        with pytest.raises(Stop):
            run_session(load_job(work / "job.yaml"), on_progress=stop_near_end)
        return (str(work / "job.yaml"),), {}

    def resume(job: str) -> None:
        subprocess.run([sys.executable, "-m", "pipeline", "run", job, "--quiet"], check=True)

    benchmark.pedantic(resume, setup=setup, rounds=5)
