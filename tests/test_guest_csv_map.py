"""The csv-map guest: parity with Python's csv.reader, mapping, filtering, rejects and errors.

Every case runs at several chunk sizes (down to 1 byte) and is checked against a small Python
model of the guest (``csv_map_model.expected``) built on ``csv.reader``. The column rules (trim,
default, required, types, all/any filters) are tested in test_guest_csv_map_rules.py.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import wasmtime
from csv_map_model import (
    ALPHABET,
    OPS,
    check,
    check_model,
    config_text_error,
    csv_inputs,
    csv_row,
    expected,
    guest_error,
    model,
    read_back,
    run,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.guests import builtin_path
from pipeline.runtime import Guest, GuestModule
from pipeline.testing import run_guest
from pipeline.testing.data import write_orders_csv

# -------------------------------------------------------------------------------------------------
# Parsing: byte-for-byte what csv.reader reads
# -------------------------------------------------------------------------------------------------

PARSE_CASES = {
    "lf": b"a,b\n1,2\n3,4\n",
    "crlf": b"a,b\r\n1,2\r\n3,4\r\n",
    "lone cr": b"a,b\r1,2\r3,4\r",
    "mixed line ends": b"a,b\r\n1,2\n3,4\r5,6\r\n",
    "no final newline": b"a,b\n1,2\n3,4",
    "empty fields": b"a,b,c\n,,\n1,,\n,,3\n",
    "quoted commas": b'a,b\n"1,5","x, y, z"\n',
    "doubled quotes": b'a,b\n"say ""hi""",""""\n',
    "embedded line breaks": b'a,b\n"one\ntwo","three\r\nfour"\n"five\rsix",7\n',
    "quote inside unquoted field": b'a,b\nx"y,z""\n',
    "text after closing quote": b'a,b\n"ab"c,"d"e"f"\n',
    "eof inside quotes": b'a,b\n1,"abc',
    "eof inside quotes with line break": b'a,b\n1,"abc\r\n',
    "eof right after opening quote": b'a,b\n1,"',
    "eof after comma": b"a,b\n1,",
    "blank lines": b"\n\na,b\n\n1,2\r\n\r\n\r3,4\n\n",
    "bom": b"\xef\xbb\xbfa,b\n1,2\n",
    "bom then quoted header": b'\xef\xbb\xbf"a",b\n1,2\n',
    "bom only": b"\xef\xbb\xbf",
    "two boms": b"\xef\xbb\xbf\xef\xbb\xbfa\n1\n",
    "spaces kept": b"a,b\n 1 , 2 \n",
    "nul byte": b"a,b\n1\x002,3\n",
    "unicode": "name,city\nZoë,São Paulo\n中文,😀\n".encode(),
    "one column with empty field": b'a\n""\nx\n"",\n',
    "header only": b"id,name,amount,city\n",
    "header only without newline": b"id,name",
    "empty input": b"",
    "blank input": b"\r\n\n\r",
    "quotes everywhere": b'"a""b"""x"y,"",""""\n"",,"\n',
    "quote run": b'a\n""""""\n"""""\n',
    "cr before quote": b'a,b\r"1",2\r',
}


@pytest.mark.parametrize("data", PARSE_CASES.values(), ids=PARSE_CASES.keys())
def test_parses_like_csv_reader(data: bytes) -> None:
    out = check({}, data)
    assert read_back(out) == model({}, data)[0]  # reads back as what csv.reader read


def test_quirks_give_what_python_gives() -> None:
    data = b'h\nx"y\n"ab"c\n"a""b"""x"y\n"abc'
    assert run({}, data)[0] == b'h\n"x""y"\nabc\n"a""b""x""y"\nabc\n'


def test_a_partial_bom_is_data() -> None:
    out, _, _ = run({}, b"\xef\xbbx\n1\n", chunk_size=1)
    assert out == b"\xef\xbbx\n1\n"
    assert run({}, b"\xef", chunk_size=1)[0] == b"\xef\n"


def test_a_record_split_at_every_byte_matches_a_whole_read() -> None:
    data = b'id,text\r\n1,"a ""quoted"", \r\nmulti-line\rvalue"tail\r\n2,plain\n3,"x"'
    for size in range(1, len(data) + 1):
        assert run({}, data, size) == expected({}, data), size


QUOTED_FIELDS = [
    b'"a,b"',
    b'""',
    b'"x""y"',
    b'""""',
    b'"""a"',
    b'"a"""',
    b'"x"",""y"""',
    b'"a"""b',
    b'"two\nlines"',
    b'"cr\r\nlf"',
    b'"ab"c',
    b'"q"',
    b'x"y',
    # Quote-free blocks inside quotes, and after a record's first quote but before its end.
    b'"' + b"long, quoted\r\ntext " * 6 + b'"',
    b'x"y' + b"z" * 140,
]


@pytest.mark.parametrize("field", QUOTED_FIELDS)
def test_quoted_fields_at_every_offset_of_a_block(field: bytes) -> None:
    """The scanner classifies 64 bytes at a time: each quoted field, and its separators, at every
    offset across two block boundaries, ended by a comma or by each line end; every fifth row has
    a field too many, so the rejects check the line numbers after line breaks inside quotes."""
    for end in [b",z\n", b"\n", b"\r\n", b"\r"]:
        rows = b"".join(b"%d,%s,%s%s%s" % (i, b"p" * i, field, b",x" * (i % 5 == 0), end) for i in range(130))
        check({}, b"id,pad,text" + (b",more" if end == b",z\n" else b"") + b"\n" + rows, [None, 64, 100])


def test_the_benchmark_orders_match_the_model(tmp_path: Path) -> None:
    """The benchmark's CSV (quoted commas, doubled quotes, line breaks in quotes, Latin-1, invalid
    rows) in chunks that end anywhere in a record."""
    path = tmp_path / "orders.csv"
    write_orders_csv(path, 150_000)
    config = {
        "select": ["id", "name", "amount", "city"],
        "rename": {"name": "customer"},
        "upper": ["customer"],
        "filter": {"column": "amount", "op": ">", "value": 100},
    }
    check(config, path.read_bytes(), [None, 4_093, 65_536])


# -------------------------------------------------------------------------------------------------
# Mapping
# -------------------------------------------------------------------------------------------------

ORDERS = (
    b"id,name,amount,city\n"
    b"1,alice,12.50,Berlin\n"
    b'2,"bob, jr.",-3.5,"New York, NY"\n'
    b"3,zo\xc3\xab,1e3,S\xc3\xa3o Paulo\n"
    b"4,\xc3\xa9mile, 7 ,Z\xc3\xbcrich\n"
)


def test_select_orders_columns() -> None:
    out = check({"select": ["city", "id"]}, ORDERS)
    assert out.splitlines()[:3] == [b"city,id", b"Berlin,1", b'"New York, NY",2']


def test_a_column_may_be_selected_twice() -> None:
    assert check({"select": ["id", "id"]}, ORDERS).splitlines()[:2] == [b"id,id", b"1,1"]


def test_rename_changes_the_header_only() -> None:
    out = check({"select": ["id", "amount"], "rename": {"amount": "total", "id": "order"}}, ORDERS)
    assert out.splitlines()[:2] == [b"order,total", b"1,12.50"]


def test_renamed_header_is_quoted_when_needed() -> None:
    assert check({"select": ["id"], "rename": {"id": 'a "b", c'}}, ORDERS).startswith(b'"a ""b"", c"\n1\n')


def test_upper_and_lower_map_ascii_and_latin1_letters() -> None:
    data = "w,x\naàÿ\u00d7÷ßz,AÀÞ\u00d7÷ẞZ\n".encode()
    out = check({"upper": ["w"], "lower": ["x"]}, data)
    assert out.decode() == "w,x\nAÀÿ\u00d7÷ßZ,aàþ\u00d7÷ẞz\n"


def test_case_mapping_of_short_fields_sees_every_ascii_byte() -> None:
    """Fields of up to 8 bytes are mapped 8 bytes at a time: every ASCII byte, at every position
    and field length, next to the letters' neighbours ('@', '[', '`', '{')."""
    ascii = "".join(chr(c) for c in range(1, 128) if chr(c) not in ',"\r\n')
    values = [ascii[i : i + n] for n in range(1, 10) for i in range(0, len(ascii), 3)]
    data = ("u,l\n" + "".join(f"{v},{v}\n" for v in values) + "@az[`AZ{,@az[`AZ{\n").encode()
    check({"upper": ["u"], "lower": ["l"]}, data, [None, 61])


def test_case_names_may_be_output_or_header_names_output_first() -> None:
    data = b"a,b\nx,y\n"
    # "b" is the header name of the second column and the output name of the first: output wins.
    assert check({"rename": {"a": "b", "b": "c"}, "upper": ["b"]}, data) == b"b,c\nX,y\n"
    assert check({"rename": {"a": "z"}, "upper": ["a"]}, data) == b"z,b\nX,y\n"


# The common shape (one run of consecutive columns, one numeric condition) goes through csv-map's
# fast_rows, which copies a row's raw bytes when they are its output and leaves other rows to the
# generic steps: both must write what the model writes.
COMMON_SHAPE = {
    "select": ["name", "amount", "city"],
    "upper": ["city"],
    "filter": {"column": "amount", "op": ">", "value": 10},
}
COMMON_SHAPE_ROWS = [
    b'"New York, NY",12,"a""b"',  # quoted and needing it: written as read
    b'"plain",12,"x"',  # quoted without needing it: unquoted
    b'x"y,12,z',  # a quote inside an unquoted field: quoted and doubled
    b'"ab"c,12,"d"e',  # text after a closing quote
    b'"a\r\nb",12,"\n"',  # line breaks inside quotes
    b'"""",12,""""""',  # only quotes
    b'"",12,""',  # empty and quoted
    b'"x,""",12,"y"""',  # a doubled quote just before the closing one
    b'"a""b""",12,"x"',
    b'a,"12",b',  # a quoted filter field
    b"a,n/a,b",  # not a number: rejected
    b"a,12",  # a wrong field count: rejected
    b"a,1e3,b",  # a number beyond the short parse
    b"a,-12.5,b",  # dropped
    "zoë,12,são,".encode()[:-1],  # Latin-1 letters
    b"a," + b"9" * 20 + b",b",
    b"a,12," + b"c" * 40,  # a row longer than 32 bytes
]


@pytest.mark.parametrize("row", COMMON_SHAPE_ROWS)
def test_the_common_shape_writes_what_the_generic_steps_write(row: bytes) -> None:
    data = b"id,name,amount,city\n" + b"".join(b"%d,%s\n" % (i, row if i % 3 == 1 else b"a,50,b") for i in range(40))
    check(COMMON_SHAPE, data, [None, 1, 5, 64])


def _decimals_near(value: float) -> list[str]:
    """Plain decimals of at most 8 characters after an optional '-' (the ones fast_rows compares
    as integers against per-precision thresholds) next to value and to -value, at every precision."""
    out = {"0", "-0", ".0", "-.0", "0.", "00000000", "99999999", "-99999999", ".9999999", "-.0000001"}
    for target in (value, -value):
        for frac in range(8):
            scaled = round(abs(target) * 10**frac)
            for mant in (scaled - 1, scaled, scaled + 1):
                if not 0 <= mant < 10**8:
                    continue
                text = str(mant).rjust(frac + 1, "0")
                text = text[: len(text) - frac] + "." + text[len(text) - frac :] if frac else text
                if len(text) <= 8:
                    out.add(("-" if target < 0 else "") + text)
    return sorted(out)


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("value", [100, 0.1, 0.3, 100.005, -2.5, 1e-7, 99999999.5, 0, 1e300, -1e300, 1.000000001])
def test_the_common_shape_compares_plain_decimals_exactly(op: str, value: float) -> None:
    # fast_rows compares a plain decimal's digits with thresholds worked out at the header; the
    # model compares floats: they agree on numbers at, just below and just above the constant.
    amounts = _decimals_near(value)
    data = b"id,name,amount,city\n" + b"".join(b"%d,n,%s,c\n" % (i, a.encode()) for i, a in enumerate(amounts))
    check({"select": ["name", "amount"], "filter": {"column": "amount", "op": op, "value": value}}, data, [None])


def test_case_mapping_keeps_quoting_intact() -> None:
    data = b'a\n"x,""y"""\n'
    assert check({"upper": ["a"]}, data) == b'a\n"X,""Y"""\n'


# -------------------------------------------------------------------------------------------------
# Filters
# -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("value", [12.5, 7, -3.5, 1000, 0])
def test_numeric_filter(op: str, value: float) -> None:
    check({"filter": {"column": "amount", "op": op, "value": value}}, ORDERS, [None, 1, 7])


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("value", ["Berlin", "New York, NY", "", "Z", "São Paulo"])
def test_string_filter_compares_bytes(op: str, value: str) -> None:
    check({"filter": {"column": "city", "op": op, "value": value}}, ORDERS, [None, 1, 7])


def test_numeric_filter_parses_decimal_numbers_only() -> None:
    values = ["12", "-3.5", "1e3", " 7 ", "\t+.5e-1", "5.", "abc", "", "1,5", "0x10", "inf", "nan", "1_0", "1e", "--1"]
    data = ("n,v\n" + "".join(f"{i},{csv_row([v])}" for i, v in enumerate(values))).encode()
    out, rejects, counters = run({"filter": {"column": "v", "op": ">", "value": 0}}, data)
    assert out == b"n,v\n0,12\n2,1e3\n3, 7 \n4,\t+.5e-1\n5,5.\n"
    rejected = [row[2] for row in csv.reader(io.StringIO(rejects.decode(), newline=""))][1:]
    assert [next(csv.reader([r]))[1] for r in rejected] == values[6:]
    assert counters == (len(values), 5, 9)
    assert rejects.splitlines()[1] == b'8,"column \'v\' is not a number: ""abc""","6,abc"'


def test_filter_reason_shows_at_most_64_bytes_of_the_value() -> None:
    value = "é" * 40
    data = f"v\n{value}\n".encode()
    _, rejects, _ = run({"filter": {"column": "v", "op": "==", "value": 1}}, data)
    reason = list(csv.reader(io.StringIO(rejects.decode(), newline="")))[1][1]
    assert reason == f"column 'v' is not a number: \"{'é' * 32}...\""


def test_filter_column_may_be_unselected_or_renamed() -> None:
    check({"select": ["id"], "filter": {"column": "city", "op": "==", "value": "Berlin"}}, ORDERS)
    out = check({"rename": {"amount": "total"}, "filter": {"column": "total", "op": "<", "value": 0}}, ORDERS)
    assert out.splitlines()[1:] == [b'2,"bob, jr.",-3.5,"New York, NY"']


def test_filter_sees_values_before_case_mapping() -> None:
    data = b"a\nx\nX\n"
    assert check({"upper": ["a"], "filter": {"column": "a", "op": "==", "value": "x"}}, data) == b"a\nX\n"


# -------------------------------------------------------------------------------------------------
# Rejects
# -------------------------------------------------------------------------------------------------


def test_rejects_name_the_physical_line_where_the_record_starts() -> None:
    data = b'a,b\r\n\r\n1,2,3\n"multi\r\nline",x,y\r\rok,ok\n"lone\rcr"\n4,5\n6'
    out, rejects, counters = run({}, data)
    assert out == b"a,b\nok,ok\n4,5\n"
    assert rejects.decode().splitlines() == [
        "line,reason,record",
        '3,"expected 2 fields, got 3","1,2,3"',
        '4,"expected 2 fields, got 3","""multi',
        'line"",x,y"',
        '8,"expected 2 fields, got 1","""lone',
        'cr"""',
        '11,"expected 2 fields, got 1",6',
    ]
    assert counters == (6, 2, 4)
    check({}, data)


def test_no_rejects_means_no_rejects_output() -> None:
    result = run_guest("csv-map", {}, b"a\n1\n")
    assert 1 not in result.outputs


def test_rejects_are_lossless() -> None:
    nasty = ["", 'x"y', "a,b", ' "q" ', "two\nlines", "cr\r", "crlf\r\n", '"', '""', "é,ü", "\x00"]
    rows = [nasty[i : i + 3] for i in range(len(nasty) - 2)] + [[v] for v in nasty]
    data = ("a,b\n" + "".join(csv_row(r) for r in rows)).encode()
    for size in (None, 1, 4):
        _, rejects, counters = run({}, data, size)
        assert counters[2] == len(rows)
        table = list(csv.reader(io.StringIO(rejects.decode(), newline="")))
        assert table[0] == ["line", "reason", "record"]
        assert [next(csv.reader(io.StringIO(rec, newline=""))) for _, _, rec in table[1:]] == rows


# -------------------------------------------------------------------------------------------------
# Errors
# -------------------------------------------------------------------------------------------------

CONFIG_ERRORS = [
    (
        {"selcet": ["a"]},
        "config: unknown key 'selcet' (known: select, rename, upper, lower, trim, default, required, types, filter, "
        "max_record_bytes)",
    ),
    ({"select": "a"}, "config.select: expected a list of strings"),
    ({"select": ["a", 1]}, "config.select: expected a list of strings"),
    ({"select": []}, "config.select: expected at least one column"),
    ({"rename": ["a"]}, "config.rename: expected an object mapping column names to new names"),
    ({"rename": {"a": None}}, "config.rename: expected an object mapping column names to new names"),
    ({"upper": "a"}, "config.upper: expected a list of strings"),
    ({"lower": [True]}, "config.lower: expected a list of strings"),
    (
        {"filter": []},
        'config.filter: expected an object {"column": ..., "op": ..., "value": ...}, {"all": [...]} or {"any": [...]}',
    ),
    (
        {"filter": {"column": "a", "op": "~", "value": 1}},
        "config.filter.op: expected one of ==, !=, >, >=, <, <= (got '~')",
    ),
    ({"filter": {"column": "a", "op": "==", "value": True}}, "config.filter.value: expected a number or a string"),
    ({"filter": {"column": "a", "op": "==", "value": None}}, "config.filter.value: expected a number or a string"),
    ({"filter": {"column": 1, "op": "==", "value": 1}}, "config.filter.column: expected a string"),
    ({"filter": {"column": "a", "op": "=="}}, "config.filter: missing 'value'"),
    (
        {"filter": {"column": "a", "op": "==", "value": 1, "x": 1}},
        "config.filter: unknown key 'x' (known: column, op, value, all, any)",
    ),
    ({"max_record_bytes": 0}, "config.max_record_bytes: expected a positive integer"),
    ({"max_record_bytes": 1.5}, "config.max_record_bytes: expected a positive integer"),
    ({"max_record_bytes": "1"}, "config.max_record_bytes: expected a positive integer"),
]


@pytest.mark.parametrize(("config", "message"), CONFIG_ERRORS)
def test_config_errors(config: dict[str, Any], message: str) -> None:
    assert guest_error(config) == message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"[1]", "config: expected a JSON object"),
        (b'{"select": ["a"', "config: invalid JSON at byte 15: unexpected end of JSON"),
        (b'{"select": ["a"]} x', "config: invalid JSON at byte 18: unexpected data after the JSON value"),
        (b'{"select": ["a\\x"]}', "config: invalid JSON at byte 14: invalid escape in string"),
        (b'{"select": ["\\ud800"]}', "config: invalid JSON at byte 13: invalid \\u escape (unpaired surrogate)"),
        (b'{"select": ["a"], "select": ["b"]}', "config: duplicate key 'select'"),
        (b'{"trim": [], "trim": []}', "config: duplicate key 'trim'"),
        (
            b'{"filter": {"all": [{"any": [], "any": []}]}}',
            "config.filter.all[0].any: expected a non-empty list of conditions",
        ),
        (
            b'{"filter": {"all": [{"column": "a", "column": "b"}]}}',
            "config.filter.all[0]: duplicate key 'column'",
        ),
        (b'{"filter": ' + b'{"all": [' * 40 + b"]}" * 40 + b"}", "config: invalid JSON at byte 298: nesting too deep"),
    ],
)
def test_config_json_errors(text: bytes, message: str) -> None:
    assert config_text_error(text) == message


def test_config_strings_decode_json_escapes() -> None:
    data = "a\tb,é😀\n1,2\n".encode()
    config = json.loads('{"select": ["\\u00e9\\ud83d\\ude00", "a\\tb"]}')
    assert check(config, data) == "é😀,a\tb\n2,1\n".encode()


HEADER_ERRORS = [
    ({"select": ["id", "foo"]}, "select: column 'foo' is not in the header (columns: id, name, amount, city)"),
    ({"rename": {"foo": "x"}}, "rename: column 'foo' is not in the header (columns: id, name, amount, city)"),
    ({"select": ["id"], "rename": {"city": "x"}}, "rename: column 'city' is not selected (selected: id)"),
    ({"upper": ["foo"]}, "upper: column 'foo' is not in the header (columns: id, name, amount, city)"),
    ({"select": ["id", "name"], "lower": ["city"]}, "lower: column 'city' is not selected (selected: id, name)"),
    ({"upper": ["name"], "lower": ["name"]}, "lower: column 'name' is also in upper"),
    (
        {"filter": {"column": "foo", "op": "==", "value": 1}},
        "filter: column 'foo' is not in the header (columns: id, name, amount, city)",
    ),
]


@pytest.mark.parametrize(("config", "message"), HEADER_ERRORS)
def test_header_errors(config: dict[str, Any], message: str) -> None:
    assert guest_error(config, ORDERS) == message
    assert guest_error(config, ORDERS, chunk_size=1) == message


def test_empty_input_never_sees_a_header() -> None:
    assert run({"select": ["foo"]}, b"") == (b"", b"", (0, 0, 0))


def test_record_larger_than_max_record_bytes_fails() -> None:
    data = b"a,b\n1,2\n" + b"x" * 50 + b',"' + b"y" * 50 + b'"\n'
    message = "line 3: record exceeds max_record_bytes (100); raise max_record_bytes in the stage config"
    for size in (None, 1, 10):
        assert guest_error({"max_record_bytes": 100}, data, size) == message
    assert run({"max_record_bytes": 103}, data)[2] == (2, 2, 0)


def test_default_record_limit_is_64_mib() -> None:
    big = b'"' + b"z" * (64 << 20) + b'"\n'
    message = "line 2: record exceeds max_record_bytes (67108864); raise max_record_bytes in the stage config"
    # Chunks of 10^6 bytes: the record is refused before its held part grows past 64 MiB - 48
    # bytes, which would take the next (128 MiB) allocation class.
    assert guest_error({}, b"a\n" + big, chunk_size=1_000_000) == message


@pytest.fixture
def large_csv_fields() -> Iterator[None]:
    """Let csv.reader read fields beyond its default 128 KiB limit during one test."""
    old = csv.field_size_limit(1 << 30)
    yield
    csv.field_size_limit(old)


@pytest.mark.usefixtures("large_csv_fields")
def test_fields_larger_than_the_output_buffer() -> None:
    value = ('say "x", ' * 40_000) + "é"
    data = f"a,b\n1,{csv_row([value])}2,short\n".encode()
    out = check({"upper": ["b"]}, data, [None, 100_000])
    assert out.splitlines()[1].startswith(b'1,"SAY ""X"", ')
    assert check({}, data, [None]).endswith(b'"\n2,short\n')


# -------------------------------------------------------------------------------------------------
# The module itself
# -------------------------------------------------------------------------------------------------


def test_module_imports_only_the_pipeline_host_functions() -> None:
    module = wasmtime.Module.from_file(wasmtime.Engine(), builtin_path("csv-map"))
    assert {(i.module, i.name) for i in module.imports} <= {
        ("pipeline", "pl_emit"),
        ("pipeline", "pl_fail"),
        ("pipeline", "pl_log"),
    }
    memory = next(e.type for e in module.exports if e.name == "memory")
    assert isinstance(memory, wasmtime.MemoryType)
    assert memory.limits.min <= 32  # 1 MiB input, 2 x 256 KiB output, 64 KiB stack: ~1.7 MiB


def test_output_is_emitted_in_large_blocks() -> None:
    emits: list[tuple[int, int]] = []
    module = GuestModule.load(builtin_path("csv-map"))
    with Guest(module, stage="csv-map", on_emit=lambda port, view: emits.append((port, len(view)))) as guest:
        guest.start(b"{}")
        guest.feed(b"a,b\n")
        for _ in range(8):
            before = len(emits)
            guest.feed(b"12345,abcdefghij\n" * 60_000)
            # Within a call only full buffers; what is left goes out once, when the call returns.
            assert all(size >= 64 << 10 for _, size in emits[before:-1])
        guest.finish()
    assert sum(size for _, size in emits) == 4 + 8 * 17 * 60_000
    assert {port for port, _ in emits} == {0}


# -------------------------------------------------------------------------------------------------
# Property: random CSV, random config, random chunking
# -------------------------------------------------------------------------------------------------

TEXT = st.lists(ALPHABET, max_size=6).map("".join)

HEALTH = [HealthCheck.too_slow, HealthCheck.filter_too_much]


@settings(max_examples=1000, deadline=None, suppress_health_check=HEALTH)
@given(data=csv_inputs(), chunk=st.one_of(st.none(), st.integers(1, 70)), choice=st.data())
def test_small_inputs_match_the_python_model(data: bytes, chunk: int | None, choice: st.DataObject) -> None:
    check_model(data, chunk, choice, TEXT)


@settings(max_examples=150, deadline=None, suppress_health_check=HEALTH)
@given(data=csv_inputs(max_rows=60, max_len=30), chunk=st.one_of(st.none(), st.integers(1, 300)), choice=st.data())
def test_larger_inputs_match_the_python_model(data: bytes, chunk: int | None, choice: st.DataObject) -> None:
    check_model(data, chunk, choice, TEXT)
