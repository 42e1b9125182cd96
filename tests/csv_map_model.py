"""A Python model of the csv-map guest, helpers that run the guest against it, and hypothesis
strategies for random CSV and random valid configs; shared by the csv-map test modules.

The model is built on ``csv.reader`` and the Python standard library (``int``, ``float``,
``datetime.date``), so it states csv-map's behaviour independently of the C code.
"""

from __future__ import annotations

import csv
import datetime
import io
import re
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import strategies as st
from support import run_record_guest

from pipeline.errors import GuestError
from pipeline.guests import builtin_path
from pipeline.runtime import Guest, GuestModule
from pipeline.testing import run_guest

CHUNK_SIZES = [None, 1, 2, 3, 5, 63, 64, 65, 1000]

NUMBER = re.compile(r"[ \t]*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?[ \t]*\Z")
INT = re.compile(r"[ \t]*[+-]?[0-9]+[ \t]*\Z")
DATE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})\Z")
OPS: dict[str, Callable[[int], bool]] = {
    "==": lambda c: c == 0,
    "!=": lambda c: c != 0,
    ">": lambda c: c > 0,
    ">=": lambda c: c >= 0,
    "<": lambda c: c < 0,
    "<=": lambda c: c <= 0,
}


def records(data: bytes) -> list[tuple[int, list[str]]]:
    """(start line, fields) of each record, as csv.reader reads the file; blank lines dropped."""
    reader = csv.reader(io.StringIO(data.decode("utf-8-sig"), newline=""))
    out = []
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return out
        if row:
            out.append((start, row))


def csv_row(fields: list[str]) -> str:
    """One CSV row the way csv-map writes it (quote only when needed), '\\n'-terminated."""

    def field(value: str) -> str:
        if any(c in value for c in ',"\r\n') or (value == "" and len(fields) == 1):
            return '"' + value.replace('"', '""') + '"'
        return value

    return ",".join(field(v) for v in fields) + "\n"


def case_map(text: str, upper: bool) -> str:
    """csv-map's case mapping: ASCII letters, and Latin-1 letters U+00C0..U+00FE but U+00D7 and U+00F7."""

    def one(ch: str) -> str:
        o = ord(ch)
        if upper and (0x61 <= o <= 0x7A or (0xE0 <= o <= 0xFE and o != 0xF7)):
            return chr(o - 0x20)
        if not upper and (0x41 <= o <= 0x5A or (0xC0 <= o <= 0xDE and o != 0xD7)):
            return chr(o + 0x20)
        return ch

    return "".join(one(ch) for ch in text)


def is_type(value: str, kind: str) -> bool:
    """Whether a non-empty field is a valid `kind` (int, float or date) for csv-map's types."""
    if kind == "float":
        return bool(NUMBER.match(value))
    if kind == "int":
        return bool(INT.match(value)) and -(2**63) <= int(value) < 2**63
    match = DATE.match(value)
    if not match:
        return False
    try:
        datetime.date(*map(int, match.groups()))
    except ValueError:  # not a real day, or year 0000
        return False
    return True


class Reject(Exception):
    """A row goes to the rejects; the message is the reason."""


def shown(value: str) -> str:
    """A field value as a reason quotes it: at most 64 bytes (cut at a character), then '...'."""
    raw = value.encode()
    if len(raw) <= 64:
        return f'"{value}"'
    cut = 64
    while raw[cut] & 0xC0 == 0x80:
        cut -= 1
    return f'"{raw[:cut].decode()}..."'


def passes_filter(node: dict[str, Any], fields: list[str], column: Callable[[str], int]) -> bool:
    """Whether the row passes a filter node. Every member of a group is evaluated (no short cut),
    so a non-number in any numeric condition raises Reject, the first one in config order."""
    for kind, combine in (("all", all), ("any", any)):
        if kind in node:
            return combine([passes_filter(member, fields, column) for member in node[kind]])
    value = fields[column(node["column"])]
    a: bytes | float
    b: bytes | float
    if isinstance(node["value"], str):
        a, b = value.encode(), node["value"].encode()
    elif NUMBER.match(value):
        a, b = float(value.strip(" \t")), float(node["value"])
    else:
        raise Reject(f"column '{node['column']}' is not a number: {shown(value)}")
    return OPS[node["op"]]((a > b) - (a < b))  # type: ignore[operator]


def model(config: dict[str, Any], data: bytes) -> tuple[list[list[str]], list[list[str]], tuple[int, int, int]]:
    """csv-map's output rows (header first), reject rows and counters, for a valid config."""
    recs = records(data)
    if not recs:
        return [], [], (0, 0, 0)
    (_, header), rows = recs[0], recs[1:]
    src = [header.index(n) for n in config["select"]] if "select" in config else list(range(len(header)))
    names = [config.get("rename", {}).get(header[i], header[i]) for i in src]

    def output_columns(name: str) -> list[int]:
        return [k for k, n in enumerate(names) if n == name] or [k for k, i in enumerate(src) if header[i] == name]

    def column(name: str) -> int:
        """The header index a name in trim, default, required, types or filter designates."""
        return src[names.index(name)] if name in names else header.index(name)

    casing: dict[int, bool] = {}
    for key, upper in (("upper", True), ("lower", False)):
        for name in config.get(key, []):
            casing.update(dict.fromkeys(output_columns(name), upper))
    trim = {column(n) for n in config.get("trim", [])}
    defaults = {column(n): v for n, v in config.get("default", {}).items()}
    checks = [(column(n), "required", n) for n in config.get("required", [])]
    checks += [(column(n), kind, n) for n, kind in config.get("types", {}).items()]
    flt = config.get("filter")
    out, rejects, counters = [names], [], [0, 0, 0]

    def passes(fields: list[str]) -> bool:
        """Steps 1-5 on a row of the right width: False to drop it, Reject to reject it."""
        for i in trim:
            fields[i] = fields[i].strip(" \t")
        for i, value in defaults.items():
            fields[i] = fields[i] or value
        for i, kind, name in checks:
            if kind == "required" and not fields[i]:
                raise Reject(f"column '{name}' is empty")
            if kind != "required" and fields[i] and not is_type(fields[i], kind):
                raise Reject(f"column '{name}' is not {'an' if kind == 'int' else 'a'} {kind}: {shown(fields[i])}")
        return not flt or passes_filter(flt, fields, column)

    for line, row in rows:
        counters[0] += 1
        fields = list(row)
        try:
            if len(row) != len(header):
                raise Reject(f"expected {len(header)} field{'s' * (len(header) != 1)}, got {len(row)}")
            if not passes(fields):
                continue
        except Reject as reason:
            counters[2] += 1
            rejects.append([str(line), str(reason), csv_row(row)[:-1]])
            continue
        counters[1] += 1
        out.append([case_map(fields[i], casing[k]) if k in casing else fields[i] for k, i in enumerate(src)])
    return out, rejects, (counters[0], counters[1], counters[2])


def expected(config: dict[str, Any], data: bytes) -> tuple[bytes, bytes, tuple[int, int, int]]:
    """What csv-map emits on ports 0 and 1, and its counters, for a valid config."""
    out, rejects, counters = model(config, data)
    reject_text = "".join(map(csv_row, [["line", "reason", "record"], *rejects])) if rejects else ""
    return "".join(map(csv_row, out)).encode(), reject_text.encode(), counters


def read_back(text: bytes) -> list[list[str]]:
    """The rows csv.reader reads from text csv-map wrote."""
    return list(csv.reader(io.StringIO(text.decode(), newline="")))


def run(
    config: dict[str, Any], data: bytes, chunk_size: int | None = None
) -> tuple[bytes, bytes, tuple[int, int, int]]:
    """Run csv-map; return (main output, rejects output, counters)."""
    return run_record_guest("csv-map", config, data, chunk_size)


def check(config: dict[str, Any], data: bytes, chunk_sizes: list[int | None] = CHUNK_SIZES) -> bytes:
    """Run at every chunk size, compare with the model; return the main output."""
    want = expected(config, data)
    for size in chunk_sizes:
        assert run(config, data, size) == want, f"chunk size {size}"
    return want[0]


def guest_error(config: dict[str, Any], data: bytes = b"", chunk_size: int | None = None) -> str:
    """The message of the GuestError csv-map fails with (after the host's location prefix)."""
    with pytest.raises(GuestError) as info:
        run_guest("csv-map", config, data, chunk_size=chunk_size)
    return str(info.value).split(": ", 1)[1]


def config_text_error(text: bytes) -> str:
    """The message csv-map's pl_init fails with, given this config text (not JSON from a dict)."""
    module = GuestModule.load(builtin_path("csv-map"))
    with Guest(module, stage="csv-map", on_emit=lambda port, view: None) as guest, pytest.raises(GuestError) as info:
        guest.start(text)
    return str(info.value).split(": ", 1)[1]


def reasons(rejects: bytes) -> list[str]:
    """The reason column of a rejects output."""
    return [reason for _, reason, _ in read_back(rejects)[1:]]


# -------------------------------------------------------------------------------------------------
# Hypothesis strategies
# -------------------------------------------------------------------------------------------------

ALPHABET = st.sampled_from([*'ab Z,"\r\n1.5e-éÉ÷ßÿ中😀\x00\t', "12", "-3", ".5", "x", "plain text"])
"""Pieces of field text: CSV's special characters, numbers, letters to case-map."""


@st.composite
def csv_inputs(
    draw: st.DrawFn, max_rows: int = 8, max_len: int = 6, alphabet: st.SearchStrategy[str] = ALPHABET
) -> bytes:
    """CSV text: well-formed rows (random quoting and line ends) or free-form special characters."""
    text = st.lists(alphabet, max_size=max_len).map("".join)
    if draw(st.integers(0, 4)) == 0:
        return draw(st.lists(alphabet, min_size=1, max_size=max_len * max_rows).map("".join)).encode()
    ncols = draw(st.integers(1, 4))
    header = draw(st.lists(text, min_size=ncols, max_size=ncols, unique=True))
    widths = draw(st.lists(st.sampled_from([ncols, ncols, ncols, 1, 2, 3, 5]), max_size=max_rows))
    rows = [header] + [draw(st.lists(text, min_size=n, max_size=n)) for n in widths]
    parts = []
    for row in rows:
        fields = []
        for value in row:
            must_quote = any(c in value for c in ',"\r\n') or not value
            style = draw(st.sampled_from(["plain", "quoted", "quirk"]))
            if must_quote or style == "quoted":
                fields.append('"' + value.replace('"', '""') + '"')
            elif style == "quirk":
                fields.append('"' + value + '"' + draw(st.sampled_from(["", "x", 'y"z'])))
            else:
                fields.append(value)
        parts.append(",".join(fields) + draw(st.sampled_from(["\n", "\r\n", "\r", "\n\n", "\r\n\r\n"])))
    body = "".join(parts)
    if draw(st.booleans()):
        body = body.rstrip("\r\n")
    if draw(st.integers(0, 9)) == 0:
        body += draw(st.sampled_from(['"', '"open', 'x,"']))
    if draw(st.integers(0, 4)) == 0:
        body = "\ufeff" + body
    return body.encode()


@st.composite
def filters(draw: st.DrawFn, columns: list[str], values: st.SearchStrategy[Any], depth: int = 2) -> dict[str, Any]:
    """A filter node: a condition, or (while depth lasts) an all/any group of 1-3 nodes."""
    if depth and draw(st.integers(0, 2)) == 0:
        members = st.lists(filters(columns, values, depth - 1), min_size=1, max_size=3)
        return {draw(st.sampled_from(["all", "any"])): draw(members)}
    return {"column": draw(st.sampled_from(columns)), "op": draw(st.sampled_from(list(OPS))), "value": draw(values)}


@st.composite
def configs(draw: st.DrawFn, header: list[str], values: st.SearchStrategy[str]) -> dict[str, Any]:
    """A valid csv-map config for this header; `values` gives filter and default strings."""
    config: dict[str, Any] = {}
    names = list(dict.fromkeys(header))
    if draw(st.booleans()):
        config["select"] = draw(st.lists(st.sampled_from(names), min_size=1, max_size=5))
    selected = config.get("select", header)
    if draw(st.booleans()):
        config["rename"] = draw(st.dictionaries(st.sampled_from(list(dict.fromkeys(selected))), values, max_size=2))
    outputs = [config.get("rename", {}).get(n, n) for n in selected]

    def columns(name: str) -> set[int]:
        """The output columns upper or lower would map for this name."""
        return {k for k, n in enumerate(outputs) if n == name} or {k for k, n in enumerate(selected) if n == name}

    def column(name: str) -> int:
        """The header column trim, default, required, types or filter would use for this name."""
        return header.index(selected[outputs.index(name)] if name in outputs else name)

    if draw(st.booleans()):
        config["upper"] = draw(st.lists(st.sampled_from(outputs + list(selected)), max_size=2))
    if draw(st.booleans()):
        lower = draw(st.lists(st.sampled_from(outputs + list(selected)), max_size=2))
        upper = set().union(*(columns(n) for n in config.get("upper", [])))
        config["lower"] = [n for n in lower if not columns(n) & upper]
    anywhere = outputs + names  # trim, default, required, types and filter may name any column
    if draw(st.booleans()):
        config["trim"] = draw(st.lists(st.sampled_from(anywhere), max_size=3))
    if draw(st.booleans()):
        drawn = draw(st.dictionaries(st.sampled_from(anywhere), values, max_size=3))
        taken = [column(n) for n in drawn]  # two defaults for one column are refused
        config["default"] = {n: v for n, v in drawn.items() if taken.count(column(n)) == 1}
    if draw(st.booleans()):
        config["required"] = draw(st.lists(st.sampled_from(anywhere), max_size=2))
    if draw(st.booleans()):
        kinds = st.sampled_from(["int", "float", "date"])
        config["types"] = draw(st.dictionaries(st.sampled_from(anywhere), kinds, max_size=3))
    if draw(st.booleans()):
        numbers = st.one_of(st.floats(-1e4, 1e4, allow_nan=False), st.integers(-100, 100))
        config["filter"] = draw(filters(anywhere, st.one_of(values, numbers)))
    return config


def check_model(data: bytes, chunk: int | None, choice: st.DataObject, values: st.SearchStrategy[str]) -> None:
    """Run a random valid config over data; compare with the model, then read the output back."""
    recs = records(data)
    config = choice.draw(configs(recs[0][1], values)) if recs else {}
    want = expected(config, data)
    assert run(config, data, chunk) == want
    assert run(config, data, 1) == want
    assert read_back(want[0]) == model(config, data)[0]
    originals = dict(recs)
    for line, _, record in read_back(want[1])[1:]:
        assert read_back(record.encode()) == [originals[int(line)]]
