"""The sandbox: ABI checks, host imports, limits and traps, each against a tiny WAT guest."""

from __future__ import annotations

import pytest

from pipeline.errors import GuestABIError, GuestMemoryLimit, GuestTimeout, GuestTrap
from pipeline.runtime import Guest, GuestLimits, GuestModule
from pipeline.testing import run_guest
from pipeline.testing import wat as wat_guests


def _guest(wat: str, **limits: object) -> Guest:
    module = GuestModule.load(wat_guests.build(wat), name="t.wasm")
    guest = Guest(module, stage="stage 1 (t.wasm)", on_emit=lambda port, view: None, limits=GuestLimits(**limits))
    guest.start(b"{}")
    return guest


def test_echo_passes_bytes_through_and_keeps_hidden_global_state() -> None:
    data = bytes(range(256)) * 4000
    run = run_guest(wat_guests.build(wat_guests.ECHO_SUM), data=data, chunk_size=70_000)
    assert run.outputs[0] == data + sum(data).to_bytes(8, "little")
    assert run.counters is None


def test_spin_loop_is_a_timeout_naming_stage_and_offset() -> None:
    with _guest(wat_guests.SPIN, call_timeout=0.2) as guest, pytest.raises(GuestTimeout) as err:
        guest.feed(b"x" * 10)
    assert str(err.value) == "stage 1 (t.wasm) at input bytes 0-10 (pl_process): call exceeded its 0.2s deadline"


def test_spin_loop_with_fuel_runs_out_of_fuel() -> None:
    module = GuestModule.load(wat_guests.build(wat_guests.SPIN), name="t.wasm", fuel=True)
    with Guest(module, stage="s", on_emit=lambda p, v: None, limits=GuestLimits(fuel=100_000)) as guest:
        guest.start(b"{}")
        with pytest.raises(GuestTimeout, match="ran out of fuel"):
            guest.feed(b"x")


def test_memory_bomb_hits_the_memory_limit() -> None:
    with _guest(wat_guests.MEMORY_BOMB, memory=8 * 1024 * 1024) as guest:
        with pytest.raises(GuestMemoryLimit) as err:
            guest.feed(b"x")
        assert guest.memory_pages() * 65536 <= 8 * 1024 * 1024
    assert "8 MiB limit" in str(err.value)


def test_trap_is_a_guest_trap() -> None:
    with (
        _guest(wat_guests.TRAP) as guest,
        pytest.raises(GuestTrap, match=r"stage 1 \(t.wasm\) at input bytes 0-3 \(pl_process\): trapped: "),
    ):
        guest.feed(b"abc")


def test_out_of_bounds_pointer_in_a_host_call_is_an_abi_error() -> None:
    with _guest(wat_guests.OUT_OF_BOUNDS_EMIT) as guest, pytest.raises(GuestABIError, match="out-of-bounds range"):
        guest.feed(b"abc")


@pytest.mark.parametrize(
    ("wat", "message"),
    [
        (wat_guests.WRONG_ABI_VERSION, "guest speaks ABI v2; this host speaks v1"),
        (wat_guests.MISSING_FINISH, "does not implement guest ABI v1: missing export pl_finish"),
        (
            wat_guests.WASI_IMPORT,
            "imports wasi_snapshot_preview1.clock_time_get, which the host does not grant",
        ),
    ],
)
def test_modules_breaking_the_abi_are_refused_with_what_is_wrong(wat: str, message: str) -> None:
    with pytest.raises(GuestABIError, match=message):
        _guest(wat)


def test_garbage_is_not_a_module() -> None:
    with pytest.raises(GuestABIError, match="not a WebAssembly module"):
        GuestModule.load(b"\x00asm\x02\x00\x00\x00junk", name="junk.wasm")


def test_guest_lifecycle_close_twice_then_value_error() -> None:
    guest = _guest(wat_guests.ECHO_SUM)
    guest.close()
    guest.close()
    with pytest.raises(ValueError, match="closed"):
        guest.feed(b"x")


def test_host_errors_stay_on_their_own_thread() -> None:
    """Each thread's guest fails with its own host error, never another thread's."""
    import threading

    module = GuestModule.load(wat_guests.build(wat_guests.ECHO_SUM), name="t.wasm")
    mixups: list[str] = []

    class ThreadError(Exception):
        pass

    def worker(tag: str) -> None:
        def on_emit(port: int, view: memoryview) -> None:
            raise ThreadError(tag)

        with Guest(module, stage=tag, on_emit=on_emit) as guest:
            guest.start(b"{}")
            for _ in range(300):
                try:
                    guest.feed(b"x")
                except ThreadError as exc:
                    if exc.args != (tag,):
                        mixups.append(f"{tag} got {exc.args}")

    threads = [threading.Thread(target=worker, args=(f"t{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not mixups


# A memory of 2 GiB + 128 KiB, its input area and what it emits above 2**31: as i32s those
# addresses are negative, and only as u32s are they the guest's.
HIGH_MEMORY = """(module
  (import "pipeline" "pl_emit" (func $emit (param i32 i32 i32) (result i32)))
  (memory (export "memory") 32770)
  (func (export "pl_abi_version") (result i32) i32.const 1)
  (func (export "pl_input_buffer") (result i32) i32.const 0x80010000)
  (func (export "pl_input_capacity") (result i32) i32.const 65536)
  (func (export "pl_init") (param i32) (result i32) i32.const 0)
  (func (export "pl_process") (param $len i32) (result i32)
    (drop (call $emit (i32.const 0) (i32.const 0x80010000) (local.get $len)))
    i32.const 0)
  (func (export "pl_finish") (result i32) i32.const 0))
"""


def test_addresses_above_two_gib_are_the_guests_own() -> None:
    limits = GuestLimits(memory=3 * 2**30)
    run = run_guest(wat_guests.build(HIGH_MEMORY), data=b"hello, high memory", chunk_size=7, limits=limits)
    assert run.outputs[0] == b"hello, high memory"
