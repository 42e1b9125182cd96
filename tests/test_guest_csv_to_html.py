"""The csv-to-html guest: an HTML5 table that parses back (html.parser) to exactly the CSV's cells.

Every case runs at several chunk sizes and is checked against csv.reader.
"""

from __future__ import annotations

import csv
import io
from html.parser import HTMLParser
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.errors import GuestError
from pipeline.testing import run_guest

CHUNK_SIZES = [None, 1, 3, 64]


class Table(HTMLParser):
    """Collects the title, the h1, the header cells, the body rows and any <p> text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.title = self.h1 = ""
        self.head: list[list[str]] = []
        self.rows: list[list[str]] = []
        self.notes: list[str] = []
        self._open: list[str] = []
        self._section = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag != "meta":  # the one void element in the document
            self._open.append(tag)
        if tag in ("thead", "tbody"):
            self._section = tag
        elif tag == "tr":
            (self.head if self._section == "thead" else self.rows).append([])
        elif tag in ("td", "th"):
            (self.head if self._section == "thead" else self.rows)[-1].append("")
        elif tag == "p":
            self.notes.append("")

    def handle_endtag(self, tag: str) -> None:
        assert self._open.pop() == tag, f"</{tag}> closes another element"

    def handle_data(self, data: str) -> None:
        where = self._open[-1] if self._open else ""
        if where == "title":
            self.title += data
        elif where == "h1":
            self.h1 += data
        elif where in ("td", "th"):
            cells = self.head if self._section == "thead" else self.rows
            cells[-1][-1] += data
        elif where == "p":
            self.notes[-1] += data
        else:
            assert where == "style" or not data.strip(), f"stray text {data!r} in <{where}>"


def render(config: dict[str, Any], data: bytes) -> tuple[Table, bytes]:
    """The parsed document and the rejects, the same at every chunk size."""
    runs = {size: run_guest("csv-to-html", config, data, chunk_size=size).outputs for size in CHUNK_SIZES}
    first = runs[None]
    for size, outputs in runs.items():
        assert outputs == first, f"chunk size {size}"
    html = first[0].decode()
    assert html.startswith("<!DOCTYPE html>\n<html>") and html.endswith("</html>\n")
    table = Table()
    table.feed(html)
    table.close()
    assert not table._open
    return table, first.get(1, b"")


def csv_rows(data: bytes) -> list[list[str]]:
    return [row for row in csv.reader(io.StringIO(data.decode("utf-8-sig"), newline="")) if row]


def test_cells_parse_back_exactly() -> None:
    data = b'id,name,notes\n1,"a, b","say ""hi"""\n2,<b>&amp;</b>,"two\nlines"\n3,it\'s,x>y\n'
    table, rejects = render({}, data)
    assert table.head == [["id", "name", "notes"]]
    assert table.rows == csv_rows(data)[1:]
    assert (table.title, table.h1, table.notes, rejects) == ("Report", "", [], b"")


def test_every_special_character_is_escaped() -> None:
    data = b"a\n&<>\"'\n"
    html = run_guest("csv-to-html", {}, b'a\n"&<>""\'"\n').outputs[0].decode()
    assert "<td>&amp;&lt;&gt;&quot;&#39;</td>" in html
    assert render({}, data)[0].rows == [["&<>\"'"]]


def test_title_is_escaped_in_title_and_h1() -> None:
    table, _ = render({"title": 'Q3 <orders> & "more"'}, b"a\n1\n")
    assert table.title == table.h1 == 'Q3 <orders> & "more"'
    assert table.tags[:5] == ["html", "head", "meta", "title", "style"]


def test_columns_pick_and_order() -> None:
    data = b"id,name,amount,city\n1,ann,3.5,Oslo\n2,bob,7,Rome\n"
    table, _ = render({"columns": ["city", "id"]}, data)
    assert table.head == [["city", "id"]]
    assert table.rows == [["Oslo", "1"], ["Rome", "2"]]


@pytest.mark.parametrize(
    ("max_rows", "shown", "note"), [(0, 0, ["5 more rows not shown"]), (4, 4, ["1 more row not shown"]), (5, 5, [])]
)
def test_max_rows(max_rows: int, shown: int, note: list[str]) -> None:
    data = b"n\n" + b"".join(b"%d\n" % i for i in range(5))
    table, _ = render({"max_rows": max_rows}, data)
    assert table.rows == [[str(i)] for i in range(shown)]
    assert table.notes == note


def test_wrong_field_counts_go_to_rejects_like_csv_map() -> None:
    data = b'a,b\n1,2\n3\n4,5,"x,y"\n\n6,7\n'
    table, rejects = render({"max_rows": 1}, data)
    assert table.rows == [["1", "2"]]
    assert table.notes == ["1 more row not shown"]
    assert (
        rejects == b'line,reason,record\n3,"expected 2 fields, got 1",3\n4,"expected 2 fields, got 3","4,5,""x,y"""\n'
    )
    run = run_guest("csv-to-html", {}, data)
    assert run.counters == (4, 2, 2)


def test_no_input_is_an_empty_table() -> None:
    table, _ = render({}, b"")
    assert (table.head, table.rows) == ([], [])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.lists(st.text(alphabet="ab,\"'<>&\n\r é", max_size=6), min_size=3, max_size=3), min_size=1, max_size=8)
)
def test_any_cells_round_trip(rows: list[list[str]]) -> None:
    buffer = io.StringIO(newline="")
    csv.writer(buffer).writerows(rows)
    data = buffer.getvalue().encode()
    expected = csv_rows(data)
    if not expected:
        return
    table, _ = render({}, data)
    assert table.head == [expected[0]]
    good = [row for row in expected[1:] if len(row) == len(expected[0])]
    # html.parser keeps CR as is; the cells match byte for byte.
    assert table.rows == good


def error(config: dict[str, Any], data: bytes = b"a\n1\n") -> str:
    with pytest.raises(GuestError) as info:
        run_guest("csv-to-html", config, data)
    return str(info.value).split(": ", 1)[1]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"titel": "x"}, "config: unknown key 'titel' (known: title, columns, max_rows)"),
        ({"title": 3}, "config.title: expected a string"),
        ({"columns": "a"}, "config.columns: expected a list of strings"),
        ({"columns": []}, "config.columns: expected at least one column"),
        ({"max_rows": -1}, "config.max_rows: expected a non-negative integer"),
        ({"max_rows": 1.5}, "config.max_rows: expected a non-negative integer"),
        ({"columns": ["b"]}, "columns: column 'b' is not in the header (columns: a)"),
    ],
)
def test_config_errors(config: dict[str, Any], message: str) -> None:
    assert error(config) == message
