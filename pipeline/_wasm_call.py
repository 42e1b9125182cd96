"""Crossing between Python and a guest through wasmtime's C API directly.

wasmtime-py's generic paths cost tens of microseconds a crossing: ``Func.__call__`` asks for the
function's type, builds ``ValType`` objects, converts each argument through ``Val`` and allocates
the argument and result arrays on every call; its import trampoline wraps the caller and converts
every parameter and the result. The guest ABI only ever passes i32s (``runtime.abi_problems``
checks every export and import before a guest runs), so both directions can use arrays built once
and read the values straight out of ``wasmtime_val_t``. Measured (benchmarks/test_micro.py): a
guest call 38 -> 9 µs, a ``pl_emit`` 14.6 -> 6.8 µs, a 1 MiB csv-map chunk 2.16 -> 2.00 ms (one A/B on
a busy machine).

This uses wasmtime-py's ctypes bindings (``wasmtime._bindings``, generated from the C API
headers) and the raw handles its objects keep (``Func._func``, ``Memory._memory``); pyproject
pins the wasmtime release the tests ran against, so an upgrade is a deliberate, tested step.
"""

from __future__ import annotations

import ctypes
import signal
import threading
from collections.abc import Callable
from types import FrameType

import wasmtime
from wasmtime import _bindings as ffi
from wasmtime._extern import wrap_extern

HostHandler = Callable[..., int | None]
"""A host import: ``handler(context, *i32 args) -> i32 result or None``; one that raises traps the guest."""

_I32_KIND = 0  # WASMTIME_I32 (wasmtime/val.h)
_EXTERN_FUNC = 0  # WASMTIME_EXTERN_FUNC (wasmtime/extern.h)
_NO_FINALIZER = ffi._wasmtime_func_new.argtypes[4]()  # a NULL finalizer: the callback has no env to free


class _HeldInterrupts:
    """Ctrl-C while a guest runs on the main thread, raised once the call has returned.

    Python's own SIGINT handler raises KeyboardInterrupt at the next bytecode, which during a
    guest call is inside a host import's ctypes callback: ctypes can only print such an exception
    and hand wasmtime an undefined result, which crashed the process (or, when it happened to be
    0, dropped the block being emitted). This handler behaves as Python's everywhere else.
    """

    def __init__(self) -> None:
        self.depth = 0  # guest calls in progress on the main thread
        self.pending = False

    def install(self) -> None:
        """Take SIGINT over from Python's default handler (from the main thread; once)."""
        on_main = threading.current_thread() is threading.main_thread()
        if on_main and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        if self.depth:
            self.pending = True
        else:
            signal.default_int_handler(signum, frame)

    def raise_pending(self) -> None:
        if self.pending and not self.depth:
            self.pending = False
            raise KeyboardInterrupt


HELD_INTERRUPTS = _HeldInterrupts()
_MAIN_THREAD = threading.main_thread().ident


class Export:
    """A guest export of type ``(i32?) -> i32?``, called cheaply.

    The caller vouches for the type (``runtime.abi_problems`` checks every export of a guest
    module once, when it is loaded); asking wasmtime for it here would cost most of what the
    direct call saves on a small file.
    """

    __slots__ = ("_args", "_context", "_func", "_keep", "_nargs", "_nresults", "_results")

    def __init__(
        self, store: wasmtime.Store, func: wasmtime.Func | ffi.wasmtime_func_t, nargs: int, nresults: int
    ) -> None:
        """``func``: a wasmtime-py ``Func``, or the raw handle :func:`instance_func` found."""
        if nargs > 1 or nresults > 1:
            raise ValueError(f"Export: at most one parameter and one result, not {nargs} and {nresults}")
        self._nargs, self._nresults = nargs, nresults
        self._args = (ffi.wasmtime_val_t * 1)()
        self._args[0].kind = _I32_KIND
        self._results = (ffi.wasmtime_val_t * 1)()
        self._context = store._context()  # the same pointer for the store's whole life
        self._keep = (store, func)
        self._func = ctypes.byref(func._func if isinstance(func, wasmtime.Func) else func)

    def __call__(self, arg: int = 0) -> int | None:
        """Call the export (with ``arg`` if it takes one); a trap raises ``wasmtime.Trap``."""
        self._args[0].of.i32 = arg
        trap = ctypes.POINTER(ffi.wasm_trap_t)()
        on_main = threading.get_ident() == _MAIN_THREAD
        if on_main:
            HELD_INTERRUPTS.depth += 1
        try:
            error = ffi._wasmtime_func_call(
                self._context, self._func, self._args, self._nargs, self._results, self._nresults, ctypes.byref(trap)
            )
        finally:
            if on_main:
                HELD_INTERRUPTS.depth -= 1
                HELD_INTERRUPTS.raise_pending()
        if error:
            raise wasmtime.WasmtimeError._from_ptr(error)
        if trap:
            raise wasmtime.Trap._from_ptr(trap)
        return int(self._results[0].of.i32) if self._nresults else None


def set_epoch_deadline(store: wasmtime.Store, ticks: int) -> None:
    """``store.set_epoch_deadline(ticks)`` without its wrapper: a small file's guest calls it 8 times."""
    ffi._wasmtime_context_set_epoch_deadline(store._context(), ticks)


def _export_item(store: wasmtime.Store, instance: wasmtime.Instance, name: str) -> ffi.wasmtime_extern_t | None:
    item = ffi.wasmtime_extern_t()
    raw = name.encode()
    found = ffi._wasmtime_instance_export_get(
        store._context(), ctypes.byref(instance._instance), raw, len(raw), ctypes.byref(item)
    )
    return item if found else None


def instance_export(store: wasmtime.Store, instance: wasmtime.Instance, name: str) -> wasmtime.AsExtern | None:
    """One export of an instance by name, or None.

    ``Instance.exports`` wraps every export of the module (12 for a builtin guest) before it can
    answer one lookup: ~0.13 ms a Guest, a tenth of what a small file's guest costs to start.
    """
    item = _export_item(store, instance, name)
    return None if item is None else wrap_extern(item)


def instance_func(store: wasmtime.Store, instance: wasmtime.Instance, name: str) -> ffi.wasmtime_func_t | None:
    """An exported function's raw handle for :class:`Export`, or None: no wasmtime-py ``Func``
    built around it (a small file's guest looks up 7)."""
    item = _export_item(store, instance, name)
    return item.of.func if item is not None and item.kind == _EXTERN_FUNC else None


# Per engine: a wasm_functype_t binds itself to the first engine it is used with, and wasmtime
# aborts the process when another engine's store uses it. The engines live as long as the
# process (runtime._engine), and so do these few types.
_FUNC_TYPES: dict[tuple[wasmtime.Engine, int, int], wasmtime.FuncType] = {}


def _func_type(engine: wasmtime.Engine, nargs: int, nresults: int) -> wasmtime.FuncType:
    key = (engine, nargs, nresults)
    ty = _FUNC_TYPES.get(key)
    if ty is None:
        i32 = wasmtime.ValType.i32()
        ty = _FUNC_TYPES[key] = wasmtime.FuncType([i32] * nargs, [i32] * nresults)
    return ty


class HostFunction:
    """A host import of type ``(i32 * nargs) -> i32?``; keep this object alive as long as the store."""

    def __init__(self, store: wasmtime.Store, nargs: int, nresults: int, handler: HostHandler) -> None:
        if nresults > 1:
            raise ValueError(f"HostFunction: at most one result, not {nresults}")
        ty = _func_type(store.engine, nargs, nresults)

        def callback(env: int, caller: object, args: ctypes.Array, n: int, results: ctypes.Array, m: int) -> int:
            try:
                value = handler(ffi._wasmtime_caller_context(caller), *(args[i].of.i32 for i in range(nargs)))
                if nresults:
                    results[0].kind = _I32_KIND
                    results[0].of.i32 = value
                return 0  # no trap
            except BaseException as exc:  # never back into C: a handler is not meant to raise
                message = f"host import raised {exc!r}".encode()
                return ctypes.cast(ffi.wasmtime_trap_new(message, len(message)), ctypes.c_void_p).value or 0

        self._callback = ffi.wasmtime_func_callback_t(callback)  # ctypes frees it with this object
        self._func = ffi.wasmtime_func_t()
        ffi._wasmtime_func_new(
            store._context(), ty.ptr(), self._callback, None, _NO_FINALIZER, ctypes.byref(self._func)
        )
        self.func = wasmtime.Func._from_raw(self._func)
        """The import to hand to ``wasmtime.Instance``."""


# A memoryview straight over guest memory. ``(c_ubyte * n).from_address`` creates a ctypes array
# type for every new length and ctypes keeps each one for good: 11 -> 3 µs a view of a length
# not seen before, and no cache that grows with every distinct length a guest emits.
_view_of_memory = ctypes.pythonapi.PyMemoryView_FromMemory
_view_of_memory.restype = ctypes.py_object
_view_of_memory.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_int]
_PYBUF_WRITE = 0x200


def memory_view(context: object, memory: wasmtime.Memory, ptr: int, length: int) -> memoryview | None:
    """``length`` bytes of guest memory at ``ptr``, writable, without copying, or None when out of
    bounds. Valid until the guest next runs (a call may grow, and so move, its memory)."""
    size = ffi._wasmtime_memory_data_size(context, ctypes.byref(memory._memory))
    if ptr < 0 or length < 0 or ptr + length > size:
        return None
    if length == 0:
        return memoryview(b"")
    base = ctypes.cast(ffi._wasmtime_memory_data(context, ctypes.byref(memory._memory)), ctypes.c_void_p).value
    return _view_of_memory(base + ptr, length, _PYBUF_WRITE)


def memory_size(context: object, memory: wasmtime.Memory) -> int:
    """The guest memory's size in bytes."""
    return int(ffi._wasmtime_memory_data_size(context, ctypes.byref(memory._memory)))
