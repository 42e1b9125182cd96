"""The direct C API crossings of pipeline._wasm_call, on real wasmtime instances."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import wasmtime

from pipeline._wasm_call import Export, HostFunction, memory_size, memory_view

WAT = """(module
  (import "host" "add3" (func $add3 (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "hello")
  (func (export "twice") (param i32) (result i32) (i32.mul (local.get 0) (i32.const 2)))
  (func (export "via_host") (param i32) (result i32) (call $add3 (local.get 0) (i32.const -5) (i32.const 16)))
  (func (export "boom") (result i32) unreachable))
"""


@dataclass
class Instance:
    store: wasmtime.Store
    funcs: dict[str, wasmtime.Func]
    memory: wasmtime.Memory
    host: HostFunction  # kept alive as long as the store
    seen: list[tuple[object, ...]] = field(default_factory=list)


@pytest.fixture
def instance() -> Instance:
    store = wasmtime.Store()
    seen: list[tuple[object, ...]] = []
    memories: list[wasmtime.Memory] = []

    def add3(context: object, a: int, b: int, c: int) -> int:
        seen.append((a, b, c, bytes(memory_view(context, memories[0], c, 5) or b"")))
        return a + b + c

    host = HostFunction(store, 3, 1, add3)
    exports = wasmtime.Instance(store, wasmtime.Module(store.engine, WAT), [host.func]).exports(store)
    memory = exports["memory"]
    assert isinstance(memory, wasmtime.Memory)
    memories.append(memory)
    funcs = {name: f for name in ("twice", "via_host", "boom") if isinstance(f := exports[name], wasmtime.Func)}
    return Instance(store, funcs, memory, host, seen)


def test_an_export_is_called_with_signed_i32s(instance: Instance) -> None:
    twice = Export(instance.store, instance.funcs["twice"], 1, 1)
    assert [twice(21), twice(-4), twice(2**30)] == [42, -8, -(2**31)]


def test_a_host_function_gets_every_argument_and_its_result_reaches_the_guest(instance: Instance) -> None:
    assert Export(instance.store, instance.funcs["via_host"], 1, 1)(100) == 111
    assert instance.seen == [(100, -5, 16, b"hello")]


def test_a_trap_raises(instance: Instance) -> None:
    with pytest.raises(wasmtime.Trap):
        Export(instance.store, instance.funcs["boom"], 0, 1)()


def test_more_than_one_parameter_or_result_is_refused(instance: Instance) -> None:
    with pytest.raises(ValueError, match="at most one parameter"):
        Export(instance.store, instance.funcs["twice"], 2, 1)
    with pytest.raises(ValueError, match="at most one result"):
        HostFunction(instance.store, 1, 2, lambda context, a: a)


def test_memory_views_are_bounds_checked(instance: Instance) -> None:
    memory, context = instance.memory, instance.store._context()
    assert memory_size(context, memory) == 65536
    assert bytes(memory_view(context, memory, 16, 5) or b"") == b"hello"
    assert memory_view(context, memory, 65535, 2) is None
    assert memory_view(context, memory, -1, 1) is None
    assert memory_view(context, memory, 0, 0) == b""


def test_a_host_function_that_raises_traps_the_guest(instance: Instance) -> None:
    def fails(context: object, a: int, b: int, c: int) -> int:
        raise RuntimeError("no")

    host = HostFunction(instance.store, 3, 1, fails)
    exports = wasmtime.Instance(instance.store, wasmtime.Module(instance.store.engine, WAT), [host.func]).exports(
        instance.store
    )
    via_host = exports["via_host"]
    assert isinstance(via_host, wasmtime.Func)
    with pytest.raises((wasmtime.Trap, wasmtime.WasmtimeError), match=r"host import raised RuntimeError\(.no.\)"):
        Export(instance.store, via_host, 1, 1)(1)


# A guest that emits N times in one call; the host sends itself SIGINT from inside the 100th
# emit, i.e. inside a host import's ctypes callback. Run in a child: the bug this guards
# against crashed the process.
CTRL_C_CHILD = """
import os, signal, sys
from pipeline.runtime import Guest, GuestModule
from pipeline.testing import wat
sys.path.insert(0, {bench!r})
from test_micro import EMIT_N

emitted = []
def on_emit(port, view):
    emitted.append(len(view))
    if len(emitted) == 100:
        os.kill(os.getpid(), signal.SIGINT)

with Guest(GuestModule.load(wat.build(EMIT_N), name="emit-n"), stage="emit-n", on_emit=on_emit) as guest:
    guest.start(b"{{}}")
    try:
        guest.process(5000)
    except KeyboardInterrupt:
        print("interrupted after", len(emitted))
    try:
        guest.process(10)  # and the next Ctrl-C-free call works
    except KeyboardInterrupt:
        print("a second interrupt")
print("emitted", len(emitted))
"""


def test_ctrl_c_during_a_guest_call_is_raised_when_the_call_returns() -> None:
    bench = str(Path(__file__).resolve().parent.parent / "benchmarks")
    child = subprocess.run(
        [sys.executable, "-c", CTRL_C_CHILD.format(bench=bench)], capture_output=True, text=True, timeout=60
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.split("\n")[:2] == ["interrupted after 5000", "emitted 5010"], child.stdout + child.stderr
    assert "Exception ignored" not in child.stderr
