"""The direct C API crossings of pipeline._wasm_call, on real wasmtime instances."""

from __future__ import annotations

from dataclasses import dataclass, field

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
