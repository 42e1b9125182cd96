"""The csv-map guest's column rules: trim, default, required, types and all/any filters.

A row goes through trim -> default -> required -> types -> filter -> case mapping and output;
every case runs at several chunk sizes (down to 1 byte) against the Python model in
csv_map_model.py, which a property test also drives with random CSV and random configs.
"""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from csv_map_model import (
    check,
    check_model,
    csv_inputs,
    expected,
    guest_error,
    read_back,
    reasons,
    run,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SIZES: list[int | None] = [None, 1, 3, 17]

ORDERS = (
    b"id,name,amount,when\n"
    b"1, alice ,12.50,2024-02-29\n"
    b'2,"\tbob, jr. ", 7 ,\n'
    b"3,,,2023-02-29\n"
    b"4,zo\xc3\xab,n/a, 2024-01-31 \n"
)


def rows(config: dict[str, Any], data: bytes = ORDERS) -> list[list[str]]:
    """The output rows (header first) after checking every chunk size against the model."""
    return read_back(check(config, data, SIZES))


def rejected(config: dict[str, Any], data: bytes = ORDERS) -> list[str]:
    """The reject reasons, after checking every chunk size against the model."""
    check(config, data, SIZES)
    return reasons(run(config, data)[1])


def cond(column: str, op: str, value: Any) -> dict[str, Any]:
    """A filter condition."""
    return {"column": column, "op": op, "value": value}


# -------------------------------------------------------------------------------------------------
# trim
# -------------------------------------------------------------------------------------------------


def test_trim_strips_spaces_and_tabs_only() -> None:
    data = "a,b\n \t x y \t , \u00a0z\x0b\n".encode()
    assert rows({"trim": ["a", "b"]}, data)[1] == ["x y", "\u00a0z\x0b"]


def test_trim_keeps_quoting_right_and_rejects_keep_the_original() -> None:
    data = b'a,b\n"  x, ""y""  ",1\n" ",2,3\n'
    out, rejects, _ = run({"trim": ["a"]}, data)
    assert out == b'a,b\n"x, ""y""",1\n'
    assert read_back(rejects)[1][2] == " ,2,3"
    check({"trim": ["a"]}, data, SIZES)


def test_trim_to_empty_in_a_single_column_is_quoted() -> None:
    assert check({"trim": ["a"]}, b"a\n  \nx\n", SIZES) == b'a\n""\nx\n'


def test_trim_may_name_renamed_unselected_and_twice_selected_columns() -> None:
    assert rows({"select": ["name", "name"], "rename": {"name": "who"}, "trim": ["who"]})[2] == ["bob, jr.", "bob, jr."]
    config = {"select": ["id"], "trim": ["amount"], "filter": cond("amount", "==", "7")}
    assert rows(config) == [["id"], ["2"]]


# -------------------------------------------------------------------------------------------------
# default and required
# -------------------------------------------------------------------------------------------------


def test_default_fills_empty_fields_after_trim() -> None:
    assert [r[1] for r in rows({"default": {"name": "?"}})] == ["name", " alice ", "\tbob, jr. ", "?", "zoë"]
    assert [r[2] for r in rows({"trim": ["amount"], "default": {"amount": "0"}})][2:4] == ["7", "0"]
    assert [r[2] for r in rows({"default": {"amount": "0"}})][2:4] == [" 7 ", "0"]  # not blank: kept


def test_defaults_are_quoted_when_needed() -> None:
    assert check({"default": {"b": 'x, "y"'}}, b"a,b\n1,\n2,z\n", SIZES) == b'a,b\n1,"x, ""y"""\n2,z\n'
    assert check({"default": {"a": ""}}, b'a\n""\n', SIZES) == b'a\n""\n'


def test_a_default_larger_than_the_output_buffer() -> None:
    big = "é," * 25_000  # 75 KB: quoted and doubled it could take more than half the buffer
    out = check({"default": {"b": big}}, b"a,b\n1,\n2,x\n" * 3, [None, 1000])
    assert read_back(out)[1] == ["1", big]


def test_required_rejects_empty_fields_after_trim_and_default() -> None:
    assert rejected({"required": ["name", "when"]}) == ["column 'when' is empty", "column 'name' is empty"]
    assert rejected({"required": ["name"], "default": {"name": "-"}}) == []
    assert rejected({"required": ["amount"]}, b"amount\n \n") == []
    assert rejected({"required": ["amount"], "trim": ["amount"]}, b"amount\n \n") == ["column 'amount' is empty"]


# -------------------------------------------------------------------------------------------------
# types
# -------------------------------------------------------------------------------------------------

TYPE_CASES = {
    "int": (
        ["0", "-0", "+5", "007", " 42 ", "\t-1", "9223372036854775807", "-9223372036854775808"],
        ["9223372036854775808", "-9223372036854775809", "1.0", "1e3", "0x10", "1_000", "+", "-", " ", "\uff11", "12a"],
    ),
    "float": (
        ["1.5", "-.5", "5.", "1e3", " 2 ", "+1E-2", "99999999999999999999", "1e999"],
        ["inf", "nan", "1,5", "abc", ".", "e3", "1e", "0x1p3", " "],
    ),
    "date": (
        ["2024-02-29", "2000-02-29", "0001-01-01", "9999-12-31", "2023-12-31"],
        ["2023-02-29", "1900-02-29", "2024-02-30", "2024-04-31", "2024-13-01", "2024-00-10", "2024-01-00",
         "0000-01-01", "2024-1-01", "20240101", "2024/01/01", " 2024-01-01", "2024-01-01T00:00",
         "\uff12\uff10\uff12\uff14-01-01"],
    ),
}  # fmt: skip


@pytest.mark.parametrize("kind", TYPE_CASES)
def test_types_accept_exactly_their_values(kind: str) -> None:
    good, bad = TYPE_CASES[kind]
    data = ("n,v\n" + "".join(f'{i},"{v}"\n' for i, v in enumerate(["", *good, *bad]))).encode()
    out, rejects, counters = run({"types": {"v": kind}}, data)
    assert [r[1] for r in read_back(out)[1:]] == ["", *good]  # an empty field passes
    article = "an" if kind == "int" else "a"
    assert reasons(rejects) == [f"column 'v' is not {article} {kind}: \"{v}\"" for v in bad]
    assert counters == (1 + len(good) + len(bad), 1 + len(good), len(bad))
    check({"types": {"v": kind}}, data, SIZES)


def test_dates_are_real_calendar_days() -> None:
    """Every month 00-13 and day 00-32 of a few years, against datetime.date."""
    days = [f"{y:04}-{m:02}-{d:02}" for y in (1, 1900, 2000, 2023, 2024, 9999) for m in range(14) for d in range(33)]
    out, _, _ = run({"types": {"d": "date"}}, ("d\n" + "\n".join(days) + "\n").encode())

    def real(day: str) -> bool:
        try:
            return bool(datetime.date.fromisoformat(day))
        except ValueError:
            return False

    assert out.decode().split()[1:] == [d for d in days if real(d)]


def test_type_reasons_cut_long_values() -> None:
    assert rejected({"types": {"v": "int"}}, ("v\n" + "9" * 70 + "\n").encode()) == [
        f"column 'v' is not an int: \"{'9' * 64}...\""
    ]


def test_checks_report_required_first_then_types_in_config_order() -> None:
    data = b"a,b,c\nx,y,\n"
    assert rejected({"types": {"b": "int", "a": "float"}, "required": ["c"]}, data) == ["column 'c' is empty"]
    assert rejected({"types": {"b": "int", "a": "float"}}, data) == ["column 'b' is not an int: \"y\""]


def test_types_see_trimmed_and_defaulted_values_and_may_name_unselected_columns() -> None:
    config: dict[str, Any] = {"select": ["id"], "types": {"when": "date", "amount": "float"}}
    assert rejected(config) == [
        "column 'when' is not a date: \"2023-02-29\"",
        "column 'when' is not a date: \" 2024-01-31 \"",
    ]
    config = {
        "select": ["id"],
        "types": {"amount": "float", "when": "date"},
        "trim": ["when"],
        "default": {"amount": "x"},
    }
    assert rejected(config) == ["column 'amount' is not a float: \"x\"", "column 'amount' is not a float: \"n/a\""]


# -------------------------------------------------------------------------------------------------
# all / any filters
# -------------------------------------------------------------------------------------------------

DATA = b"n,city,amount\n1,Berlin,5\n2,Paris,50\n3,Berlin,500\n4,Rome,x\n5,Rome,\n"


def kept(flt: dict[str, Any], data: bytes = DATA) -> list[str]:
    """The first field of the rows the filter keeps."""
    return [r[0] for r in rows({"filter": flt}, data)[1:]]


def test_all_and_any() -> None:
    berlin, big = cond("city", "==", "Berlin"), cond("n", ">=", 2)
    assert kept({"all": [berlin, big]}) == ["3"]
    assert kept({"any": [berlin, big]}) == ["1", "2", "3", "4", "5"]
    assert kept({"any": [berlin]}) == kept(berlin) == ["1", "3"]
    assert kept({"all": [{"any": [berlin, cond("city", "==", "Rome")]}, {"all": [cond("n", "!=", "4")]}]}) == [
        "1",
        "3",
        "5",
    ]


def test_groups_nest_deeply() -> None:
    flt: dict[str, Any] = cond("n", "<", 3)
    for i in range(20):  # the JSON reader allows 64 levels; a group takes 2
        flt = {("all", "any")[i % 2]: [flt]}
    assert kept(flt) == ["1", "2"]


def test_a_non_number_rejects_the_row_whatever_the_other_members_say() -> None:
    """In any group, a numeric condition on a non-number rejects the row, even when another
    member already decides it; the reason names the first such condition in config order."""
    rome = cond("city", "==", "Rome")
    config = {"filter": {"any": [rome, cond("amount", ">", 10)]}}
    assert rejected(config, DATA) == ["column 'amount' is not a number: \"x\"", "column 'amount' is not a number: \"\""]
    config = {"filter": {"all": [cond("city", "==", "Oslo"), {"any": [cond("n", ">", 0), cond("amount", "<", 1)]}]}}
    assert rejected(config, DATA) == ["column 'amount' is not a number: \"x\"", "column 'amount' is not a number: \"\""]
    config = {"filter": {"any": [cond("city", ">", 0), cond("amount", ">", 1)]}}
    assert rejected(config, DATA)[0] == "column 'city' is not a number: \"Berlin\""


def test_filter_sees_values_after_trim_and_default() -> None:
    config = {"trim": ["amount"], "default": {"amount": "0"}, "filter": {"any": [cond("amount", "==", 0)]}}
    assert rows(config)[1:] == [["3", "", "0", "2023-02-29"]]
    assert rejected(config) == ["column 'amount' is not a number: \"n/a\""]


def test_every_step_in_order() -> None:
    """trim -> default -> required -> types -> filter -> case mapping; rejects keep the record."""
    data = (
        b"name,when,amount\n alice ,2024-02-29,1\n  ,,2\ncarol,2024-02-30,3\n"
        b"dave,2024-01-01,\n  ,  x,\nerin,2024-03-01,4\n"
    )
    config = {
        "select": ["name", "when"],
        "rename": {"name": "who"},
        "upper": ["who"],
        "trim": ["who", "when"],
        "default": {"name": "nobody", "when": "2024-01-01"},
        "required": ["amount"],
        "types": {"when": "date"},
        "filter": {"any": [cond("name", "<", "b"), cond("who", "==", "nobody")]},
    }
    out, rejects, counters = run(config, data)
    # alice: trimmed, compared lower-case, written upper-case; a blank name is trimmed, then
    # defaulted, then kept by the filter; carol's bad date rejects the row the filter would drop;
    # an empty amount is reported before a bad date.
    assert read_back(out) == [["who", "when"], ["ALICE", "2024-02-29"], ["NOBODY", "2024-01-01"]]
    assert read_back(rejects)[1:] == [
        ["4", "column 'when' is not a date: \"2024-02-30\"", "carol,2024-02-30,3"],
        ["5", "column 'amount' is empty", "dave,2024-01-01,"],
        ["6", "column 'amount' is empty", "  ,  x,"],
    ]
    assert counters == (6, 2, 3)
    check(config, data, SIZES)


# -------------------------------------------------------------------------------------------------
# Errors
# -------------------------------------------------------------------------------------------------

OBJECT = 'expected an object {"column": ..., "op": ..., "value": ...}, {"all": [...]} or {"any": [...]}'
CONFIG_ERRORS = [
    ({"trim": "a"}, "config.trim: expected a list of strings"),
    ({"required": [1]}, "config.required: expected a list of strings"),
    ({"default": ["a"]}, "config.default: expected an object mapping column names to strings"),
    ({"default": {"a": 0}}, "config.default: expected an object mapping column names to strings"),
    ({"default": {"a": None}}, "config.default: expected an object mapping column names to strings"),
    ({"types": ["int"]}, "config.types: expected an object mapping column names to int, float or date"),
    ({"types": {"a": 1}}, "config.types: expected an object mapping column names to int, float or date"),
    ({"types": {"a": "datetime"}}, "config.types: unknown type 'datetime' for column 'a' (known: int, float, date)"),
    ({"types": {"a": "int", "b": "Int"}}, "config.types: unknown type 'Int' for column 'b' (known: int, float, date)"),
    ({"filter": {"all": []}}, "config.filter.all: expected a non-empty list of conditions"),
    ({"filter": {"any": {}}}, "config.filter.any: expected a non-empty list of conditions"),
    ({"filter": {"all": [1]}}, f"config.filter.all[0]: {OBJECT}"),
    (
        {"filter": {"all": [cond("a", "==", 1)], "column": "a"}},
        "config.filter: expected either column, op and value or one of all, any",
    ),
    (
        {"filter": {"all": [cond("a", "==", 1)], "any": [cond("a", "==", 1)]}},
        "config.filter: expected either column, op and value or one of all, any",
    ),
    (
        {"filter": {"all": [cond("a", "~", 1)]}},
        "config.filter.all[0].op: expected one of ==, !=, >, >=, <, <= (got '~')",
    ),
    (
        {"filter": {"any": [cond("a", "==", 1), {"all": [{"column": "a", "op": "=="}]}]}},
        "config.filter.any[1].all[0]: missing 'value'",
    ),
    (
        {"filter": {"any": [cond("a", "==", 1), {"all": [cond("a", "==", None)]}]}},
        "config.filter.any[1].all[0].value: expected a number or a string",
    ),
    (
        {"filter": {"any": [{"colum": "a"}]}},
        "config.filter.any[0]: unknown key 'colum' (known: column, op, value, all, any)",
    ),
]


@pytest.mark.parametrize(("config", "message"), CONFIG_ERRORS)
def test_config_errors(config: dict[str, Any], message: str) -> None:
    assert guest_error(config) == message


COLUMNS = "(columns: id, name, amount, when)"
HEADER_ERRORS = [
    ({"trim": ["id", "foo"]}, f"trim: column 'foo' is not in the header {COLUMNS}"),
    ({"default": {"foo": "1"}}, f"default: column 'foo' is not in the header {COLUMNS}"),
    ({"required": ["foo"]}, f"required: column 'foo' is not in the header {COLUMNS}"),
    ({"types": {"foo": "int"}}, f"types: column 'foo' is not in the header {COLUMNS}"),
    (
        {"filter": {"any": [cond("id", "==", 1), {"all": [cond("foo", "==", 1)]}]}},
        f"filter: column 'foo' is not in the header {COLUMNS}",
    ),
    (
        {"rename": {"amount": "total"}, "default": {"amount": "0", "total": "1"}},
        "default: column 'total' already has a default",
    ),
]


@pytest.mark.parametrize(("config", "message"), HEADER_ERRORS)
def test_header_errors(config: dict[str, Any], message: str) -> None:
    assert guest_error(config, ORDERS) == message
    assert guest_error(config, ORDERS, chunk_size=1) == message


# -------------------------------------------------------------------------------------------------
# Property: random CSV and configs rich in blanks, numbers and dates, random chunking
# -------------------------------------------------------------------------------------------------

PIECES = [" ", "\t", ",", '"', "\n", "x", "é", "0", "12", "-3", "1.5", "e3", "9223372036854775808"]
PIECES += ["2024-02-29", "2023-02-29", "2024-13-01", "0001-01-01"]
VALUES = st.lists(st.sampled_from(PIECES), max_size=3).map("".join)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=csv_inputs(max_rows=12, max_len=3, alphabet=st.sampled_from(PIECES)),
    chunk=st.one_of(st.none(), st.integers(1, 80)),
    choice=st.data(),
)
def test_rules_match_the_python_model(data: bytes, chunk: int | None, choice: st.DataObject) -> None:
    check_model(data, chunk, choice, VALUES)


def test_model_agrees_on_a_config_using_everything() -> None:
    """A sanity check of the model itself, independent of the guest."""
    config = {"trim": ["v"], "default": {"v": "7"}, "types": {"v": "int"}, "filter": {"any": [cond("v", ">", 5)]}}
    out, rejects, counters = expected(config, b"v\n 9 \n\t\n1\nx\n")
    assert (out, counters) == (b"v\n9\n7\n", (4, 2, 1))
    assert reasons(rejects) == ["column 'v' is not an int: \"x\""]
