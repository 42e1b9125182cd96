"""Micro-benchmarks of the hot paths (pytest-benchmark): ``pytest benchmarks/``.

A guest call, a host import call (a guest's ``pl_emit`` reaching Python), page hashing and
compression, a checkpoint (full and delta, at 1 MiB and 64 MiB of guest memory, in memory; and
as a run takes it, in the default directory store with its fsyncs), a warm and a cold resume,
one 1 MiB chunk through the csv-map guest (output dropped, written to a file, and with a float
column typed and filtered on), and one through jsonl-map (filter and projection); and a group of
32 small files, a durable session each, committed together.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import xxhash

from pipeline.runtime import EmitHandler, Guest, GuestModule
from pipeline.session import SessionStore
from pipeline.snapshot import PAGE_SIZE, Manifest, PageWriter, encode_blob, restore
from pipeline.stores.directory import DirectoryStore
from pipeline.stores.memory import MemoryStore
from pipeline.testing import wat
from pipeline.testing.data import _event, _row

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


# pl_process(n) calls pl_emit n times with 64 bytes: the cost of one host import call.
EMIT_N = f"""(module {wat._EMIT} {wat._ABI}
  (func (export "pl_process") (param $n i32) (result i32) (local $i i32)
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
      (drop (call $emit (i32.const 0) (i32.const 65536) (i32.const 64)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next)))
    i32.const 0)
  (func (export "pl_finish") (result i32) i32.const 0))
"""
EMITS = 1_000


def test_host_import_call(benchmark) -> None:  # type: ignore[no-untyped-def]
    """One guest call emitting 1,000 times; extra_info has the cost per pl_emit."""
    module = GuestModule.load(wat.build(EMIT_N), name="emit-n")
    with Guest(module, stage="emit-n", on_emit=lambda p, v: None) as guest:
        guest.start(b"{}")
        benchmark(guest.process, EMITS)
    benchmark.extra_info["µs per pl_emit"] = round(benchmark.stats.stats.median / EMITS * 1e6, 2)


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


def _dirty_4_pages(guest: Guest, value: int) -> None:
    memory = guest.memory_view()
    for page in (0, 5, 9, 15):
        memory[page * PAGE_SIZE] = value
    memory.release()


@pytest.mark.parametrize("mib", [1, 64])
def test_checkpoint_delta_4_dirty_pages(benchmark, echo: Guest, mib: int) -> None:  # type: ignore[no-untyped-def]
    _filled(echo, mib)
    writer = PageWriter(MemoryStore(f"memory://bench-delta-{mib}"), "p/")
    writer.capture(echo, "echo")
    counter = iter(range(10**9))

    def delta() -> None:
        _dirty_4_pages(echo, next(counter) & 0xFF)
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


_CSV_MAP_JOB = {
    "select": ["id", "name", "amount", "city"],
    "rename": {"name": "customer"},
    "upper": ["customer"],
    "filter": {"column": "amount", "op": ">", "value": 100},
}


def _csv_map(on_emit: EmitHandler, config: dict[str, object] = _CSV_MAP_JOB) -> Guest:
    guest = Guest(GuestModule.load("builtin:csv-map"), stage="csv-map", on_emit=on_emit)
    guest.start(json.dumps(config).encode())
    return guest


def test_csv_map_chunk_1mib(benchmark) -> None:  # type: ignore[no-untyped-def]
    chunk = _csv_bytes(MiB)
    with _csv_map(lambda p, v: None) as guest:
        benchmark(guest.feed, chunk)
    benchmark.extra_info["MB/s"] = MiB / 1e6 / benchmark.stats.stats.mean


def test_csv_map_chunk_1mib_to_file(benchmark, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A chunk through the stage with its output written to a file, as the main sink does."""
    chunk = _csv_bytes(MiB)
    with open(tmp_path / "out.csv", "wb") as out, _csv_map(lambda p, v: out.write(v)) as guest:
        benchmark(guest.feed, chunk)
    benchmark.extra_info["MB/s"] = MiB / 1e6 / benchmark.stats.stats.mean


def test_csv_map_chunk_1mib_typed(benchmark) -> None:  # type: ignore[no-untyped-def]
    """A chunk through csv-map checking a float column and filtering on it (pl_parse_number twice a row)."""
    chunk = _csv_bytes(MiB)
    config = {"types": {"amount": "float"}, "filter": {"column": "amount", "op": "<", "value": 250.5}}
    with _csv_map(lambda p, v: None, config) as guest:
        benchmark(guest.feed, chunk)
    benchmark.extra_info["MB/s"] = MiB / 1e6 / benchmark.stats.stats.mean


def test_checkpoint_directory_store(benchmark, echo: Guest, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A checkpoint as a run takes it in the default store, sinks aside: 4 dirty pages put (each
    fsynced), the manifest CAS and its kept copy, the blobs no kept manifest needs deleted."""
    _filled(echo, 1)
    store = DirectoryStore(str(tmp_path / "store"))
    session = SessionStore(store, "bench")
    pages = PageWriter(store, session.pages_prefix)
    manifest = Manifest(session="bench", seq=0, lease_epoch=1, spec_sha256="-", state="running", source={})
    counter = iter(range(10**9))

    def checkpoint() -> None:
        _dirty_4_pages(echo, next(counter) & 0xFF)
        manifest.stages = [pages.capture(echo, "echo")]
        manifest.seq += 1
        session.commit(manifest)
        session.release(manifest)
        pages.retain(session.referenced())

    benchmark(checkpoint)
    store.close()


def _jsonl_bytes(size: int) -> bytes:
    """The first ``size`` bytes of the benchmark's events (pipeline.testing.data), valid lines only."""
    import random

    rng = random.Random(1)
    lines = []
    total = 0
    while total < size:
        lines.append(_event(rng, len(lines) + 1, invalid=False).encode())
        total += len(lines[-1])
    return b"".join(lines)[:size]


def test_jsonl_map_chunk_1mib(benchmark) -> None:  # type: ignore[no-untyped-def]
    """One 1 MiB chunk through jsonl-map with a filter and a projection."""
    chunk = _jsonl_bytes(MiB)
    config = {"filter": {"field": "amount", "op": ">=", "value": 100}, "select": ["id", "ts", "user.id", "amount"]}
    module = GuestModule.load("builtin:jsonl-map")
    with Guest(module, stage="jsonl-map", on_emit=lambda p, v: None) as guest:
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


GROUP_FILES = 32  # a full group (runner.SessionGroup.MAX_SESSIONS)


def test_small_files_group(benchmark, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """32 one-KB JSON Lines files, a durable session each (jsonl-map, two outputs), run as one
    group and committed together in the directory store; extra_info has the time per file."""
    from pipeline._bench_tools import _JSONL_MAP, _wasm_job
    from pipeline.batch import expand_sources, job_for, session_for
    from pipeline.runner import SessionGroup
    from pipeline.spec import JobSpec, load_job
    from pipeline.testing.data import write_small_files

    rounds = iter(range(10**6))

    def setup() -> tuple[tuple[JobSpec, list[str]], dict[str, object]]:
        work = tmp_path / f"group{next(rounds)}"
        write_small_files(work / "in", GROUP_FILES)
        job = load_job(_wasm_job(work, f"{work}/in/*.jsonl", _JSONL_MAP, "out/{stem}.jsonl", "rejects/{stem}.csv"))
        return (job, expand_sources(job)), {}

    def run_group(job: JobSpec, urls: list[str]) -> None:
        group = SessionGroup(job.store, base_dir=job.base_dir)
        try:
            for url in urls:
                group.run(job_for(job, url), session=session_for(job, url))
            assert len(group.pending) == GROUP_FILES and not group.commit().result()
        finally:
            group.close()

    benchmark.pedantic(run_group, setup=setup, rounds=20)
    benchmark.extra_info["ms per file"] = round(benchmark.stats.stats.median / GROUP_FILES * 1e3, 3)
