"""The CSV framer's batches (pl_csv in guests/sdk/pipeline_guest.h), through csv-map and csv-to-jsonl.

Records reach a guest in batches of at most 1024 rows whose field ends sit in an array of 8192
entries; a record that does not end in its chunk is copied to the framer's carry buffer; fields
are cut only when a guest reads them. Each case here sits on one of those edges, at several chunk
sizes, and is checked against the Python models the other CSV tests use.
"""

from __future__ import annotations

import json

from csv_map_model import check
from test_guest_csv_to_jsonl import check as check_jsonl

ROWS_PER_BATCH = 1024
ENDS_PER_BATCH = 8192


def test_batches_fill_up_on_rows_within_one_chunk() -> None:
    """Several batches per chunk, with a record open across each boundary."""
    rows = b"".join(b"%d,n%d,%d.%02d,c\n" % (i, i, i % 300, i % 100) for i in range(3 * ROWS_PER_BATCH + 17))
    data = b"id,name,amount,city\n" + rows
    config = {"select": ["name", "amount"], "upper": ["name"], "filter": {"column": "amount", "op": ">", "value": 99}}
    check(config, data, [None, 1_000, 4_096, 65_536])


def test_batches_fill_up_on_fields() -> None:
    """Wide rows: the field ends fill up before the rows do."""
    width = 100
    header = ",".join(f"c{i}" for i in range(width)).encode() + b"\n"
    rows = b"".join(
        ",".join(f"{r}.{i}" for i in range(width)).encode() + b"\n" for r in range(3 * ENDS_PER_BATCH // width)
    )
    check({"select": ["c99", "c0", "c50"], "upper": ["c50"]}, header + rows, [None, 5_000, 100_000])


def test_a_record_with_more_fields_than_a_batch_holds() -> None:
    """One record alone has more field ends than a batch: the array grows."""
    width = 3 * ENDS_PER_BATCH
    header = ",".join(f"c{i}" for i in range(width)).encode() + b"\n"
    row = ",".join(str(i % 7) for i in range(width)).encode() + b"\n"
    check({"select": ["c0", f"c{width - 1}"]}, header + row + b"0" + b",1" * (width - 1) + b"\n", [None, 7_000])


def test_a_record_spanning_chunks_in_the_middle_of_a_batch() -> None:
    """Chunks end inside a quoted field with '""' pairs and a line break, after other rows of the
    same chunk; the carried record is cut from the carry buffer, then the batch goes on."""
    row = b'%d,"say ""hi"", x\r\ny",%d.5,"New York, NY"\n'
    data = b"id,text,amount,city\n" + b"".join(row % (i, i) for i in range(400))
    for config in [
        {},
        {"select": ["city", "text"], "upper": ["text"]},
        {"filter": {"column": "text", "op": "!=", "value": ""}},
    ]:
        check(config, data, [None, 97, 1_000, 4_099])


def test_fields_read_after_more_input_arrived() -> None:
    """A record's fields are read only when it ends, chunks later: every field kind split at every
    byte of a record carried over several chunks."""
    data = b'a,b,c,d\n1,"x""y",plain,"ab"c\n2,"m\r\nn",,"q"\n3,z"w,"",\n'
    check({}, data, [1, 2, 3, 5, 7, None])
    check({"select": ["d", "b"], "lower": ["b"]}, data, [1, 3, None])


def test_columns_before_and_after_a_quoted_one_in_a_run() -> None:
    """Consecutive selected columns are copied as one run unless a '"' sits in it: then the columns
    before the quote's go raw and the others one by one (a quoted value that needs no quotes loses
    them)."""
    data = b'a,b,c,d,e\n1,bob,"Berlin",x,"n ""q"""\n2,al,"New York, NY",y,\n3,"zo\xc3\xab",p,q"r,s\n4,eve,plain,w,v\n'
    for config in [
        {"select": ["a", "b", "c", "d"], "upper": ["b", "d"]},
        {"select": ["b", "c"], "lower": ["c"]},
        {"select": ["c"]},
        {"select": ["d", "e"]},
    ]:
        check(config, data, [None, 1, 10])


def test_many_decoded_values_in_one_batch() -> None:
    """Values with '""' pairs are built in a buffer per batch; it is replaced, not moved, when full."""
    rows = b"".join(b'%d,"%s""%d""",%d\n' % (i, b"v" * (i % 700), i, i) for i in range(2_000))
    data = b"id,text,n\n" + rows
    check({"filter": {"column": "text", "op": ">", "value": "v"}, "upper": ["text"]}, data, [None, 50_000])


def test_csv_to_jsonl_across_batches_and_chunks() -> None:
    rows = b"".join(b'%d,"a ""%d""\nb",%d.5,t\n' % (i, i, i) for i in range(2 * ROWS_PER_BATCH + 5))
    data = b"id,text,amount,flag\n" + rows
    config = {"types": {"id": "int", "amount": "float"}}
    out = check_jsonl(config, data, [None, 333, 8_192])
    assert json.loads(out.splitlines()[2]) == {"id": 2, "text": 'a "2"\nb', "amount": 2.5, "flag": "t"}
