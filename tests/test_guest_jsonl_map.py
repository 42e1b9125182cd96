"""The jsonl-map guest: filter, select and rename over JSON Lines; invalid lines to rejects.

Checked against a Python model built on json.loads / json.dumps: inputs are written by json.dumps
with random separators, so the guest's compact output (original value text kept) must equal
json.dumps of the expected object with compact separators, byte for byte.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import check_resume, run_record_guest

from pipeline.errors import GuestError, PipelineError
from pipeline.testing import run_guest

CHUNK_SIZES = [None, 1, 2, 3, 7, 64, 1000]
MISSING = object()


# -------------------------------------------------------------------------------------------------
# A Python model of jsonl-map
# -------------------------------------------------------------------------------------------------


def lookup(obj: Any, path: str) -> Any:
    for name in path.split("."):
        if not isinstance(obj, dict) or name not in obj:
            return MISSING
        obj = obj[name]
    return obj


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def holds(cond: dict[str, Any], obj: dict[str, Any]) -> bool:
    if "all" in cond:
        return all(holds(c, obj) for c in cond["all"])
    if "any" in cond:
        return any(holds(c, obj) for c in cond["any"])
    value, op = lookup(obj, cond["field"]), cond["op"]
    if op == "exists":
        return value is not MISSING
    want = cond.get("value")
    cmp: int | None = None
    if is_number(want) and is_number(value):
        cmp = (float(value) > float(want)) - (float(value) < float(want))
    elif isinstance(want, str) and isinstance(value, str):
        a, b = value.encode(), want.encode()
        cmp = (a > b) - (a < b)
    elif isinstance(want, bool | None) and value is want:
        cmp = 0
    if op == "!=":
        return cmp != 0
    return cmp is not None and {"==": cmp == 0, ">": cmp > 0, ">=": cmp >= 0, "<": cmp < 0, "<=": cmp <= 0}[op]


def no_constants(name: str) -> Any:
    """json.loads takes NaN, Infinity and -Infinity; JSON does not."""
    raise ValueError(name)


def dumps(value: Any, ascii_only: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ascii_only, separators=(",", ":"))


def model(
    config: dict[str, Any], data: bytes, ascii_only: bool = False
) -> tuple[bytes, list[int], tuple[int, int, int]]:
    """Main output, rejected line numbers and counters. Output keys and values are written as
    json.dumps writes them (values with `ascii_only`, as the input was written; keys the guest
    writes itself always as UTF-8)."""
    lines = data.removeprefix(b"\xef\xbb\xbf").split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    out, rejected, seen = [], [], 0
    rename = config.get("rename", {})
    for number, raw in enumerate(lines, 1):
        line = raw.removesuffix(b"\r")
        if not line.strip(b" \t\r"):
            continue
        seen += 1
        try:
            obj = json.loads(line.decode("utf-8"), parse_constant=no_constants)
        except ValueError:
            rejected.append(number)
            continue
        if not isinstance(obj, dict):
            rejected.append(number)
            continue
        if "filter" in config and not holds(config["filter"], obj):
            continue
        if "select" in config:
            pairs = [(rename.get(p, p), lookup(obj, p)) for p in config["select"]]
            members = [dumps(k) + ":" + dumps(v, ascii_only) for k, v in pairs if v is not MISSING]
        else:
            members = [
                (dumps(rename[k]) if k in rename else dumps(k, ascii_only)) + ":" + dumps(v, ascii_only)
                for k, v in obj.items()
            ]
        out.append("{" + ",".join(members) + "}\n")
    return "".join(out).encode(), rejected, (seen, len(out), len(rejected))


def run(
    config: dict[str, Any], data: bytes, chunk_size: int | None = None
) -> tuple[bytes, bytes, tuple[int, int, int]]:
    """Run jsonl-map; return (main output, rejects output, counters)."""
    return run_record_guest("jsonl-map", config, data, chunk_size)


def reject_rows(rejects: bytes) -> list[list[str]]:
    rows = list(csv.reader(io.StringIO(rejects.decode("utf-8", "surrogateescape"), newline="")))
    assert not rows or rows[0] == ["line", "reason", "record"]
    return rows[1:]


def check(
    config: dict[str, Any], data: bytes, chunk_sizes: list[int | None] = CHUNK_SIZES, ascii_only: bool | None = None
) -> bytes:
    """Run at each chunk size and compare with the model: byte for byte if the input was written
    by json.dumps (``ascii_only`` says how), else as parsed JSON. Returns the guest's output."""
    out, rejected, counters = model(config, data, bool(ascii_only))
    lines = data.removeprefix(b"\xef\xbb\xbf").split(b"\n")
    for size in chunk_sizes:
        got, rejects, got_counters = run(config, data, size)
        assert got_counters == counters, f"chunk size {size}"
        if ascii_only is None:
            assert [json.loads(line) for line in got.splitlines()] == [json.loads(line) for line in out.splitlines()]
        else:
            assert got == out, f"chunk size {size}"
        rows = reject_rows(rejects)
        assert [int(r[0]) for r in rows] == rejected
        for row in rows:  # the record is the line as read
            assert row[2].encode("utf-8", "surrogateescape") == lines[int(row[0]) - 1].removesuffix(b"\r")
    return got


def message(exc: BaseException) -> str:
    """A failure's message: a refused config (SpecError) is the guest's text; a GuestError
    starts with the host's location prefix."""
    return str(exc).split(": ", 1)[1] if isinstance(exc, GuestError) else str(exc)


def error(config: dict[str, Any], data: bytes = b"") -> str:
    with pytest.raises(PipelineError) as info:
        run_guest("jsonl-map", config, data)
    return message(info.value)


# -------------------------------------------------------------------------------------------------
# Hand-written cases
# -------------------------------------------------------------------------------------------------

DATA = (
    b'{"id": 1, "user": {"name": "zo\\u00eb", "age": 30}, "tags": ["a", "b"], "score": 1.50}\n'
    b'{"id": 2, "user": {"name": "bob"}, "score": -3e2, "x": null}\r\n'
    b"\n"
    b"   \t\n"
    b'{"id": 3, "user": {"name": "\xc3\xa9mile", "age": 41}, "score": 7}\n'
    b'{"id":4,"user":"flat","score":"high"}'
)


def test_passes_objects_through_compacted() -> None:
    out = check({}, DATA)
    assert out.splitlines()[0] == b'{"id":1,"user":{"name":"zo\\u00eb","age":30},"tags":["a","b"],"score":1.50}'


def test_select_takes_dot_paths_and_keeps_value_text() -> None:
    out = check({"select": ["user.name", "score", "nope", "user.age"]}, DATA)
    assert out.splitlines() == [
        b'{"user.name":"zo\\u00eb","score":1.50,"user.age":30}',
        b'{"user.name":"bob","score":-3e2}',
        '{"user.name":"émile","score":7,"user.age":41}'.encode(),
        b'{"score":"high"}',
    ]


def test_rename_with_and_without_select() -> None:
    assert check({"select": ["user.name", "id"], "rename": {"user.name": "who"}}, DATA).splitlines()[1] == (
        b'{"who":"bob","id":2}'
    )
    assert check({"rename": {"id": "key", "x": 'q"'}}, DATA).splitlines()[1] == (
        b'{"key":2,"user":{"name":"bob"},"score":-3e2,"q\\"":null}'
    )


@pytest.mark.parametrize(
    ("condition", "ids"),
    [
        ({"field": "score", "op": ">", "value": 0}, [1, 3]),
        ({"field": "score", "op": "<=", "value": 1.5}, [1, 2]),
        ({"field": "score", "op": "==", "value": "high"}, [4]),
        ({"field": "score", "op": "!=", "value": "high"}, [1, 2, 3]),
        ({"field": "user.name", "op": "==", "value": "zoë"}, [1]),  # escapes decoded
        ({"field": "user.name", "op": ">", "value": "c"}, [1, 3]),  # bytes: "é" > "c"
        ({"field": "user.age", "op": "exists"}, [1, 3]),
        ({"field": "x", "op": "exists"}, [2]),
        ({"field": "x", "op": "==", "value": None}, [2]),
        ({"field": "user", "op": "==", "value": "flat"}, [4]),
        ({"field": "user.age", "op": "!=", "value": 30}, [2, 3, 4]),
        ({"all": [{"field": "id", "op": ">=", "value": 2}, {"field": "score", "op": "<", "value": 100}]}, [2, 3]),
        ({"any": [{"field": "id", "op": "==", "value": 1}, {"field": "user", "op": "exists"}]}, [1, 2, 3, 4]),
        ({"any": []}, []),
        ({"all": []}, [1, 2, 3, 4]),
    ],
)
def test_filter(condition: dict[str, Any], ids: list[int]) -> None:
    out = check({"filter": condition}, DATA, [None, 1])
    assert [json.loads(line)["id"] for line in out.splitlines()] == ids


@pytest.mark.parametrize("value", ["a" * 8, "a" * 16, "aaa\\aaaa", 'aaaa"aaaaaaaaaaa'])
@pytest.mark.parametrize("op", ["==", "!=", "<", ">="])
def test_string_filter_with_an_escape_at_each_position(op: str, value: str) -> None:
    # A string with a backslash is decoded before it is compared; one of up to 16 bytes is
    # searched in one vector, so an escape sits at each position of strings around that length.
    lines = []
    for n in range(1, 20):
        lines.append(f'{{"s": "{"a" * n}"}}\n')
        for at in range(n):
            for escape in ("\\u0061", '\\"', "\\\\"):
                text = "a" * at + escape + "a" * (n - at - 1)
                lines.append(f'{{"s": "{text}", "t": "x"}}\n{{"s": "{text}", "t": "x\\ty"}}\n')
    check({"filter": {"field": "s", "op": op, "value": value}}, "".join(lines).encode(), [None, 97])


@pytest.mark.parametrize("paths", [7, 8, 9, 16, 17])
def test_many_paths_are_forgotten_between_lines(paths: int) -> None:
    # Each line's values are cleared eight paths at a time: a path past the first eight must not
    # keep the value of an earlier line.
    names = [f"k{i}" for i in range(paths)]
    lines = [{name: 1 for name in names}, {}, {names[-1]: 2}, {"k0": {"a": 3}}, {name: 4 for name in names[::2]}]
    data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    check({"select": [*names, "k0.a"]}, data, [None, 7])
    check({"filter": {"field": names[-1], "op": "exists"}, "select": ["k0"]}, data)


def test_booleans_compare_by_equality() -> None:
    data = b'{"a": true}\n{"a": false}\n{"a": 1}\n'
    assert check({"filter": {"field": "a", "op": "==", "value": True}}, data) == b'{"a":true}\n'
    assert check({"filter": {"field": "a", "op": "!=", "value": True}}, data) == b'{"a":false}\n{"a":1}\n'


def test_duplicate_names_the_last_one_counts() -> None:
    data = b'{"a": 1, "a": 2}\n'
    assert run({"select": ["a"]}, data)[0] == b'{"a":2}\n'
    assert run({}, data)[0] == b'{"a":1,"a":2}\n'  # passed through as written


INVALID = [
    (b"{", "invalid JSON at byte 1: unexpected end of JSON"),
    (b'{"a" 1}', "invalid JSON at byte 5: expected ':'"),
    (b'{"a": 1,}', "invalid JSON at byte 8: expected a member name"),
    (b'{"a": 01}', "invalid JSON at byte 7: invalid number"),
    (b'{"a": NaN}', "invalid JSON at byte 6: expected a JSON value"),
    (b'{"a": "\xff"}', "invalid JSON at byte 7: invalid UTF-8 in string"),
    (b'{"a": 1} {"b": 2}', "invalid JSON at byte 9: unexpected data after the JSON value"),
    (b"[1, 2]", "not a JSON object"),
    (b'"text"', "not a JSON object"),
    (b"\xff", "invalid JSON at byte 0: expected a JSON value"),
]


@pytest.mark.parametrize(("line", "reason"), INVALID, ids=[repr(line) for line, _ in INVALID])
def test_invalid_lines_go_to_rejects(line: bytes, reason: str) -> None:
    data = b'{"ok": 1}\n\n' + line + b'\r\n{"ok": 2}'
    for size in (None, 1):
        out, rejects, counters = run({}, data, size)
        assert out == b'{"ok":1}\n{"ok":2}\n'
        assert counters == (3, 2, 1)
        [row] = reject_rows(rejects)
        assert row[:2] == ["3", reason]
        assert row[2].encode("utf-8", "surrogateescape") == line
    check({}, data)


def test_empty_input_and_blank_lines() -> None:
    assert run({}, b"") == (b"", b"", (0, 0, 0))
    assert run({}, b"\n \n\r\n\t") == (b"", b"", (0, 0, 0))


def test_deep_nesting() -> None:
    deep = b'{"a":' + b"[" * 4095 + b"]" * 4095 + b"}\n"
    assert run({}, deep, 1000)[0] == deep
    assert run({"select": ["a"]}, deep)[0] == deep
    _, rejects, _ = run({}, deep.replace(b"[", b"[[", 1).replace(b"]", b"]]", 1))
    assert reject_rows(rejects)[0][1] == "invalid JSON at byte 4100: nesting deeper than the limit of 4096"


def test_huge_values_straddling_chunks() -> None:
    deep = {"a": json.loads("[" * 500 + "]" * 500), "b": "x" * 10}
    big = 'é\\"😀\x01' * 200_000
    data = json.dumps(deep).encode() + b"\n" + json.dumps({"big": big, "n": 1}).encode() + b"\n"
    check({}, data, [None, 4093, 100_000])
    check({"select": ["b", "big"]}, data, [None, 4093])


def test_nested_selected_values_longer_than_the_line() -> None:
    # Paths that go on from one another select overlapping text: the output line is longer
    # than the input one, past the output buffer's size (256 KiB) for the big one.
    small = {"a": {"b": {"c": "x" * 100, "d": [1, 2]}}, "e": 1}
    big = {"a": {"b": {"c": "y" * 120_000}}}
    data = b"".join(json.dumps(line).encode() + b"\n" for line in (small, big, small))
    check({"select": ["a", "a.b", "a.b.c", "e"]}, data, [None, 4093])


def test_lines_with_more_tokens_than_the_token_lists_first_room() -> None:
    # The token list grows 4 KiB of line at a time: lines of a token per byte around and past
    # that, after short lines (which have it grown already) and first.
    lines = [{"a": [1] * (n // 2), "n": n} for n in (4000, 4090, 4100, 8200, 20_000)]
    data = b"".join(json.dumps(line, separators=(",", ":")).encode() + b"\n" for line in lines)
    check({"select": ["n"]}, data + b'{"n": 0}\n' + data, [None, 4093])


def test_max_line_bytes() -> None:
    message = "line 2: line exceeds max_line_bytes (10); raise max_line_bytes in the stage config"
    assert error({"max_line_bytes": 10}, b'{"a": 1}\n{"a": 12345}\n') == message


CONFIG_ERRORS = [
    ({"fliter": {}}, "config: unknown key 'fliter' (known: filter, select, rename, max_line_bytes)"),
    ({"select": []}, "config.select: expected at least one path"),
    ({"select": ["a", "a"]}, "config.select: duplicate key 'a'"),
    ({"select": "a"}, "config.select: expected a list of strings"),
    ({"rename": {"a": 1}}, "config.rename: expected an object mapping keys to new keys"),
    ({"select": ["a"], "rename": {"b": "c"}}, "config.rename: 'b' is not selected"),
    (
        {"filter": {"field": "a", "op": "=~", "value": 1}},
        "config.filter.op: expected one of ==, !=, >, >=, <, <=, exists (got '=~')",
    ),
    ({"filter": {"field": "a", "op": "=="}}, "config.filter: missing 'value'"),
    ({"filter": {"op": "==", "value": 1}}, "config.filter: missing 'field'"),
    ({"filter": {"field": "a", "op": "exists", "value": 1}}, "config.filter: op 'exists' takes no value"),
    (
        {"filter": {"field": "a", "op": ">", "value": True}},
        "config.filter.value: expected a number or a string for an ordering op",
    ),
    (
        {"filter": {"field": "a", "op": "==", "value": [1]}},
        "config.filter.value: expected a number, a string, true, false or null",
    ),
    (
        {"filter": {"field": "a", "op": "==", "value": 1, "x": 2}},
        "config.filter: unknown key 'x' (known: field, op, value, all, any)",
    ),
    ({"filter": {"all": [], "field": "a"}}, "config.filter: a condition with all or any takes no field, op or value"),
    ({"filter": {"all": [], "any": []}}, "config.filter: a condition takes one of all, any"),
    ({"filter": {"all": [{"field": "a"}]}}, "config.filter: missing 'op'"),
    ({"filter": {"any": {}}}, "config.filter.any: expected a list of conditions"),
    ({"max_line_bytes": -1}, "config.max_line_bytes: expected a positive integer"),
]


@pytest.mark.parametrize(("config", "message"), CONFIG_ERRORS)
def test_config_errors(config: dict[str, Any], message: str) -> None:
    assert error(config) == message


# -------------------------------------------------------------------------------------------------
# Property: random objects, random configs, random chunking
# -------------------------------------------------------------------------------------------------

NAMES = ["a", "b", "c", "é", 'q"']
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-1000, 1000),
    st.floats(-1e6, 1e6, allow_nan=False),
    st.sampled_from(["", "a", "b", "é", "x y", "\\", "\n"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(NAMES), inner, max_size=3)),
    max_leaves=8,
)
objects = st.dictionaries(st.sampled_from(NAMES), values, max_size=4)
paths = st.lists(st.sampled_from(NAMES), min_size=1, max_size=2).map(".".join)


@st.composite
def conditions(draw: st.DrawFn, depth: int = 2) -> dict[str, Any]:
    kind = draw(st.sampled_from(["compare", "compare", "exists"] + (["all", "any"] if depth else [])))
    if kind in ("all", "any"):
        return {kind: draw(st.lists(conditions(depth - 1), max_size=3))}
    if kind == "exists":
        return {"field": draw(paths), "op": "exists"}
    op = draw(st.sampled_from(["==", "!=", ">", ">=", "<", "<="]))
    value = draw(
        scalars if op in ("==", "!=") else st.one_of(st.integers(-1000, 1000), st.sampled_from(["", "a", "é"]))
    )
    return {"field": draw(paths), "op": op, "value": value}


@st.composite
def configs(draw: st.DrawFn) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if draw(st.booleans()):
        config["filter"] = draw(conditions())
    if draw(st.booleans()):
        config["select"] = draw(st.lists(paths, min_size=1, max_size=3, unique=True))
    keys = config.get("select", NAMES)
    if draw(st.booleans()):
        # New names that collide with no key of the output.
        config["rename"] = {k: f"new {k}" for k in draw(st.lists(st.sampled_from(keys), max_size=2, unique=True))}
    return config


@st.composite
def jsonl(draw: st.DrawFn) -> tuple[bytes, bool]:
    ascii_only = draw(st.booleans())
    lines = []
    for obj in draw(st.lists(st.one_of(objects, st.sampled_from(["", " ", "{", "[1]", '{"a" 1}', "nul"])), max_size=6)):
        if isinstance(obj, str):
            lines.append(obj)
        else:
            item_sep, key_sep = draw(st.sampled_from([(",", ":"), (", ", ": "), (" ,\t", " : ")]))
            lines.append(json.dumps(obj, ensure_ascii=ascii_only, separators=(item_sep, key_sep)))
    ends = draw(st.lists(st.sampled_from(["\n", "\r\n"]), min_size=len(lines), max_size=len(lines)))
    text = "".join(line + end for line, end in zip(lines, ends, strict=True))
    if draw(st.booleans()):
        text = text.rstrip("\r\n")
    return text.encode(), ascii_only


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=jsonl(), config=configs(), chunk=st.one_of(st.none(), st.integers(1, 50)))
def test_matches_the_python_model(doc: tuple[bytes, bool], config: dict[str, Any], chunk: int | None) -> None:
    data, ascii_only = doc
    check(config, data, [chunk], ascii_only)


# -------------------------------------------------------------------------------------------------
# The fast path indexes a line 64 bytes at a time: every kind of value at and across block edges
# -------------------------------------------------------------------------------------------------

EDGE_VALUES = [
    b'"a\\"b"',
    b'"\\\\"',
    b'"\\\\\\""',
    b'"\\\\\\\\"',
    b'"x\\u00e9y"',
    b'"\\ud83d\\ude00"',
    '"é"'.encode(),
    '"€"'.encode(),
    '"😀"'.encode(),
    b'"tab\\t and slash \\/"',
    b"12345678901234567890123",
    b"-0.5e-7",
    b"1E+300",
    b"0",
    b"-12.5",
    b"true",
    b"false",
    b"null",
    b"[]",
    b"{}",
    b'[1, {"a": [2, "]"]}]',
    b'{"b": {"c": "d}"}}',
]
INVALID_AT_EDGES = [
    b'"\\x"',
    b'"\\u12g4"',
    b'"\\u12"',
    b'"a\x01b"',
    b'"a\tb"',
    b'"\xc3"',
    b'"\xe2\x82"',
    b'"\x80"',
    b'"\xed\xa0\x80"',
    b'"\xf4\x90\x80\x80"',
    b'"\xc3\xa9\xa9"',
    b"\xc3\xa9",
    b"01",
    b"1.",
    b"-",
    b"1e",
    b"1.5x",
    b"tru",
    b"nul",
    b"truex",
    b"[1,]",
    b'{"a" 1}',
    b'"open',
    b'"a\\"',
    b"\x0c1",
]


def shifted_lines(values: list[bytes]) -> bytes:
    """Each value as member "v" of lines whose padding moves it across the first and the second
    64-byte block edges, one byte at a time."""
    lines = []
    for value in values:
        for pad in [*range(40, 50), *range(104, 114)]:
            lines.append(b'{"pad": "' + b"x" * pad + b'", "v": ' + value + b', "n": 1}')
            lines.append(b'{"pad": "' + b"x" * (pad + 7) + b'","v":' + value + b"}\r")
    return b"\n".join(lines) + b"\n"


@pytest.mark.parametrize(
    "config",
    [{}, {"select": ["v", "n", "v.a", "v.b.c"]}, {"filter": {"field": "v", "op": ">=", "value": 0}, "select": ["n"]}],
)
def test_values_across_block_edges(config: dict[str, Any]) -> None:
    check(config, shifted_lines(EDGE_VALUES), [None, 61, 1000])


def test_invalid_bytes_across_block_edges_go_to_rejects() -> None:
    data = shifted_lines(INVALID_AT_EDGES)
    out, _, counters = run({"select": ["n"]}, data)
    assert out == b""
    assert counters[2] == counters[0] == data.count(b"\n")
    check({"select": ["n"]}, data, [None, 100])


def test_blank_padding_and_line_ends_around_objects() -> None:
    lines = [b"", b" \t\r", b'  {"a": [1, 2], "b": {"c": 3}}  \t', b'{"a":[1,2]}\r', b"\t{}", b'{"a": {"b" : [ ] } } ']
    data = b"\n".join(lines) + b"\r\n"
    check({}, data)
    check({"select": ["a", "b", "a.b"]}, data)


@pytest.mark.parametrize("depth", [61, 62, 63, 64, 65])
def test_nesting_around_the_fast_path_depth(depth: int) -> None:
    line = b'{"a": ' * depth + b'[1, {"b": 2}]' + b"}" * depth
    check({"select": ["a", "a.a", "a.a.a"]}, line + b"\n" + line.replace(b"[1", b"[1,,") + b"\n")


MUTATIONS = list(b' \t\r{}[]:,"\\/ubfnrtx0123456789-+.eEaTFN\x00\x01\x1f\x7f\x80\xa9\xbf\xc3\xe2\xed\xf0\xff')


@st.composite
def mutated_jsonl(draw: st.DrawFn) -> bytes:
    """JSON Lines as json.dumps writes them, long enough to span 64-byte blocks, with a few bytes
    inserted, replaced or deleted: the fast path must accept exactly what Python's json does."""
    lines = []
    for obj in draw(st.lists(objects, min_size=1, max_size=5)):
        obj = {"pad": "x" * draw(st.integers(0, 150)), **obj}
        item_sep, key_sep = draw(st.sampled_from([(",", ":"), (", ", ": "), (" ,\t", " : ")]))
        line = bytearray(json.dumps(obj, ensure_ascii=draw(st.booleans()), separators=(item_sep, key_sep)).encode())
        for _ in range(draw(st.integers(0, 2))):
            at = draw(st.integers(0, len(line)))
            kind = draw(st.sampled_from(["insert", "replace", "delete"]))
            if kind == "insert":
                line[at:at] = bytes([draw(st.sampled_from(MUTATIONS))])
            elif at < len(line):
                line[at : at + 1] = bytes([draw(st.sampled_from(MUTATIONS))]) if kind == "replace" else b""
        lines.append(bytes(line))
    return b"\n".join(lines) + b"\n"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=mutated_jsonl(),
    select=st.lists(paths, min_size=1, max_size=3, unique=True),
    condition=st.one_of(st.none(), conditions()),
    chunk=st.one_of(st.none(), st.integers(1, 70)),
)
def test_mutated_lines_match_python_json(
    data: bytes, select: list[str], condition: dict[str, Any] | None, chunk: int | None
) -> None:
    # With select, a name a mutation repeats counts once, as in a dict (the last one).
    config: dict[str, Any] = {"select": select, **({"filter": condition} if condition else {})}
    check(config, data, [chunk])


# -------------------------------------------------------------------------------------------------
# Shapes: a line with the token kinds and member names of an earlier one is matched against it
# -------------------------------------------------------------------------------------------------

SHAPED = {"id": 1, "type": "purchase", "user": {"id": 7, "city": "Oslo"}, "amount": 12.5, "ok": True}
SHAPE_CONFIG: dict[str, Any] = {
    "filter": {"field": "amount", "op": ">=", "value": 10},
    "select": ["id", "user.id", "user.city", "amount", "ok", "user"],
}


def shaped_lines(*variants: str, repeat: int = 3) -> bytes:
    """SHAPED a few times (its shape recorded, then matched), each variant, and SHAPED again."""
    base = json.dumps(SHAPED)
    return "".join(
        line + "\n" for line in [base] * repeat + [v for v in variants for _ in (0, 1)] + [base] * 2
    ).encode()


SHAPE_MISSES = [
    # The same token count and kinds, a member renamed (a name the config looks for, or not).
    '{"id": 1, "type": "purchase", "user": {"id": 7, "town": "Oslo"}, "amount": 12.5, "ok": true}',
    '{"id": 1, "type": "purchase", "user": {"id": 7, "city": "Oslo"}, "amounts": 12.5, "ok": true}',
    '{"id": 1, "type": "purchase", "user": {"id": 7, "city": "Oslo"}, "ok": 12.5, "amount": true}',
    # Keys in another order, and a key twice (the last one counts).
    '{"type": "purchase", "id": 1, "user": {"city": "Oslo", "id": 7}, "amount": 12.5, "ok": true}',
    '{"id": 1, "type": "purchase", "user": {"id": 7, "id": "Oslo"}, "amount": 12.5, "ok": true}',
    '{"id": 1, "user": {"id": 9}, "user": {"id": 7, "city": "Oslo"}, "amount": 12.5, "ok": true}',
    '{"id": 1, "user": {"id": 7, "city": "Oslo"}, "user": "x", "type": 0, "amount": 12.5, "ok": 1}',
    # A value of another kind at the same place, and invalid scalars where valid ones were.
    '{"id": "1", "type": "purchase", "user": {"id": 7, "city": "Oslo"}, "amount": 12.5, "ok": true}',
    '{"id": 1, "type": 5, "user": {"id": 7, "city": "Oslo"}, "amount": null, "ok": false}',
    '{"id": 1, "type": "purchase", "user": {"id": 7, "city": "Oslo"}, "amount": 012.5, "ok": true}',
    '{"id": 1, "type": "purchase", "user": {"id": 7, "city": "Oslo"}, "amount": 12.5, "ok": tru}',
    '{"id": 1, "type": "purchase", "user": {"id": 7, "city": "Oslo"}, "amount": 12.5, "ok": truex}',
    '{"id": 1, "type": "purchase", "user": {"id": 7, "city": "Oslo"}, "amount": 1e5, "ok": -0}',
    '{"id": 1, "type": "purchase", "user": [7, "city", "Oslo"], "amount": 12.5, "ok": true, "x": 1}',
    # Names written another way: escaped, with spaces before the ':', or a prefix of the name.
    '{"\\u0069d": 1, "type": "purchase", "user": {"id": 7, "city": "Oslo"}, "amount": 12.5, "ok": true}',
    '{"id" : 1, "type": "purchase", "user" :{"id": 7, "city"  : "Oslo"}, "amount": 12.5, "ok": true}',
    '{"i": 1, "type": "purchase", "user": {"id": 7, "cit": "Oslo"}, "amount": 12.5, "ok": true}',
    '{"id\\"": 1, "type": "purchase", "user": {"id": 7, "city": "Oslo"}, "amount": 12.5, "ok": true}',
]


@pytest.mark.parametrize("variant", SHAPE_MISSES)
def test_lines_that_miss_the_recorded_shape(variant: str) -> None:
    check(SHAPE_CONFIG, shaped_lines(variant), [None, 1, 50])
    check({"select": ["id", "user"]}, shaped_lines(variant), [None])


def test_shapes_taking_turns_in_one_slot() -> None:
    # Same token count, other kinds: shapes are kept per token count, and two that alternate
    # must not be mistaken for each other (nor replace each other on every line).
    lines = ['{"a": "x", "b": 1}', '{"a": 2, "b": "y"}', '{"a": [], "b": 3}', '{"a": {}, "b": 4}', '{"b": 5, "a": 6}']
    # The same names and numbers at the same places, in an object or in an array.
    lines += [
        '{"a": {"c": 1}, "b": 2}',
        '{"a": ["c", 1], "b": 2}',
        '{"a": {"c": 1}, "b": 2}',
        '{"a": {"c": 1}, "b": 2}',
    ]
    data = "".join(lines[i % len(lines)] + "\n" for i in range(80)).encode()
    check({"select": ["a", "b", "a.c"]}, data, [None, 3])
    check({"filter": {"field": "a", "op": "<", "value": 3}, "select": ["b"]}, data, [None])


@pytest.mark.parametrize("lengths", [(5, 6, 7, 14, 15, 30), (31, 16), (40, 6)])
def test_names_around_the_lengths_a_shape_compares_in_one_go(lengths: tuple[int, ...]) -> None:
    # Names of up to 8 bytes with their quotes are compared as one word, up to 32 as two
    # vectors; a line with a longer one has no shape. Each variant differs in one name's last byte.
    names = ["n" * k for k in lengths]
    base = json.dumps({name: i for i, name in enumerate(names)})
    variants = [base.replace(f'"{name}"', f'"{name[:-1]}m"') for name in names]
    data = "".join(line + "\n" for line in [base, base, *[v for v in variants for _ in (0, 1)], base]).encode()
    check({"select": names}, data, [None, 7])


def test_lines_past_the_shape_limits() -> None:
    # More tokens, names or numbers than a shape holds: walked every time, still right.
    wide = {f"k{i}": i for i in range(100)}
    long_array = {"a": list(range(300)), "k5": 1}
    data = "".join(json.dumps(line) + "\n" for line in [wide, wide, long_array, long_array, wide]).encode()
    check({"select": ["k5", "k99", "a"]}, data, [None, 1000])


def test_repeated_deep_lines() -> None:
    # Lines of one shape at the deepest nesting the fast path walks, then one level deeper.
    for depth in (62, 63, 64):
        line = b'{"a": ' * depth + b'{"b": [1, {"c": 2}]}' + b"}" * depth
        check(
            {"select": ["a", "a.a.a", "a.b"]}, (line + b"\n") * 4 + line.replace(b"[1", b"[1,,") + b"\n" + line + b"\n"
        )


def test_a_repeated_shape_across_chunks_and_blocks() -> None:
    # The same shape with values that push its tokens across 64-byte blocks and chunk edges.
    lines = [{"pad": "x" * n, "id": n, "user": {"id": n, "city": "é" * (n % 5)}, "amount": n / 4} for n in range(120)]
    data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    check(SHAPE_CONFIG, data, [None, 61, 64, 4093])


# -------------------------------------------------------------------------------------------------
# Windows: the lines that end in a chunk are indexed many at a time, in 64-byte blocks that run on
# across them (each '\n' starting the line state afresh)
# -------------------------------------------------------------------------------------------------

WINDOW_CONFIG: dict[str, Any] = {
    "filter": {"field": "n", "op": ">=", "value": 0},
    "select": ["n", "s", "u.c"],
}


def same_rejects_at_every_chunk_size(config: dict[str, Any], data: bytes) -> None:
    """The reject rows (reasons included) of the windows (one chunk) are those of lines handed
    over one at a time (chunks of 1 and 7 bytes: each line crosses a chunk edge)."""
    want = run(config, data, 1)
    for size in (None, 7, 61, 64, 4093):
        assert run(config, data, size) == want, f"chunk size {size}"


def test_lines_ending_at_every_block_offset() -> None:
    # Line lengths 1..150 put each '\n' (and the '\r' of a CRLF before it) at every offset of
    # the 64-byte blocks, and a line's start too; blank lines and lines of whitespace between.
    lines = []
    for n in range(150):
        body = json.dumps({"n": n, "s": "x" * max(0, n - 30), "u": {"c": "é" * (n % 3)}}, ensure_ascii=False)
        lines.append(body.encode()[: max(1, n)] if n < 20 else body.encode())
        lines.append(b" " * (n % 5) + b"\t" * (n % 2))
    data = b"".join(line + (b"\r\n" if i % 3 == 0 else b"\n") for i, line in enumerate(lines))
    check(WINDOW_CONFIG, data, [None, 61, 64, 4093])
    check({}, data, [None, 64])
    same_rejects_at_every_chunk_size(WINDOW_CONFIG, data)


def test_a_bom_and_lines_after_it() -> None:
    data = b"\xef\xbb\xbf" + b"".join(b'{"n": %d, "s": "%s"}\n' % (n, b"y" * n) for n in range(100))
    check(WINDOW_CONFIG, data, [None, 2, 3, 64, 4093])


# A line that is invalid in a way the index finds, followed by valid lines with strings: the index
# must start each line outside a string, with no escape or UTF-8 sequence going on into it.
BROKEN_ENDS = [
    b'{"s": "open',  # an unterminated string
    b'{"s": "a", "t": "open\\',  # ... ending in a backslash, which would escape the '\n'
    b'{"s": "\\\\", "t": "\\',  # an escaped backslash, then one that would escape the '\n'
    b'{"s": "\xc3',  # a UTF-8 sequence cut short by the '\n'
    b'{"s": "\xe2\x82',
    b'{"s": "\x01"}',  # a control character in a string (its object complete)
    b'{"s": "\\u12"}',  # an invalid escape
    b'{"s": 1}\\',  # a backslash outside strings
    b'"',
    b'{"s": "a\rb"}',  # a CR inside a string
]


@pytest.mark.parametrize("broken", BROKEN_ENDS, ids=[repr(b) for b in BROKEN_ENDS])
def test_invalid_lines_amid_a_window(broken: bytes) -> None:
    good = [b'{"n": %d, "s": "q\\"uote\\"d", "u": {"c": "%s"}}' % (n, b"z" * n) for n in range(8)]
    lines = []
    for pad in range(0, 70, 3):  # the broken line's '\n' at many offsets of its block
        lines += [good[pad % 8], b" " * pad + broken, *good, b'"' + b"x" * pad + b'"', good[0]]
    data = b"\n".join(lines) + b"\n"
    check(WINDOW_CONFIG, data, [None, 64, 4093])
    same_rejects_at_every_chunk_size(WINDOW_CONFIG, data)


def test_windows_ending_on_tokens_and_lines() -> None:
    # Lines of many tokens (a window holds about 4096), of a few, and blank lines (a window holds
    # about 450 lines), in turns, then a line of more tokens than a window, amid them.
    many = [json.dumps({"n": n, "a": list(range(n % 97)), "s": "w"}) for n in range(300)]
    few = ["{}", '{"n": 1}', "", " ", "[]"]
    long = json.dumps({"n": 5, "a": [0] * 5000})
    lines = many + few * 400 + many[:50] + [long] + many[:50] + [long, long] + few * 10
    data = "\n".join(lines).encode() + b"\n"
    check(WINDOW_CONFIG, data, [None, 4093, 100_000])
    check({"select": ["a"]}, data, [None])


def test_max_line_bytes_amid_a_window() -> None:
    # A line of exactly max_line_bytes (its '\r' not counted) is taken; the first longer one
    # fails the stream, as the line handed over alone would.
    config = {"max_line_bytes": 30, "select": ["n"]}
    ok = b'{"n": 1, "s": "' + b"x" * 13 + b'"}'
    assert len(ok) == 30
    data = (ok + b"\r\n") * 20 + ok + b"\n" + b'{"n": 2, "s": "' + b"x" * 14 + b'"}\n' + ok + b"\n"
    for size in (None, 1, 7, 64):
        with pytest.raises(PipelineError) as info:
            run(config, data, size)
        assert message(info.value) == (
            "line 22: line exceeds max_line_bytes (30); raise max_line_bytes in the stage config"
        )
    out, _, counters = run(config, data[: 20 * 32 + 31])
    assert (out, counters) == (b'{"n":1}\n' * 21, (21, 21, 0))


# -------------------------------------------------------------------------------------------------
# Resume
# -------------------------------------------------------------------------------------------------

JOB = """\
name: jsonl-map
source: {url: in.jsonl, chunk_size: 50000}
stages:
  - guest: builtin:jsonl-map
    config:
      filter: {any: [{field: user.age, op: ">", value: 40}, {field: tags, op: exists}]}
      select: [id, user.name, score]
sink: {url: out/kept.jsonl}
rejects: {url: out/rejects.csv}
checkpoint: {every: 64KiB}
"""


def test_resume_mid_file_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    lines = []
    for i in range(12_000):
        obj: dict[str, Any] = {"id": i, "user": {"name": f"user {i}", "age": i % 90}, "score": i / 8}
        if i % 5 == 0:
            obj["tags"] = ["x"] * (i % 4)
        lines.append(json.dumps(obj) if i % 997 else "{broken")
    data = "\n".join(lines).encode()
    check_resume(tmp_path, JOB, {"in.jsonl": data}, len(data) // 2, ["out/kept.jsonl", "out/rejects.csv"])
