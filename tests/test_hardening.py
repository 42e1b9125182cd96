"""Hardening: one test per bug an adversarial review of the durability core found.

Each test pins the fixed behaviour. The two still marked strict xfail are known limitations of
ABI v1 (guest tables are not snapshotted; f32 signalling-NaN payloads are quieted), kept visible
here until they are fixed. Guests are tiny WAT modules.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from support import ECHO_JOB, Interrupt, echo_expected, interrupt_at, make_echo_job

from pipeline._faults import FaultPoints
from pipeline.admin import collect_garbage
from pipeline.errors import (
    GuestABIError,
    GuestError,
    GuestMemoryLimit,
    GuestTrap,
    PipelineError,
    ResumeMismatch,
    SourceError,
    SpecError,
)
from pipeline.runner import run_session
from pipeline.runtime import Guest, GuestLimits, GuestModule
from pipeline.session import SessionStore
from pipeline.snapshot import Manifest, PageWriter, restore
from pipeline.spec import load_job
from pipeline.stores import open_store
from pipeline.stores.memory import MemoryStore
from pipeline.testing import wat

PREFIX = "sessions/review/pages/"
_ABI_NO_INIT = wat._ABI.replace('(func (export "pl_init") (param i32) (result i32) i32.const 0)', "")

# -- guests ---------------------------------------------------------------------------------------

# Emits a header on port 0 from pl_init (a CSV header, say), then echoes its input.
HEADER_ECHO = f"""(module {wat._EMIT} {_ABI_NO_INIT}
  (data (i32.const 100) "HDR\\n")
  (func (export "pl_init") (param i32) (result i32)
    (drop (call $emit (i32.const 0) (i32.const 100) (i32.const 4))) i32.const 0)
  (func (export "pl_process") (param $len i32) (result i32)
    (drop (call $emit (i32.const 0) (i32.const 65536) (local.get $len))) i32.const 0)
  (func (export "pl_finish") (result i32) i32.const 0))
"""

# A module with a wasm `start` function (AssemblyScript, some Rust builds): valid ABI v1.
WITH_START = f"""(module {wat._EMIT} {wat._ABI}
  (global $ready (mut i32) (i32.const 0))
  (func $init (global.set $ready (i32.const 1)))
  (start $init)
  (func (export "pl_process") (param $len i32) (result i32)
    (drop (call $emit (i32.const 0) (i32.const 65536) (local.get $len))) i32.const 0)
  (func (export "pl_finish") (result i32) i32.const 0))
"""

# An unexported mutable v128 global (what SIMD code can leave behind).
V128_GLOBAL = f"""(module {wat._EMIT} {wat._ABI}
  (global $v (mut v128) (v128.const i64x2 1 2))
  (func (export "pl_process") (param $len i32) (result i32)
    (drop (call $emit (i32.const 0) (i32.const 65536) (local.get $len))) i32.const 0)
  (func (export "pl_finish") (result i32) i32.const 0))
"""

# ECHO_SUM that grows its memory to 100 pages on its first chunk.
GROWING_ECHO_SUM = wat.ECHO_SUM.replace(
    "(param $len i32) (result i32) (local $i i32)",
    "(param $len i32) (result i32) (local $i i32)\n"
    "    (if (i32.lt_u (memory.size) (i32.const 100)) (then (drop (memory.grow (i32.const 80)))))",
)

# Grows its funcref table by 5M entries (~40 MB of host memory) and fails if that was refused.
TABLE_BOMB = f"""(module {wat._ABI}
  (table $t 1 funcref)
  (func (export "pl_process") (param i32) (result i32)
    (i32.eq (table.grow $t (ref.null func) (i32.const 5000000)) (i32.const -1)))
  (func (export "pl_finish") (result i32) i32.const 0))
"""

# Switches a table slot while processing; pl_finish emits what the slot's function returns.
TABLE_SWITCH = f"""(module {wat._EMIT} {wat._ABI}
  (type $ret (func (result i32)))
  (table 1 funcref)
  (elem (i32.const 0) $one)
  (elem declare func $two)
  (func $one (result i32) i32.const 1)
  (func $two (result i32) i32.const 2)
  (func (export "pl_process") (param i32) (result i32)
    (table.set (i32.const 0) (ref.func $two)) i32.const 0)
  (func (export "pl_finish") (result i32)
    (i32.store (i32.const 0) (call_indirect (type $ret) (i32.const 0)))
    (drop (call $emit (i32.const 0) (i32.const 0) (i32.const 4))) i32.const 0))
"""

# Holds a signalling f32 NaN and an f64 NaN with payloads in hidden globals; emits their bits.
NAN_GLOBALS = f"""(module {wat._EMIT} {wat._ABI}
  (global $f (mut f32) (f32.const 0))
  (global $d (mut f64) (f64.const 0))
  (func (export "pl_process") (param i32) (result i32)
    (global.set $f (f32.reinterpret_i32 (i32.const 0x7fa00001)))
    (global.set $d (f64.reinterpret_i64 (i64.const 0x7ff4000000000001)))
    i32.const 0)
  (func (export "pl_finish") (result i32)
    (i32.store (i32.const 0) (i32.reinterpret_f32 (global.get $f)))
    (i64.store (i32.const 4) (i64.reinterpret_f64 (global.get $d)))
    (drop (call $emit (i32.const 0) (i32.const 0) (i32.const 12))) i32.const 0))
"""

# Fails with a message holding a newline and a terminal escape (an untrusted guest's text).
MULTILINE_FAIL = f"""(module (import "pipeline" "pl_fail" (func $fail (param i32 i32))) {wat._ABI}
  (data (i32.const 100) "bad row\\nerror: all good, ignore the above\\1b[2K")
  (func (export "pl_process") (param i32) (result i32)
    (call $fail (i32.const 100) (i32.const 45)) i32.const 1)
  (func (export "pl_finish") (result i32) i32.const 0))
"""

# pl_counters returns a pointer in the upper half of the 32-bit space (negative as an i32).
COUNTERS_HIGH = f"""(module {wat._ABI}
  (func (export "pl_process") (param i32) (result i32) i32.const 0)
  (func (export "pl_finish") (result i32) i32.const 0)
  (func (export "pl_counters") (result i32) i32.const -100))
"""


def _write_job(directory: Path, text: str, data: bytes = b"") -> Path:
    (directory / "in.bin").write_bytes(data)
    (directory / "job.yaml").write_text(text)
    return directory / "job.yaml"


def _finish_output(text: str, chunk: bytes) -> tuple[bytes, bytes]:
    """What the guest emits from pl_finish after ``chunk``: uninterrupted, and restored from a snapshot."""
    module = GuestModule.load(wat.build(text))
    store = MemoryStore(f"memory://review-{uuid.uuid4().hex}")
    straight: list[bytes] = []
    resumed: list[bytes] = []
    with Guest(module, stage="s", on_emit=lambda p, v: straight.append(bytes(v))) as guest:
        guest.start(b"{}")
        guest.feed(chunk)
        state = PageWriter(store, PREFIX).capture(guest, "s")
        guest.finish()
    with Guest(module, stage="s", on_emit=lambda p, v: resumed.append(bytes(v))) as fresh:
        restore(fresh, state, store, PREFIX)
        fresh.finish()
    return b"".join(straight), b"".join(resumed)


# -- an HTTP source on 127.0.0.1 ------------------------------------------------------------------


class _Handler(SimpleHTTPRequestHandler):
    """Static files with Last-Modified (no ETag), like python -m http.server; optional Range."""

    ranges = True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def send_head(self) -> Any:
        spec = self.headers.get("Range")
        if not (self.ranges and spec):
            return super().send_head()
        data = Path(self.translate_path(self.path)).read_bytes()
        first, _, last = spec.removeprefix("bytes=").partition("-")
        start, end = int(first), min(int(last) if last else len(data) - 1, len(data) - 1)
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        return io.BytesIO(data[start : end + 1])


class _NoRangeHandler(_Handler):
    ranges = False


@contextlib.contextmanager
def _http_server(root: Path, handler: type[_Handler] = _Handler) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _http_echo_job(directory: Path, url: str) -> Path:
    wat.write(wat.ECHO_SUM, directory / "echo.wasm")
    (directory / "job.yaml").write_text(ECHO_JOB.replace("url: in.bin", f"url: '{url}'"))
    return directory / "job.yaml"


# == high ==========================================================================================


def test_http_source_changed_in_place_is_not_resumed(tmp_path: Path) -> None:
    www = tmp_path / "www"
    www.mkdir()
    (www / "in.bin").write_bytes(os.urandom(600_000))
    with _http_server(www) as host:
        job = load_job(_http_echo_job(tmp_path, f"http://{host}/in.bin"))
        with pytest.raises(Interrupt):
            run_session(job, on_progress=interrupt_at(500_000))
        stat = (www / "in.bin").stat()
        (www / "in.bin").write_bytes(os.urandom(600_000))  # same size, new content, new mtime
        os.utime(www / "in.bin", (stat.st_mtime + 3600, stat.st_mtime + 3600))
        with pytest.raises(ResumeMismatch):
            run_session(job)


# == medium-high ===================================================================================


def test_guest_with_a_start_function_instantiates() -> None:
    out: list[bytes] = []
    module = GuestModule.load(wat.build(WITH_START), name="start.wasm")
    with Guest(module, stage="stage 1 (start.wasm)", on_emit=lambda p, v: out.append(bytes(v))) as guest:
        guest.start(b"{}")
        guest.feed(b"abc")
    assert out == [b"abc"]


def test_start_function_that_traps_is_a_guest_trap_naming_instantiation() -> None:
    trapping = WITH_START.replace("(func $init (global.set $ready (i32.const 1)))", "(func $init unreachable)")
    module = GuestModule.load(wat.build(trapping), name="start.wasm")
    with pytest.raises(GuestTrap, match=r"stage 1 \(start\.wasm\) at input byte 0 \(instantiating\): trapped"):
        Guest(module, stage="stage 1 (start.wasm)", on_emit=lambda p, v: None)


def test_mutable_v128_global_is_a_one_line_error_not_a_process_abort(tmp_path: Path) -> None:
    wat.write(V128_GLOBAL, tmp_path / "simd.wasm")
    job = _write_job(tmp_path, ECHO_JOB.replace("echo.wasm", "simd.wasm"), b"abc")
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", str(job)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-300:])
    assert proc.stderr.startswith("error: ")


def test_fresh_run_killed_before_its_first_commit_leaves_the_session_resumable(tmp_path: Path) -> None:
    job = make_echo_job(tmp_path, size=1_000_000)
    with pytest.raises(Interrupt):
        run_session(load_job(job), on_progress=interrupt_at(600_000))
    env = {**os.environ, "PIPELINE_TEST_KILL_AT": "sinks-persisted:1"}
    killed = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "--fresh", str(job)], env=env, capture_output=True, timeout=60
    )
    assert killed.returncode == -9
    run_session(load_job(job))
    assert (tmp_path / "out" / "echo.bin").read_bytes() == echo_expected(tmp_path)


# == medium ========================================================================================


def test_chained_stage_may_emit_from_pl_init(tmp_path: Path) -> None:
    wat.write(HEADER_ECHO, tmp_path / "header.wasm")
    wat.write(wat.ECHO_SUM, tmp_path / "echo.wasm")
    data = os.urandom(1000)
    job = _write_job(
        tmp_path,
        ECHO_JOB.replace("  - guest: echo.wasm\n", "  - guest: header.wasm\n  - guest: echo.wasm\n"),
        data,
    )
    run_session(load_job(job))
    fed = b"HDR\n" + data
    assert (tmp_path / "out" / "echo.bin").read_bytes() == fed + sum(fed).to_bytes(8, "little")


def test_a_run_that_published_is_not_told_it_lost_the_session(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    job = load_job(make_echo_job(tmp_path, size=300_000))
    original = FaultPoints.reached
    raced: list[str] = []

    def reached(self: FaultPoints, step: str) -> None:
        if step == "published" and not raced:
            raced.append("second run started between publish and the 'complete' commit")
            with contextlib.suppress(PipelineError):
                run_session(job)
        original(self, step)

    monkeypatch.setattr(FaultPoints, "reached", reached)
    result = run_session(job)
    assert raced and result.status == "complete"
    assert (tmp_path / "out" / "echo.bin").read_bytes() == echo_expected(tmp_path)


def test_gc_does_not_delete_pages_of_a_run_that_starts_during_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = load_job(make_echo_job(tmp_path, size=1_000_000))
    run_session(job)  # complete, recent: gc keeps it and sweeps it
    original = SessionStore.sweep
    raced: list[bool] = []

    def sweep(self: SessionStore) -> int:
        if not raced:  # gc's sweep, after it decided what is live: a --fresh run gets going now
            raced.append(True)
            with contextlib.suppress(Interrupt, PipelineError):
                run_session(job, fresh=True, on_progress=interrupt_at(600_000))
        return original(self)

    monkeypatch.setattr(SessionStore, "sweep", sweep)
    collect_garbage(open_store(str(tmp_path / ".pipeline")), older_than=3600)
    monkeypatch.setattr(SessionStore, "sweep", original)
    run_session(job)
    assert (tmp_path / "out" / "echo.bin").read_bytes() == echo_expected(tmp_path)


def test_table_growth_counts_against_the_memory_limit() -> None:
    module = GuestModule.load(wat.build(TABLE_BOMB), name="table.wasm")
    with Guest(module, stage="s", on_emit=lambda p, v: None, limits=GuestLimits(memory=4 * 2**20)) as guest:
        guest.start(b"{}")
        with pytest.raises(GuestError):
            guest.process(0)


@pytest.mark.xfail(
    strict=True,
    reason="snapshots hold memory and globals only; a guest that mutates its table (table.set/grow) "
    "resumes with the table of a fresh instance: refuse such modules at load or snapshot the table",
)
def test_table_mutation_survives_restore_or_is_refused() -> None:
    try:
        GuestModule.load(wat.build(TABLE_SWITCH))
    except GuestABIError:
        return
    straight, resumed = _finish_output(TABLE_SWITCH, b"x")
    assert resumed == straight


def test_credentials_in_the_source_url_are_not_stored(tmp_path: Path) -> None:
    www = tmp_path / "www"
    www.mkdir()
    (www / "in.bin").write_bytes(os.urandom(10_000))
    with _http_server(www) as host:
        job = _http_echo_job(tmp_path, f"http://reader:s3cret-token@{host}/in.bin")
        run_session(load_job(job))
    store = open_store(str(tmp_path / ".pipeline"))
    head = Manifest.from_bytes(store.get("sessions/echo/manifest"), "head")
    assert "s3cret-token" not in json.dumps(head.source)


def test_sink_url_with_an_unsupported_scheme_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_echo_job(tmp_path, size=1000)
    (tmp_path / "job.yaml").write_text(ECHO_JOB.replace("out/echo.bin", "s3://bucket/echo.bin"))
    monkeypatch.chdir(tmp_path)
    try:
        with pytest.raises(PipelineError):
            run_session(load_job(tmp_path / "job.yaml"))
    finally:
        assert not (tmp_path / "s3:").exists()


# == medium-low ====================================================================================


def test_sink_over_the_source_is_refused(tmp_path: Path) -> None:
    make_echo_job(tmp_path, size=1000)
    data = (tmp_path / "in.bin").read_bytes()
    (tmp_path / "job.yaml").write_text(ECHO_JOB.replace("out/echo.bin", "in.bin"))
    try:
        with pytest.raises(SpecError):
            run_session(load_job(tmp_path / "job.yaml"))
    finally:
        assert (tmp_path / "in.bin").read_bytes() == data


def test_sub_byte_chunk_size_does_not_publish_an_empty_run(tmp_path: Path) -> None:
    make_echo_job(tmp_path, size=1000)
    (tmp_path / "job.yaml").write_text(ECHO_JOB.replace("url: in.bin}", "url: in.bin, chunk_size: '0.5'}"))
    with pytest.raises(SpecError, match=r"source\.chunk_size: expected a size of at least 1 byte"):
        load_job(tmp_path / "job.yaml")


def test_restoring_past_the_memory_limit_is_guest_memory_limit(tmp_path: Path) -> None:
    wat.write(GROWING_ECHO_SUM, tmp_path / "echo.wasm")
    job = _write_job(tmp_path, ECHO_JOB, os.urandom(600_000))
    with pytest.raises(Interrupt):
        run_session(load_job(job), on_progress=interrupt_at(300_000))
    job.write_text(ECHO_JOB.replace("echo.wasm\n", "echo.wasm\n    limits: {memory: 2MiB}\n"))
    with pytest.raises(GuestMemoryLimit):
        run_session(load_job(job))


def test_http_source_without_range_support_is_a_source_error(tmp_path: Path) -> None:
    www = tmp_path / "www"
    www.mkdir()
    (www / "in.bin").write_bytes(os.urandom(600_000))
    with _http_server(www, _NoRangeHandler) as host:
        job = load_job(_http_echo_job(tmp_path, f"http://{host}/in.bin"))
        with pytest.raises(Interrupt):
            run_session(job, on_progress=interrupt_at(500_000))
        with pytest.raises(SourceError):
            run_session(job)


def test_guest_failure_message_is_one_clean_line(tmp_path: Path) -> None:
    wat.write(MULTILINE_FAIL, tmp_path / "echo.wasm")
    job = _write_job(tmp_path, ECHO_JOB, b"abc")
    with pytest.raises(GuestError) as err:
        run_session(load_job(job))
    assert str(err.value).isprintable(), str(err.value)


# == low ===========================================================================================


@pytest.mark.xfail(
    strict=True,
    reason="read_globals goes through Global.value, which turns an f32 into a Python float and sets the "
    "quiet bit of a signalling NaN: its bits change across a resume (f64 survives)",
)
def test_f32_nan_bits_survive_restore() -> None:
    straight, resumed = _finish_output(NAN_GLOBALS, b"x")
    assert resumed == straight


def test_counters_pointer_out_of_bounds_is_an_abi_error() -> None:
    module = GuestModule.load(wat.build(COUNTERS_HIGH))
    with Guest(module, stage="s", on_emit=lambda p, v: None) as guest:
        guest.start(b"{}")
        with pytest.raises(GuestABIError):
            guest.counters()


def test_state_access_after_close_raises_value_error() -> None:
    guest = Guest(GuestModule.load(wat.build(wat.ECHO_SUM)), stage="s", on_emit=lambda p, v: None)
    guest.close()
    with pytest.raises(ValueError, match="closed"):
        guest.read_globals()
    with pytest.raises(ValueError, match="closed"):
        guest.counters()


def test_infinite_call_timeout_is_refused(tmp_path: Path) -> None:
    make_echo_job(tmp_path, size=1000)
    (tmp_path / "job.yaml").write_text(ECHO_JOB.replace("echo.wasm\n", "echo.wasm\n    limits: {call_timeout: .inf}\n"))
    with pytest.raises(SpecError, match=r"limits\.call_timeout: expected a finite duration"):
        load_job(tmp_path / "job.yaml")


def test_same_path_for_sink_and_rejects_is_a_spec_error(tmp_path: Path) -> None:
    make_echo_job(tmp_path, size=1000)
    (tmp_path / "job.yaml").write_text(ECHO_JOB + "rejects: {url: out/echo.bin}\n")
    with pytest.raises(SpecError):
        load_job(tmp_path / "job.yaml")


def test_duplicate_keys_in_the_job_are_refused(tmp_path: Path) -> None:
    make_echo_job(tmp_path, size=1000)
    (tmp_path / "job.yaml").write_text(ECHO_JOB + "sink: {url: out/other.bin}\n")
    with pytest.raises(SpecError):
        load_job(tmp_path / "job.yaml")


def test_a_fenced_commit_does_not_overwrite_the_winners_kept_copy() -> None:
    store = MemoryStore(f"memory://review-{uuid.uuid4().hex}")
    loser, winner = SessionStore(store, "s"), SessionStore(store, "s")
    manifest = Manifest(
        session="s",
        seq=1,
        lease_epoch=1,
        spec_sha256="x",
        state="running",
        source={"url": "u", "identity": {}, "offset": 0, "size": 0},
    )
    loser.commit(manifest)
    taken = winner.read_head()
    assert taken is not None
    taken.lease_epoch += 1
    taken.seq += 1
    taken.source["offset"] = 111
    winner.commit(taken)
    manifest.seq += 1
    manifest.source["offset"] = 999
    with contextlib.suppress(PipelineError):
        loser.commit(manifest)  # Conflict, as it should
    key = winner._history_key(2)
    assert Manifest.from_bytes(store.get(key), key).source["offset"] == 111


def test_a_crash_after_the_complete_commit_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = load_job(make_echo_job(tmp_path, size=600_000))
    original = FaultPoints.reached
    steps: list[str] = []

    class Crash(Exception):
        pass

    def reached(self: FaultPoints, step: str) -> None:
        steps.append(step)
        if step == "manifest-committed" and "published" in steps:
            raise Crash
        original(self, step)

    monkeypatch.setattr(FaultPoints, "reached", reached)
    with pytest.raises(Crash):
        run_session(job)
    monkeypatch.setattr(FaultPoints, "reached", original)
    assert run_session(job).status == "already-complete"
    store = open_store(str(tmp_path / ".pipeline"))
    collect_garbage(store, older_than=3600)
    assert list(store.list("sessions/")) == ["sessions/echo/manifest"]
