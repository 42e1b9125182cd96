"""What ``pipeline inspect GUEST.wasm`` prints: a module's imports, exports, ABI fit, memory and globals."""

from __future__ import annotations

import hashlib

import wasmtime

from pipeline.errors import GuestABIError
from pipeline.runtime import ABI_VERSION, WASM_PAGE, abi_problems
from pipeline.wasm_binary import defined_globals, exported_global_indices


def _func(ty: wasmtime.FuncType) -> str:
    params = ", ".join(str(p) for p in ty.params)
    results = ", ".join(str(r) for r in ty.results) or "()"
    return f"({params}) -> {results}"


def _kind(ty: object) -> str:
    if isinstance(ty, wasmtime.FuncType):
        return f"func {_func(ty)}"
    if isinstance(ty, wasmtime.MemoryType):
        maximum = f"{ty.limits.max} pages" if ty.limits.max is not None else "no max"
        return f"memory {ty.limits.min} pages ({ty.limits.min * WASM_PAGE / 2**20:.2f} MiB), {maximum}"
    if isinstance(ty, wasmtime.GlobalType):
        return f"global {'mut ' if ty.mutable else ''}{ty.content}"
    return type(ty).__name__.removesuffix("Type").lower()


def inspect_module(data: bytes, label: str) -> list[str]:
    """Human-readable lines describing a module; ABI problems are listed, not raised."""
    try:
        module = wasmtime.Module(wasmtime.Engine(), data)
    except wasmtime.WasmtimeError as exc:
        raise GuestABIError(f"{label}: not a valid WebAssembly module: {str(exc).strip().splitlines()[0]}") from exc
    problems = abi_problems(module, data)
    globals_ = defined_globals(data)
    exported = exported_global_indices(data)
    lines = [
        f"module   {label}",
        f"sha256   {hashlib.sha256(data).hexdigest()}",
        f"size     {len(data):,} bytes",
        f"abi      v{ABI_VERSION}: " + ("ok" if not problems else "NOT compatible: " + "; ".join(problems)),
    ]
    lines += [f"import   {imp.module}.{imp.name}: {_kind(imp.type)}" for imp in module.imports]
    lines += [f"export   {exp.name}: {_kind(exp.type)}" for exp in module.exports]
    mutable = [g for g in globals_ if g.mutable]
    lines.append(
        f"globals  {len(globals_)} defined, {len(mutable)} mutable "
        f"({sum(1 for g in mutable if g.index not in exported)} unexported, snapshotted via rewritten exports)"
    )
    return lines
