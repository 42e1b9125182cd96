"""The csv-to-jsonl guest: CSV records as JSON objects, typed values, rejects.

Checked against a Python model built on csv.reader and json.dumps (the CSV reading model, the
random CSV generator and the reason quoting are csv-map's: the guest shares its parser).
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from csv_map_model import csv_inputs, csv_row, records, shown
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import check_resume, run_record_guest

from pipeline.errors import GuestError, PipelineError
from pipeline.testing import run_guest

CHUNK_SIZES = [None, 1, 2, 3, 5, 64, 1000]
INT = re.compile(r"-?(0|[1-9][0-9]*)\Z")
FLOAT = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?\Z")
TYPE_NAMES = {"int": "an int", "float": "a float", "bool": "a bool"}


def model(config: dict[str, Any], data: bytes) -> tuple[bytes, bytes, tuple[int, int, int]]:
    """What csv-to-jsonl emits on ports 0 and 1, and its counters, for valid UTF-8 input."""
    recs = records(data)
    if not recs:
        return b"", b"", (0, 0, 0)
    (_, header), rows = recs[0], recs[1:]
    types, nulls = config.get("types", {}), set(config.get("nulls", []))
    out, rejects = [], []
    for line, row in rows:
        if len(row) != len(header):
            reason = f"expected {len(header)} field{'s' * (len(header) != 1)}, got {len(row)}"
            rejects.append([str(line), reason, csv_row(row)[:-1]])
            continue
        members = []
        for name, value in zip(header, row, strict=True):
            kind = types.get(name, "string")
            if value == "" and name in nulls:
                text = "null"
            elif kind == "string":
                text = json.dumps(value, ensure_ascii=False)
            elif kind == "bool" and value.lower() in ("true", "false"):
                text = value.lower()
            elif (kind == "int" and INT.match(value)) or (kind == "float" and FLOAT.match(value)):
                text = value
            else:
                rejects.append(
                    [str(line), f"column '{name}' is not {TYPE_NAMES[kind]}: {shown(value)}", csv_row(row)[:-1]]
                )
                break
            members.append(json.dumps(name, ensure_ascii=False) + ":" + text)
        else:
            out.append("{" + ",".join(members) + "}\n")
    reject_text = "".join(map(csv_row, [["line", "reason", "record"], *rejects])) if rejects else ""
    return "".join(out).encode(), reject_text.encode(), (len(rows), len(out), len(rejects))


def run(
    config: dict[str, Any], data: bytes, chunk_size: int | None = None
) -> tuple[bytes, bytes, tuple[int, int, int]]:
    """Run csv-to-jsonl; return (main output, rejects output, counters)."""
    return run_record_guest("csv-to-jsonl", config, data, chunk_size)


def check(config: dict[str, Any], data: bytes, chunk_sizes: list[int | None] = CHUNK_SIZES) -> bytes:
    want = model(config, data)
    for size in chunk_sizes:
        assert run(config, data, size) == want, f"chunk size {size}"
    for line in want[0].splitlines():
        json.loads(line)  # every line is valid JSON
    return want[0]


def message(exc: BaseException) -> str:
    """A failure's message: a refused config (SpecError) is the guest's text; a GuestError
    starts with the host's location prefix."""
    return str(exc).split(": ", 1)[1] if isinstance(exc, GuestError) else str(exc)


def error(config: dict[str, Any], data: bytes = b"", chunk_size: int | None = None) -> str:
    with pytest.raises(PipelineError) as info:
        run_guest("csv-to-jsonl", config, data, chunk_size=chunk_size)
    return message(info.value)


# -------------------------------------------------------------------------------------------------
# Hand-written cases
# -------------------------------------------------------------------------------------------------


def test_values_are_strings_by_default() -> None:
    assert check({}, b"id,name\n1,x\n2,\n") == b'{"id":"1","name":"x"}\n{"id":"2","name":""}\n'


def test_strings_are_escaped_like_json_dumps() -> None:
    data = 'k,v\n"a ""q"" \\ /","tab\there\nnew\rcr\x01\x1f\x7f é 中 😀"\n'.encode()
    out = check({}, data)
    assert out == ('{"k":"a \\"q\\" \\\\ /","v":"tab\\there\\nnew\\rcr\\u0001\\u001f\x7f é 中 😀"}\n').encode()


def test_header_names_are_escaped_too() -> None:
    assert check({}, b'"a""b",c\\d\n1,2\n') == b'{"a\\"b":"1","c\\\\d":"2"}\n'


def test_last_record_without_newline_and_crlf() -> None:
    assert check({}, b"a,b\r\n1,2\r\n3,4") == b'{"a":"1","b":"2"}\n{"a":"3","b":"4"}\n'


def test_empty_input_and_header_only() -> None:
    assert run({}, b"") == (b"", b"", (0, 0, 0))
    assert run({"types": {"a": "int"}}, b"a,b\n") == (b"", b"", (0, 0, 0))


TYPED = b"id,price,ok,note\n1,2.50,TRUE,x\n-7,1e3,false,\n0,-0.5E-2,True,\n"


def test_types() -> None:
    config = {"types": {"id": "int", "price": "float", "ok": "bool"}, "nulls": ["note"]}
    out = check(config, TYPED)
    assert [json.loads(line) for line in out.splitlines()] == [
        {"id": 1, "price": 2.5, "ok": True, "note": "x"},
        {"id": -7, "price": 1000.0, "ok": False, "note": None},
        {"id": 0, "price": -0.005, "ok": True, "note": None},
    ]
    assert out.splitlines()[0] == b'{"id":1,"price":2.50,"ok":true,"note":"x"}'  # numbers keep their text


@pytest.mark.parametrize(
    ("kind", "good", "bad"),
    [
        ("int", ["0", "-0", "12", "-3"], ["", "007", "+1", " 1", "1 ", "1.0", "1e3", "0x1", "--1", "1_0", "inf"]),
        ("float", ["0", "1.5", "-0.5e-3", "1E+2", "12"], ["", ".5", "5.", "+1", "1e", "NaN", "Infinity", " 1", "01.5"]),
        ("bool", ["true", "FALSE", "tRuE"], ["", "1", "0", "yes", "t", "true "]),
    ],
)
def test_type_violations_are_rejected(kind: str, good: list[str], bad: list[str]) -> None:
    data = ("v\n" + "".join(csv_row([v]) for v in good + bad)).encode()
    out, rejects, counters = run({"types": {"v": kind}}, data)
    assert counters == (len(good) + len(bad), len(good), len(bad))
    assert len(out.splitlines()) == len(good)
    rows = list(csv.reader(io.StringIO(rejects.decode(), newline="")))[1:]
    assert [r[1] for r in rows] == [f"column 'v' is not {TYPE_NAMES[kind]}: {shown(v)}" for v in bad]
    check({"types": {"v": kind}}, data, [None, 1])


def test_nulls_turn_empty_values_of_any_type_into_null() -> None:
    config = {"types": {"n": "int", "b": "bool"}, "nulls": ["n", "b", "s"]}
    assert check(config, b"n,b,s\n,,\n1,true,x\n") == b'{"n":null,"b":null,"s":null}\n{"n":1,"b":true,"s":"x"}\n'


def test_invalid_utf8_goes_to_rejects() -> None:
    data = b"a,b\n1,ok\n2,bad \xff\n3,\xc3\n4,\xed\xa0\x80\n5,\xe2\x82\xac\n"
    for size in (None, 1):
        out, rejects, counters = run({}, data, size)
        assert out == '{"a":"1","b":"ok"}\n{"a":"5","b":"€"}\n'.encode()
        assert rejects.splitlines() == [
            b"line,reason,record",
            b'3,invalid UTF-8,"2,bad \xff"',
            b'4,invalid UTF-8,"3,\xc3"',
            b'5,invalid UTF-8,"4,\xed\xa0\x80"',
        ]
        assert counters == (5, 2, 3)


def test_wrong_field_counts_are_rejected_like_csv_map() -> None:
    data = b'a,b\n1,2,3\n"x\ny"\n4,5\n'
    out, rejects, _ = run({}, data)
    assert out == b'{"a":"4","b":"5"}\n'
    assert (
        rejects
        == b'line,reason,record\n2,"expected 2 fields, got 3","1,2,3"\n3,"expected 2 fields, got 1","""x\ny"""\n'
    )
    assert check({}, data)


def test_huge_field_straddling_chunks() -> None:
    value = 'say "hi"\n\\ é😀\x01,' * 30_000
    data = ("a,b\n1," + csv_row([value])).encode()
    old = csv.field_size_limit(1 << 30)
    try:
        out = check({}, data, [None, 4093, 100_000])
    finally:
        csv.field_size_limit(old)
    assert json.loads(out) == {"a": "1", "b": value}


CONFIG_ERRORS = [
    ({"typs": {}}, "config: unknown key 'typs' (known: types, nulls, max_record_bytes)"),
    ({"types": ["a"]}, 'config.types: expected an object mapping column names to "string", "int", "float" or "bool"'),
    (
        {"types": {"a": "number"}},
        'config.types: type of column \'a\' must be "string", "int", "float" or "bool" (got "number")',
    ),
    ({"nulls": "a"}, "config.nulls: expected a list of strings"),
    ({"max_record_bytes": 0}, "config.max_record_bytes: expected a positive integer"),
]


@pytest.mark.parametrize(("config", "message"), CONFIG_ERRORS)
def test_config_errors(config: dict[str, Any], message: str) -> None:
    assert error(config) == message


def test_header_errors() -> None:
    data = b"id,name\n1,x\n"
    assert error({"types": {"foo": "int"}}, data) == "types: column 'foo' is not in the header (columns: id, name)"
    assert error({"nulls": ["bar"]}, data, 1) == "nulls: column 'bar' is not in the header (columns: id, name)"
    assert error({}, b"id,\xff\n1,2\n") == "header: the name of column 2 is not valid UTF-8"


# -------------------------------------------------------------------------------------------------
# Property: random CSV, random types, random chunking
# -------------------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=csv_inputs(), chunk=st.one_of(st.none(), st.integers(1, 70)), choice=st.data())
def test_matches_the_python_model(data: bytes, chunk: int | None, choice: st.DataObject) -> None:
    recs = records(data)
    config: dict[str, Any] = {}
    if recs:
        header = recs[0][1]
        kinds = st.sampled_from(["string", "int", "float", "bool"])
        config["types"] = choice.draw(st.dictionaries(st.sampled_from(header), kinds, max_size=3))
        config["nulls"] = choice.draw(st.lists(st.sampled_from(header), max_size=2))
    want = model(config, data)
    assert run(config, data, chunk) == want
    for line in want[0].splitlines():
        json.loads(line)


# -------------------------------------------------------------------------------------------------
# Resume
# -------------------------------------------------------------------------------------------------

JOB = """\
name: csv-to-jsonl
source: {url: in.csv, chunk_size: 50000}
stages:
  - guest: builtin:csv-to-jsonl
    config: {types: {id: int, amount: float}}
sink: {url: out/rows.jsonl}
rejects: {url: out/rejects.csv}
checkpoint: {every: 64KiB}
"""


def test_resume_mid_file_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    from pipeline.testing.data import write_orders_csv

    write_orders_csv(tmp_path / "orders.csv", 1_000_000)
    data = (tmp_path / "orders.csv").read_bytes()
    check_resume(tmp_path, JOB, {"in.csv": data}, len(data) // 2, ["out/rows.jsonl", "out/rejects.csv"])
