"""Tiny guests written in WAT, for tests and benchmarks that need a guest to behave (or misbehave) exactly so.

Each constant is a full module implementing guest ABI v1 unless its name says otherwise.
"""

from __future__ import annotations

from pathlib import Path

import wasmtime

# The ABI exports shared by the well-behaved guests below; input area at 64 KiB, 256 KiB long.
_ABI = """
  (memory (export "memory") 20)
  (func (export "pl_abi_version") (result i32) i32.const 1)
  (func (export "pl_input_buffer") (result i32) i32.const 65536)
  (func (export "pl_input_capacity") (result i32) i32.const 262144)
  (func (export "pl_init") (param i32) (result i32) i32.const 0)
"""
_EMIT = '(import "pipeline" "pl_emit" (func $emit (param i32 i32 i32) (result i32)))'

# Echoes its input; keeps a byte sum in a NON-exported mutable global and emits it (8 bytes,
# little-endian) at the end, so output is only right if hidden globals survive a resume. It also
# stores the running sum at address 8 after every chunk, so its memory changes at each checkpoint.
ECHO_SUM = f"""(module {_EMIT} {_ABI}
  (global $sum (mut i64) (i64.const 0))
  (func (export "pl_process") (param $len i32) (result i32) (local $i i32)
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $i) (local.get $len)))
      (global.set $sum (i64.add (global.get $sum)
        (i64.load8_u (i32.add (i32.const 65536) (local.get $i)))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next)))
    (i64.store (i32.const 8) (global.get $sum))
    (drop (call $emit (i32.const 0) (i32.const 65536) (local.get $len)))
    i32.const 0)
  (func (export "pl_finish") (result i32)
    (i64.store (i32.const 0) (global.get $sum))
    (drop (call $emit (i32.const 0) (i32.const 0) (i32.const 8)))
    i32.const 0))
"""

# Echoes its input, but a chunk holding a 0xFF byte takes a long busy loop first: a timeout that
# a larger limits.call_timeout cures, for testing a rerun from the last good checkpoint.
SLOW_ON_FF = f"""(module {_EMIT} {_ABI}
  (func (export "pl_process") (param $len i32) (result i32) (local $i i32) (local $spin i32)
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $i) (local.get $len)))
      (if (i32.eq (i32.load8_u (i32.add (i32.const 65536) (local.get $i))) (i32.const 255))
        (then (local.set $spin (i32.const 400000000))
              (loop $busy (local.set $spin (i32.sub (local.get $spin) (i32.const 1)))
                          (br_if $busy (i32.gt_s (local.get $spin) (i32.const 0))))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next)))
    (drop (call $emit (i32.const 0) (i32.const 65536) (local.get $len)))
    i32.const 0)
  (func (export "pl_finish") (result i32) i32.const 0))
"""

# Declares one output, summary=2 (pl_outputs); echoes its input to main and, at the end,
# emits the total byte count (8 bytes, little-endian) to "summary".
WITH_SUMMARY = f"""(module {_EMIT} {_ABI}
  (data (i32.const 32) "summary=2\\00")
  (global $total (mut i64) (i64.const 0))
  (func (export "pl_outputs") (result i32) i32.const 32)
  (func (export "pl_process") (param $len i32) (result i32)
    (global.set $total (i64.add (global.get $total) (i64.extend_i32_u (local.get $len))))
    (drop (call $emit (i32.const 0) (i32.const 65536) (local.get $len)))
    i32.const 0)
  (func (export "pl_finish") (result i32)
    (i64.store (i32.const 0) (global.get $total))
    (drop (call $emit (i32.const 2) (i32.const 0) (i32.const 8)))
    i32.const 0))
"""

SPIN = f"""(module {_ABI}
  (func (export "pl_process") (param i32) (result i32) (loop $forever (br $forever)) i32.const 0)
  (func (export "pl_finish") (result i32) i32.const 0))
"""

MEMORY_BOMB = f"""(module {_ABI}
  (func (export "pl_process") (param i32) (result i32)
    (loop $grow (br_if $grow (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))
    unreachable)
  (func (export "pl_finish") (result i32) i32.const 0))
"""

TRAP = f"""(module {_ABI}
  (func (export "pl_process") (param i32) (result i32) unreachable)
  (func (export "pl_finish") (result i32) i32.const 0))
"""

OUT_OF_BOUNDS_EMIT = f"""(module {_EMIT} {_ABI}
  (func (export "pl_process") (param i32) (result i32)
    (drop (call $emit (i32.const 0) (i32.const 1310000) (i32.const 100000))) i32.const 0)
  (func (export "pl_finish") (result i32) i32.const 0))
"""

EMIT_TO_REJECTS = f"""(module {_EMIT} {_ABI}
  (func (export "pl_process") (param $len i32) (result i32)
    (drop (call $emit (i32.const 1) (i32.const 65536) (local.get $len))) i32.const 0)
  (func (export "pl_finish") (result i32) i32.const 0))
"""

WRONG_ABI_VERSION = ECHO_SUM.replace("(result i32) i32.const 1)", "(result i32) i32.const 2)", 1)

MISSING_FINISH = f"""(module {_ABI}
  (func (export "pl_process") (param i32) (result i32) i32.const 0))
"""

WASI_IMPORT = f"""(module
  (import "wasi_snapshot_preview1" "clock_time_get" (func (param i32 i64 i32) (result i32)))
  {_ABI}
  (func (export "pl_process") (param i32) (result i32) i32.const 0)
  (func (export "pl_finish") (result i32) i32.const 0))
"""


def build(wat: str) -> bytes:
    """Compile WAT text to a wasm binary."""
    return bytes(wasmtime.wat2wasm(wat))


def write(wat: str, path: Path) -> Path:
    """Compile WAT text into a ``.wasm`` file and return its path."""
    path.write_bytes(build(wat))
    return path
