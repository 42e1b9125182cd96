"""Just enough of the WebAssembly binary format to export a module's hidden mutable globals.

A snapshot must capture every mutable global, but C toolchains keep some (``__stack_pointer``)
unexported, and the embedding API can only reach exported ones. :func:`export_mutable_globals`
rewrites the export section so each unexported mutable global defined by the module is
exported as ``__pl_global_<index>``. Nothing else in the module changes, so code, data and
behaviour are identical; the module's identity (its sha256) is always taken of the original
bytes.

Only the import, global and export sections are decoded; every other section is copied as is.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import GuestABIError

MAGIC = b"\x00asm\x01\x00\x00\x00"
GLOBAL_EXPORT_PREFIX = "__pl_global_"

_SECTION_IMPORT, _SECTION_GLOBAL, _SECTION_EXPORT, _SECTION_DATA = 2, 6, 7, 11
_WASM_PAGE = 65536
# Sections that must come after the export section (start, element, data count, code, data).
_AFTER_EXPORT = {8, 9, 12, 10, 11}
_KIND_GLOBAL = 0x03
_VALTYPES = {0x7F: "i32", 0x7E: "i64", 0x7D: "f32", 0x7C: "f64", 0x7B: "v128", 0x70: "funcref", 0x6F: "externref"}


@dataclass(frozen=True)
class GlobalInfo:
    """One global the module defines (not imports): its absolute index, type and mutability."""

    index: int
    valtype: str
    mutable: bool


class _Reader:
    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def byte(self) -> int:
        if self.pos >= self.end:
            raise GuestABIError("malformed wasm module: unexpected end of section")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def u32(self) -> int:
        result = shift = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7
            if shift > 35:
                raise GuestABIError("malformed wasm module: LEB128 integer too long")

    def skip_signed(self) -> None:
        while self.byte() & 0x80:
            pass

    def skip(self, n: int) -> None:
        if self.pos + n > self.end:
            raise GuestABIError("malformed wasm module: unexpected end of section")
        self.pos += n

    def name(self) -> str:
        n = self.u32()
        start = self.pos
        self.skip(n)
        return self.data[start : self.pos].decode("utf-8", errors="replace")

    def limits(self) -> None:
        flags = self.byte()
        self.u32()  # minimum
        if flags & 0x01:
            self.u32()  # maximum
        if flags & 0x08:
            self.u32()  # custom page size (log2)

    def valtype(self) -> str:
        code = self.byte()
        if code not in _VALTYPES:
            raise GuestABIError(f"unsupported wasm value type 0x{code:02x} (typed references/GC are not supported)")
        return _VALTYPES[code]

    def const_expr(self) -> None:
        """Skip a constant expression up to and including its ``end`` opcode."""
        while True:
            op = self.byte()
            if op == 0x0B:  # end
                return
            if op in (0x41, 0x42):  # i32.const, i64.const
                self.skip_signed()
            elif op == 0x43:  # f32.const
                self.skip(4)
            elif op == 0x44:  # f64.const
                self.skip(8)
            elif op in (0x23, 0xD2):  # global.get, ref.func
                self.u32()
            elif op == 0xD0:  # ref.null
                self.byte()
            elif op in (0x6A, 0x6B, 0x6C, 0x7C, 0x7D, 0x7E):  # extended-const arithmetic
                pass
            elif op == 0xFD:  # v128.const
                self.u32()
                self.skip(16)
            else:
                raise GuestABIError(f"unsupported opcode 0x{op:02x} in a global initializer")


def _encode_u32(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _encode_name(name: str) -> bytes:
    raw = name.encode()
    return _encode_u32(len(raw)) + raw


def _sections(data: bytes) -> list[tuple[int, int, int]]:
    """Return ``(id, payload_start, payload_end)`` for every section."""
    if not data.startswith(MAGIC):
        raise GuestABIError("not a WebAssembly module (bad magic or version; a component is not a core module)")
    reader = _Reader(data, len(MAGIC))
    sections = []
    while reader.pos < len(data):
        section_id = reader.byte()
        size = reader.u32()
        start = reader.pos
        reader.skip(size)
        sections.append((section_id, start, start + size))
    return sections


def defined_globals(data: bytes) -> list[GlobalInfo]:
    """List the globals a module defines itself, with absolute indices (imports come first)."""
    imported = 0
    found: list[GlobalInfo] = []
    for section_id, start, end in _sections(data):
        reader = _Reader(data, start, end)
        if section_id == _SECTION_IMPORT:
            for _ in range(reader.u32()):
                reader.name()
                reader.name()
                kind = reader.byte()
                if kind in (0x00, 0x04):  # func, tag: type index (tag has an attribute byte first)
                    if kind == 0x04:
                        reader.byte()
                    reader.u32()
                elif kind == 0x01:  # table
                    reader.valtype()
                    reader.limits()
                elif kind == 0x02:  # memory
                    reader.limits()
                elif kind == _KIND_GLOBAL:
                    reader.valtype()
                    reader.byte()
                    imported += 1
                else:
                    raise GuestABIError(f"malformed wasm module: unknown import kind 0x{kind:02x}")
        elif section_id == _SECTION_GLOBAL:
            for offset in range(reader.u32()):
                valtype = reader.valtype()
                mutable = reader.byte() == 0x01
                reader.const_expr()
                found.append(GlobalInfo(imported + offset, valtype, mutable))
    return found


def _exported_global_indices(data: bytes, start: int, end: int) -> tuple[int, int, set[int]]:
    """Return the export count, where the entries start, and the exported global indices."""
    reader = _Reader(data, start, end)
    count = reader.u32()
    entries_start = reader.pos
    indices = set()
    for _ in range(count):
        reader.name()
        kind = reader.byte()
        index = reader.u32()
        if kind == _KIND_GLOBAL:
            indices.add(index)
    return count, entries_start, indices


def data_segment_pages(data: bytes) -> frozenset[int] | None:
    """The memory pages a fresh instance's active data segments write, or None if unknowable.

    Every other page of a fresh instance is zero, so restoring a snapshot need not clear it.
    A segment placed by anything but an ``i32.const`` offset (position-independent code) makes
    the answer unknowable.
    """
    pages: set[int] = set()
    for section_id, start, end in _sections(data):
        if section_id != _SECTION_DATA:
            continue
        reader = _Reader(data, start, end)
        for _ in range(reader.u32()):
            flags = reader.u32()
            if flags == 1:  # passive: written only by memory.init, which a C guest runs in _initialize
                reader.skip(reader.u32())
                continue
            if flags == 2:
                reader.u32()  # memory index
            if reader.byte() != 0x41:  # i32.const
                return None
            offset = _signed_leb(reader)
            if reader.byte() != 0x0B:
                return None
            length = reader.u32()
            reader.skip(length)
            if length:
                pages.update(range(offset // _WASM_PAGE, (offset + length - 1) // _WASM_PAGE + 1))
    return frozenset(pages)


def _signed_leb(reader: _Reader) -> int:
    result = shift = 0
    while True:
        b = reader.byte()
        result |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return result - (1 << shift) if b & 0x40 else result


def exported_global_indices(data: bytes) -> set[int]:
    """Absolute indices of the globals the module exports."""
    for section_id, start, end in _sections(data):
        if section_id == _SECTION_EXPORT:
            return _exported_global_indices(data, start, end)[2]
    return set()


def export_mutable_globals(data: bytes) -> bytes:
    """Return the module with every unexported mutable defined global exported.

    The new exports are named ``__pl_global_<index>``. A module with nothing to add is
    returned unchanged.
    """
    sections = _sections(data)
    export = next(((s, e) for sid, s, e in sections if sid == _SECTION_EXPORT), None)
    count, entries_start, already = _exported_global_indices(data, *export) if export else (0, 0, set())
    missing = [g.index for g in defined_globals(data) if g.mutable and g.index not in already]
    if not missing:
        return data

    entries = b"".join(
        _encode_name(f"{GLOBAL_EXPORT_PREFIX}{index}") + bytes([_KIND_GLOBAL]) + _encode_u32(index) for index in missing
    )
    if export:
        payload = _encode_u32(count + len(missing)) + data[entries_start : export[1]] + entries
    else:
        payload = _encode_u32(len(missing)) + entries
    section = bytes([_SECTION_EXPORT]) + _encode_u32(len(payload)) + payload

    out = bytearray(MAGIC)
    inserted = False
    pos = len(MAGIC)
    for section_id, _payload_start, end in sections:
        header_start = pos
        pos = end
        if section_id == _SECTION_EXPORT:
            out += section
            inserted = True
            continue
        if not inserted and export is None and section_id in _AFTER_EXPORT:
            out += section
            inserted = True
        out += data[header_start:end]
    if not inserted:
        out += section
    return bytes(out)
