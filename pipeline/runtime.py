"""Running one guest: a sandboxed wasmtime instance speaking guest ABI v1 (DESIGN §3).

A :class:`Guest` owns one wasmtime ``Store`` and one instance of a :class:`GuestModule`. It
checks the module against the ABI when loading it, grants it only the ``pipeline`` host
imports (no WASI: no files, network, clock or randomness), bounds every call with a wall-clock
deadline (epoch interruption) and optional fuel, caps its memory, and maps every trap to a
typed :class:`~pipeline.errors.GuestError` that names the stage and the input offset.

All sandbox defaults live in :class:`GuestLimits` and :func:`_engine`.

Data never takes a detour through ``bytes``: :meth:`Guest.input_view` is a writable view of the
guest's input area that a source ``readinto``s, and ``on_emit`` receives a view of guest memory.
Views are only valid until the next guest call (memory may grow and move), so they are rebuilt
each time and never kept.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import hashlib
import logging
import os
import re
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import wasmtime

from pipeline._wasm_call import (
    HELD_INTERRUPTS,
    Export,
    HostFunction,
    instance_export,
    instance_func,
    memory_size,
    memory_view,
    set_epoch_deadline,
)
from pipeline.errors import (
    GuestABIError,
    GuestError,
    GuestMemoryLimit,
    GuestTimeout,
    GuestTrap,
    SpecError,
)
from pipeline.wasm_binary import data_segment_pages, defined_globals, export_mutable_globals

ABI_VERSION = 1
WASM_PAGE = 65536
EPOCH_TICK_SECONDS = 0.01
MiB = 1024 * 1024
MAX_TABLE_ELEMENTS = 1_000_000  # tables live outside linear memory: cap them too
MAX_TABLES = 4

log = logging.getLogger("pipeline.guest")

EmitHandler = Callable[[int, memoryview], None]

_I32 = wasmtime.ValType.i32()
_U32 = 0xFFFFFFFF  # the ABI's i32 addresses and lengths are unsigned: `value & _U32`
_COUNTERS = struct.Struct("<3Q")  # pl_counters: records in, out, rejected (wasm memory is little-endian)
# name -> (params, results) of every export ABI v1 requires
_REQUIRED_EXPORTS: dict[str, tuple[list[wasmtime.ValType], list[wasmtime.ValType]]] = {
    "pl_abi_version": ([], [_I32]),
    "pl_input_buffer": ([], [_I32]),
    "pl_input_capacity": ([], [_I32]),
    "pl_init": ([_I32], [_I32]),
    "pl_process": ([_I32], [_I32]),
    "pl_finish": ([], [_I32]),
}
_OPTIONAL_EXPORTS = {"pl_counters": ([], [_I32]), "pl_outputs": ([], [_I32]), "_initialize": ([], [])}
DEFAULT_OUTPUTS = {"rejects": 1}
"""What a guest without ``pl_outputs`` may emit besides port 0 (main)."""
_OUTPUT_LINE = re.compile(r"^([a-z][a-z0-9_-]{0,31})=([1-9]|[1-9][0-9]|1[0-9][0-9]|2[0-4][0-9]|25[0-5])$")
_HOST_IMPORTS: dict[str, tuple[list[wasmtime.ValType], list[wasmtime.ValType]]] = {
    "pl_emit": ([_I32, _I32, _I32], [_I32]),
    "pl_fail": ([_I32, _I32], []),
    "pl_log": ([_I32, _I32, _I32], []),
}
_SNAPSHOT_TYPES = {"i32", "i64", "f32", "f64"}
_LOG_LEVELS = {0: logging.DEBUG, 1: logging.INFO, 2: logging.WARNING, 3: logging.ERROR}


@dataclass(frozen=True)
class GuestLimits:
    """The sandbox of one stage. Defaults are safe for untrusted guests."""

    memory: int = 256 * MiB
    """Most linear memory the guest may grow to, in bytes."""
    call_timeout: float = 30.0
    """Wall-clock seconds one guest call may run before it is interrupted."""
    fuel: int | None = None
    """Instructions (roughly) one call may execute; ``None`` for no fuel metering."""


class _Ticker:
    """Advances an engine's epoch every tick so deadlines expire; one daemon thread per engine."""

    def __init__(self, engine: wasmtime.Engine) -> None:
        self._engine = engine
        thread = threading.Thread(target=self._run, name="pipeline-epoch", daemon=True)
        thread.start()

    def _run(self) -> None:
        event = threading.Event()
        while not event.wait(EPOCH_TICK_SECONDS):
            self._engine.increment_epoch()


_ENGINE_LOCK = threading.Lock()


def _engine(fuel: bool) -> wasmtime.Engine:
    """The process's engine for one sandbox flavour (fuel metering costs speed, so it's opt-in).

    Engines are thread-safe and cached, like compiled modules: a cache, not state a run
    depends on. The lock matters: a module compiled by one engine cannot run in another's store.
    """
    with _ENGINE_LOCK:
        return _new_engine(fuel)


@functools.cache
def _new_engine(fuel: bool) -> wasmtime.Engine:
    config = wasmtime.Config()
    config.epoch_interruption = True
    config.consume_fuel = fuel
    config.cranelift_opt_level = "speed"
    if os.environ.get("PIPELINE_WASM_CACHE", "1") != "0":
        # wasmtime's on-disk cache of compiled code: a new process loads a guest in ~1 ms, not ~40.
        with contextlib.suppress(wasmtime.WasmtimeError):
            config.cache = True
    engine = wasmtime.Engine(config)
    _Ticker(engine)
    return engine


_SPEAKS_OUR_ABI: set[str] = set()
"""sha256 of the modules whose ``pl_abi_version`` an instance has answered with ours."""


@dataclass(frozen=True)
class GuestModule:
    """A compiled, ABI-checked guest module."""

    name: str
    sha256: str
    module: wasmtime.Module
    fuel: bool
    outputs: dict[str, int]
    """Named outputs the guest declares (``pl_outputs``), name -> port; port 0 is always main."""
    declared: bool
    """Whether the guest declares its outputs (then each must be routed) or uses the default."""
    data_pages: frozenset[int] | None = None
    """Pages a fresh instance's data segments fill (the rest start zeroed); None if unknown."""
    functions: tuple[str, ...] = ()
    """The ABI's exports this module has (all required ones, and the optional ones it defines)."""
    mutable_globals: tuple[str, ...] = ()
    """Names of the exported mutable globals: what a snapshot holds besides memory."""
    imports: tuple[str, ...] = ()
    """The host imports it asks for, in the module's order (``module.imports`` costs ~10 µs a call)."""

    @classmethod
    def load(
        cls, source: str | Path | bytes | bytearray, *, name: str | None = None, fuel: bool = False
    ) -> GuestModule:
        """Compile and check a module from a path or bytes (``builtin:NAME`` resolves first)."""
        if isinstance(source, bytes | bytearray):
            data, label = bytes(source), name or "<bytes>"
        else:
            path = resolve_guest_path(source)
            label = name or str(source)
            try:
                st = path.stat()
                data = _read_module(str(path), (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
            except OSError as exc:
                raise SpecError(f"cannot read guest module {path}: {exc.strerror}") from exc
        return _compile(data, label, fuel)


@functools.lru_cache(maxsize=64)
def _read_module(path: str, version: tuple[int, ...]) -> bytes:
    """A module file's bytes, read again only when the file changed (``version``: its device,
    inode, size, mtime and ctime; ctime catches a rewrite that kept or restored the mtime).

    A batch loads its guests once per group of files (``SessionGroup.load_module``): the same
    bytes object each time is also what keeps :func:`_compile`'s cache lookup cheap (a bytes
    object hashes its content once).
    """
    with open(path, "rb") as file:
        return file.read()


def resolve_guest_path(source: str | Path) -> Path:
    """A guest reference as a path: ``builtin:NAME`` is the packaged module of that name."""
    text = str(source)
    if text.startswith("builtin:"):
        from pipeline.guests import builtin_path

        return builtin_path(text.removeprefix("builtin:"))
    return Path(source)


@functools.lru_cache(maxsize=64)
def _compile(data: bytes, label: str, fuel: bool) -> GuestModule:
    sha = hashlib.sha256(data).hexdigest()
    try:
        module = wasmtime.Module(_engine(fuel), export_mutable_globals(data))
    except wasmtime.WasmtimeError as exc:
        first_line = str(exc).strip().splitlines()[0]
        raise GuestABIError(f"{label}: not a valid WebAssembly module: {first_line}") from exc
    _check_abi(module, label, data)
    exports = {e.name: e.type for e in module.exports}
    guest_module = GuestModule(
        label,
        sha,
        module,
        fuel,
        dict(DEFAULT_OUTPUTS),
        declared=False,
        data_pages=data_segment_pages(data),
        functions=tuple(name for name in (*_REQUIRED_EXPORTS, *_OPTIONAL_EXPORTS) if name in exports),
        mutable_globals=tuple(
            name for name, ty in exports.items() if isinstance(ty, wasmtime.GlobalType) and ty.mutable
        ),
        imports=tuple(imp.name or "" for imp in module.imports),
    )
    if "pl_outputs" in exports:
        with Guest(guest_module, stage=label, on_emit=_refuse_emit) as probe:
            outputs = probe.declared_outputs()
        guest_module = dataclasses.replace(guest_module, outputs=outputs, declared=True)
    return guest_module


def _refuse_emit(port: int, view: memoryview) -> None:
    raise GuestABIError(f"guest emitted to port {port} while the host only read its declarations")


def _signature(ty: wasmtime.FuncType) -> tuple[list[str], list[str]]:
    return [str(p) for p in ty.params], [str(r) for r in ty.results]


def _check_abi(module: wasmtime.Module, label: str, data: bytes) -> None:
    problems = abi_problems(module, data)
    if problems:
        raise GuestABIError(f"{label} does not implement guest ABI v{ABI_VERSION}: " + "; ".join(problems))


def abi_problems(module: wasmtime.Module, data: bytes) -> list[str]:
    """Everything about a module (its exports, imports and globals) that breaks guest ABI v1."""
    problems: list[str] = [
        f"mutable global {g.index} is {g.valtype}; snapshots hold only i32, i64, f32 and f64 globals"
        for g in defined_globals(data)
        if g.mutable and g.valtype not in _SNAPSHOT_TYPES
    ]
    exports = {e.name: e.type for e in module.exports}
    if not isinstance(exports.get("memory"), wasmtime.MemoryType):
        problems.append("no exported memory named 'memory'")
    for name, (params, results) in {**_REQUIRED_EXPORTS, **_OPTIONAL_EXPORTS}.items():
        ty = exports.get(name)
        if ty is None:
            if name in _REQUIRED_EXPORTS:
                problems.append(f"missing export {name}")
        elif not isinstance(ty, wasmtime.FuncType):
            problems.append(f"export {name} is not a function")
        elif _signature(ty) != ([str(p) for p in params], [str(r) for r in results]):
            problems.append(f"export {name} has the wrong signature")
    for imp in module.imports:
        expected = _HOST_IMPORTS.get(imp.name or "") if imp.module == "pipeline" else None
        if expected is None:
            problems.append(f"imports {imp.module}.{imp.name}, which the host does not grant")
        elif not isinstance(imp.type, wasmtime.FuncType) or _signature(imp.type) != (
            [str(p) for p in expected[0]],
            [str(r) for r in expected[1]],
        ):
            problems.append(f"import pipeline.{imp.name} has the wrong signature")
    return problems


_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def guest_text(raw: memoryview | bytes) -> str:
    """Text from a guest, made safe for one terminal line: control characters escaped."""
    text = bytes(raw).decode("utf-8", errors="replace")
    return _UNPRINTABLE.sub(lambda m: repr(m.group())[1:-1], text)


@dataclass
class GlobalState:
    """The value of one mutable global, by export name; floats are kept as raw bits."""

    name: str
    valtype: str
    value: int


class Guest:
    """One running instance of a guest module, with its own store and sandbox.

    Use it as a context manager or call :meth:`close`; closing twice is fine and any call after
    close raises ``ValueError``.
    """

    def __init__(
        self,
        module: GuestModule,
        *,
        stage: str,
        on_emit: EmitHandler,
        limits: GuestLimits | None = None,
    ) -> None:
        self.module = module
        self.stage = stage
        self.limits = limits or GuestLimits()
        self.on_emit = on_emit
        self.bytes_in = 0
        """Bytes fed to :meth:`process` over the whole session (restored on resume)."""
        self._pending = 0  # bytes of the call in progress, for error messages
        self._failure: str | None = None
        self._host_error: BaseException | None = None
        self._closed = False

        HELD_INTERRUPTS.install()  # Ctrl-C must not land inside a host import's ctypes callback
        self._store = wasmtime.Store(_engine(module.fuel))
        self._deadline_ticks = max(1, round(self.limits.call_timeout / EPOCH_TICK_SECONDS))
        self._fuel = self.limits.fuel if module.fuel else None
        self._store.set_limits(
            memory_size=self.limits.memory,
            table_elements=MAX_TABLE_ELEMENTS,
            instances=1,
            tables=MAX_TABLES,
            memories=1,
        )
        self._imports = [self._host_import(name) for name in module.imports]
        self._arm()  # a start function runs during instantiation: it gets a deadline too
        try:
            self._instance = wasmtime.Instance(self._store, module.module, [i.func for i in self._imports])
        except (wasmtime.WasmtimeError, wasmtime.Trap) as exc:
            raise self._translate(exc, "instantiating") from exc
        # The module was checked when loaded: these exports exist and have these types.
        memory = instance_export(self._store, self._instance, "memory")
        assert isinstance(memory, wasmtime.Memory)
        self._memory = memory
        # Exports are looked up on first use: a small file's session calls 7 of a guest's ~10,
        # and its mutable globals are only read or written by a snapshot.
        self._funcs: dict[str, Export] = {}
        self._globals: dict[str, wasmtime.Global] = {}
        if module.sha256 not in _SPEAKS_OUR_ABI:  # every instance of a module answers the same
            self._check_abi_version()
            _SPEAKS_OUR_ABI.add(module.sha256)
        self._input_ptr = 0
        self._input_cap = 0

    # -- host imports ---------------------------------------------------------------------
    # Host imports never raise into wasmtime: wasmtime-py parks such an exception in a
    # process-wide slot, where a session on another thread could pick it up. Instead the first
    # error is kept on this Guest, pl_emit answers non-zero (the guest must then fail its call),
    # and _call raises the kept error once the guest has returned.
    def _host_import(self, name: str) -> HostFunction:
        params, results = _HOST_IMPORTS[name]
        handler = getattr(self, f"_import_{name}")
        refusal = 1 if results else None

        def guarded(context: Any, *args: int) -> int | None:
            if self._host_error is not None:
                return refusal
            try:
                return handler(context, *args)
            except BaseException as exc:  # re-raised by _call, on this thread
                self._host_error = exc
                return refusal

        return HostFunction(self._store, len(params), len(results), guarded)

    def _guest_view(self, context: Any, ptr: int, length: int, what: str) -> memoryview:
        """``length`` bytes at ``ptr`` of the calling guest's memory (``context``: the caller's)."""
        ptr, length = ptr & _U32, length & _U32
        view = memory_view(context, self._memory, ptr, length)
        if view is None:
            size = memory_size(context, self._memory)
            raise GuestABIError(
                f"{self.stage}: {what} passed an out-of-bounds range [{ptr}, {ptr}+{length}) of a {size}-byte memory"
            )
        return view

    def _import_pl_emit(self, context: Any, port: int, ptr: int, length: int) -> int:
        view = self._guest_view(context, ptr, length, "pl_emit")
        self.on_emit(port, view)
        return 0

    def _import_pl_fail(self, context: Any, ptr: int, length: int) -> None:
        self._failure = guest_text(self._guest_view(context, ptr, min(length & _U32, 4096), "pl_fail"))

    def _import_pl_log(self, context: Any, level: int, ptr: int, length: int) -> None:
        text = guest_text(self._guest_view(context, ptr, min(length & _U32, 4096), "pl_log"))
        log.log(_LOG_LEVELS.get(level, logging.INFO), "%s: %s", self.stage, text)

    # -- calls ----------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"guest {self.stage} is closed")

    def _arm(self) -> None:
        """Give the next guest call its deadline (and fuel)."""
        set_epoch_deadline(self._store, self._deadline_ticks)
        if self._fuel is not None:
            self._store.set_fuel(self._fuel)

    def _call(self, name: str, *args: int) -> Any:
        self._check_open()
        self._arm()
        self._host_error = None
        try:
            result = (self._funcs.get(name) or self._export(name))(*args)
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            if self._host_error is not None:
                raise self._host_error from None
            raise self._translate(exc, name) from exc
        if self._host_error is not None:
            raise self._host_error
        return result

    def _export(self, name: str) -> Export:
        # The module was checked when loaded: its functions exist and have these types.
        func = instance_func(self._store, self._instance, name)
        assert func is not None, name
        params, results = _REQUIRED_EXPORTS.get(name) or _OPTIONAL_EXPORTS[name]
        self._funcs[name] = export = Export(self._store, func, len(params), len(results))
        return export

    def _global(self, name: str) -> wasmtime.Global:
        glob = self._globals.get(name)
        if glob is None:
            found = instance_export(self._store, self._instance, name)
            assert isinstance(found, wasmtime.Global), name
            self._globals[name] = glob = found
        return glob

    def _check_abi_version(self) -> None:
        """Refuse a guest that speaks another ABI version."""
        version = self._call("pl_abi_version")
        if version != ABI_VERSION:
            raise GuestABIError(f"{self.stage}: guest speaks ABI v{version}; this host speaks v{ABI_VERSION}")

    def _call_status(self, name: str, *args: int) -> None:
        """Call an export that returns 0 on success and reports failures with ``pl_fail``."""
        self._failure = None
        status = self._call(name, *args)
        if status != 0:
            reason = self._failure or f"{name} returned {status} without a message"
            if self._near_memory_limit():
                raise GuestMemoryLimit(
                    f"{self._where()}: {reason} (memory at its {self.limits.memory // MiB} MiB limit)",
                    hint="raise limits.memory for this stage",
                )
            raise GuestError(f"{self._where()}: {reason}")

    def _where(self) -> str:
        """The stage and the input it was working on, e.g. ``stage 1 (x) at input bytes 0-1,048,576``."""
        if self._pending:
            return f"{self.stage} at input bytes {self.bytes_in:,}-{self.bytes_in + self._pending:,}"
        return f"{self.stage} at input byte {self.bytes_in:,}"

    def _near_memory_limit(self) -> bool:
        # The limiter makes memory.grow return -1 without saying so; a failure with memory at
        # (nearly) its cap is the observable sign. A failed instantiation has no memory yet.
        memory = getattr(self, "_memory", None)
        return memory is not None and memory.data_len(self._store) + 16 * WASM_PAGE >= self.limits.memory

    def _translate(self, exc: Exception, during: str) -> GuestError:
        where = f"{self._where()} ({during})"
        code = getattr(exc, "trap_code", None)
        if code == wasmtime.TrapCode.INTERRUPT:
            return GuestTimeout(
                f"{where}: call exceeded its {self.limits.call_timeout:g}s deadline",
                hint="raise limits.call_timeout, or check the guest for an endless loop",
            )
        if code == wasmtime.TrapCode.OUT_OF_FUEL:
            return GuestTimeout(f"{where}: call ran out of fuel ({self.limits.fuel})", hint="raise limits.fuel")
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if self._near_memory_limit():
            return GuestMemoryLimit(
                f"{where}: trapped with memory at its {self.limits.memory // MiB} MiB limit: {message}",
                hint="raise limits.memory for this stage",
            )
        if isinstance(exc, wasmtime.Trap):
            return GuestTrap(f"{where}: trapped: {message}")
        return GuestABIError(f"{where}: {message}")

    # -- the ABI --------------------------------------------------------------------------
    def start(self, config: bytes) -> None:
        """Run the module's initializer and ``pl_init`` with the stage config (a fresh session).

        A config the guest refuses is a ``GuestError``; :attr:`failure` holds the guest's reason.
        """
        if "_initialize" in self.module.functions:
            self._call("_initialize")
        self._load_input_area()
        if len(config) > self._input_cap:
            raise SpecError(f"config is {len(config)} bytes; the guest accepts at most {self._input_cap}")
        self.input_view()[: len(config)] = config
        self._call_status("pl_init", len(config))

    @property
    def failure(self) -> str | None:
        """What the guest last reported with ``pl_fail`` (sanitised), if anything."""
        return self._failure

    def _load_input_area(self) -> None:
        # The ABI's i32s are u32 addresses and sizes: read signed, memory above 2 GiB would be negative.
        ptr, cap = self._call("pl_input_buffer") & _U32, self._call("pl_input_capacity") & _U32
        if ptr <= 0 or cap <= 0 or ptr + cap > self._memory.data_len(self._store):
            raise GuestABIError(f"{self.stage}: input area [{ptr}, {ptr}+{cap}) is not inside its memory")
        self._input_ptr, self._input_cap = ptr, cap

    @property
    def input_area(self) -> tuple[int, int]:
        """``(pointer, capacity)`` of the guest's input area."""
        return self._input_ptr, self._input_cap

    def input_view(self) -> memoryview:
        """A writable view of the input area, valid until the next guest call."""
        self._check_open()
        view = memory_view(self._store._context(), self._memory, self._input_ptr, self._input_cap)
        assert view is not None, "the input area was checked to lie inside memory, which never shrinks"
        return view

    def process(self, length: int) -> None:
        """Have the guest consume ``length`` bytes already placed in its input area."""
        self._pending = length
        try:
            self._call_status("pl_process", length)
        finally:
            self._pending = 0
        self.bytes_in += length

    def feed(self, data: memoryview | bytes) -> None:
        """Copy ``data`` into the input area piece by piece and process each piece."""
        self._check_open()
        view = memoryview(data)
        for start in range(0, len(view), self._input_cap):
            piece = view[start : start + self._input_cap]
            self.input_view()[: len(piece)] = piece
            self.process(len(piece))

    def finish(self) -> None:
        """Signal end of stream: the guest flushes partial state and all buffered output."""
        self._call_status("pl_finish")

    def declared_outputs(self) -> dict[str, int]:
        """Parse ``pl_outputs``: NUL-terminated UTF-8 ``name=port`` lines, ports 1-255."""
        ptr = self._call("pl_outputs") & _U32
        memory = self.memory_view()
        try:
            end = bytes(memory[ptr : ptr + 4096]).find(b"\0") if ptr < len(memory) else -1
            raw = bytes(memory[ptr : ptr + end]) if end >= 0 else None
        finally:
            memory.release()
        if raw is None:
            raise GuestABIError(f"{self.stage}: pl_outputs must point at a NUL-terminated text inside memory")
        outputs: dict[str, int] = {}
        for line in raw.decode("utf-8", "replace").split():
            match = _OUTPUT_LINE.match(line)
            if not match or match.group(1) in outputs or int(match.group(2)) in outputs.values():
                shown = guest_text(line.encode())
                raise GuestABIError(f"{self.stage}: pl_outputs line {shown!r} is not a new name=port (ports 1-255)")
            outputs[match.group(1)] = int(match.group(2))
        return outputs

    def counters(self) -> tuple[int, int, int] | None:
        """``(records_in, records_out, records_rejected)`` if the guest exports ``pl_counters``."""
        self._check_open()
        if "pl_counters" not in self.module.functions:
            return None
        ptr = self._call("pl_counters") & _U32
        view = memory_view(self._store._context(), self._memory, ptr, 24)
        if view is None:
            raise GuestABIError(f"{self.stage}: pl_counters returned an out-of-bounds pointer {ptr}")
        records_in, records_out, rejected = _COUNTERS.unpack(view)
        return records_in, records_out, rejected

    # -- state ----------------------------------------------------------------------------
    def memory_view(self) -> memoryview:
        """A read-write view of all linear memory, valid until the next guest call."""
        self._check_open()
        context = self._store._context()
        view = memory_view(context, self._memory, 0, memory_size(context, self._memory))
        assert view is not None
        return view

    def memory_pages(self) -> int:
        """Current memory size in 64 KiB wasm pages."""
        self._check_open()
        return self._memory.size(self._store)

    def grow_to(self, pages: int) -> None:
        """Grow memory to ``pages`` (restoring a snapshot taken after the guest grew)."""
        current = self.memory_pages()
        if pages > current:
            try:
                self._memory.grow(self._store, pages - current)
            except wasmtime.WasmtimeError as exc:
                raise GuestMemoryLimit(
                    f"{self.stage}: cannot restore {pages * WASM_PAGE / MiB:g} MiB of memory "
                    f"under its {self.limits.memory / MiB:g} MiB limit",
                    hint="raise limits.memory for this stage",
                ) from exc
        if pages < current:
            raise GuestABIError(f"{self.stage}: snapshot has {pages} pages but a fresh instance already has {current}")

    def read_globals(self) -> list[GlobalState]:
        """Every mutable global's value, floats as their raw bits."""
        self._check_open()
        states = []
        for name in self.module.mutable_globals:
            glob = self._global(name)
            valtype = str(glob.type(self._store).content)
            states.append(GlobalState(name, valtype, _to_bits(valtype, glob.value(self._store))))
        return states

    def write_globals(self, states: list[GlobalState]) -> None:
        """Restore mutable globals captured by :meth:`read_globals`."""
        self._check_open()
        for state in states:
            if state.name not in self.module.mutable_globals:
                raise GuestABIError(f"{self.stage}: snapshot has global {state.name!r} the module lacks")
            self._global(state.name).set_value(self._store, _from_bits(state.valtype, state.value))

    def restored(self) -> None:
        """Finish a restore: re-read the input area (its pointer lives in restored memory)."""
        self._load_input_area()

    def close(self) -> None:
        """Release the store; safe to call twice."""
        if not self._closed:
            self._closed = True
            self._funcs.clear()
            self._globals.clear()
            del self._instance, self._memory
            del self._store
            self._imports.clear()  # the store that could call them is gone

    def __enter__(self) -> Guest:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _to_bits(valtype: str, value: Any) -> int:
    if valtype == "f32":
        return int.from_bytes(ctypes.c_float(value), "little")
    if valtype == "f64":
        return int.from_bytes(ctypes.c_double(value), "little")
    return int(value)  # i32 / i64: other types are refused when the module loads


def _from_bits(valtype: str, bits: int) -> int | float:
    if valtype == "f32":
        return ctypes.c_float.from_buffer_copy(bits.to_bytes(4, "little")).value
    if valtype == "f64":
        return ctypes.c_double.from_buffer_copy(bits.to_bytes(8, "little")).value
    return bits
