"""The json-array guest: a top-level JSON array streamed out as JSON Lines, at constant memory.

Outputs are checked against Python's json module: each line is the element's compact text, and
the guest accepts exactly the documents json.loads accepts (minus NaN/Infinity) as arrays.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import check_resume, peak_rss

from pipeline.errors import GuestError, PipelineError
from pipeline.testing import run_guest

CHUNK_SIZES = [None, 1, 2, 3, 7, 64, 1000]


def run(data: bytes, chunk_size: int | None = None, config: dict[str, Any] | None = None) -> bytes:
    """The guest's output (port 0 only: it has no other)."""
    result = run_guest("json-array", config or {}, data, chunk_size=chunk_size)
    assert set(result.outputs) <= {0}
    out = result.outputs.get(0, b"")
    assert result.counters == (out.count(b"\n"), out.count(b"\n"), 0)
    return out


def check(data: bytes, want: bytes, chunk_sizes: list[int | None] = CHUNK_SIZES) -> None:
    for size in chunk_sizes:
        assert run(data, size) == want, f"chunk size {size}"


def message(exc: BaseException) -> str:
    """A failure's message: a refused config (SpecError) is the guest's text; a GuestError
    starts with the host's location prefix."""
    return str(exc).split(": ", 1)[1] if isinstance(exc, GuestError) else str(exc)


def error(data: bytes, chunk_size: int | None = None, config: dict[str, Any] | None = None) -> str:
    """The message the run fails with (after the host's location prefix)."""
    with pytest.raises(PipelineError) as info:
        run_guest("json-array", config or {}, data, chunk_size=chunk_size)
    return message(info.value)


def compact(value: Any, ascii_only: bool = False) -> bytes:
    return json.dumps(value, ensure_ascii=ascii_only, separators=(",", ":")).encode()


def python_elements(data: bytes) -> list[Any] | None:
    """What json.loads reads (strict UTF-8, no NaN/Infinity), if it is an array; None if it refuses."""

    def no_constants(name: str) -> Any:
        raise ValueError(name)

    try:
        value = json.loads(data.decode("utf-8").removeprefix("\ufeff"), parse_constant=no_constants)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, list) else None


# -------------------------------------------------------------------------------------------------
# Hand-written cases
# -------------------------------------------------------------------------------------------------

CASES = {
    "scalars": (b"[1, -0.5e+3, 0, 1E2, true, false, null]", b"1\n-0.5e+3\n0\n1E2\ntrue\nfalse\nnull\n"),
    "strings keep their escapes": (
        rb'[ "a\"b\\c\/d\b\f\n\r\t", "\u00e9\ud83d\ude00", "\ud800" ]',
        rb'"a\"b\\c\/d\b\f\n\r\t"' + b"\n" + rb'"\u00e9\ud83d\ude00"' + b"\n" + rb'"\ud800"' + b"\n",
    ),
    "unicode passes through": ('["zoë", "中文", "😀"]'.encode(), '"zoë"\n"中文"\n"😀"\n'.encode()),
    "nested values, whitespace removed": (
        b'[ { "a" : [ 1 , { "b" : null } ] ,\r\n\t"c" : { } } , [ ] , [ [ ] ] ]',
        b'{"a":[1,{"b":null}],"c":{}}\n[]\n[[]]\n',
    ),
    "whitespace inside strings is kept": (b'[" a , b "]', b'" a , b "\n'),
    "empty array": (b"[]", b""),
    "blank around": (b" \r\n\t[ ]\n\n", b""),
    "bom": (b"\xef\xbb\xbf[1]", b"1\n"),
    "numbers at the end of elements": (b"[1,2 ,3\n]", b"1\n2\n3\n"),
    "big numbers keep their text": (b"[123456789012345678901234567890, 1.000000000000000000001]", None),
}


@pytest.mark.parametrize(("data", "want"), CASES.values(), ids=CASES.keys())
def test_cases(data: bytes, want: bytes | None) -> None:
    if want is None:
        want = b"".join(part.strip() + b"\n" for part in data[1:-1].split(b","))
    check(data, want)
    assert [json.loads(line) for line in want.splitlines()] == python_elements(data)


def test_deep_nesting() -> None:
    depth = 4095  # the element's own nesting; with the top-level array: 4096
    element = b"[" * depth + b"]" * depth
    check(b"[" + element + b"]", element + b"\n", [None, 1, 100])
    too_deep = b"[" + b"[" * 4097 + b"]" * 4097 + b"]"
    assert error(too_deep) == "invalid JSON at byte 4097: nesting deeper than the limit of 4096"


def test_huge_strings_straddling_chunks() -> None:
    big = 'x\\"é😀' * 300_000  # ~3 MB, with escapes and multi-byte characters across chunk ends
    data = json.dumps(["a", big, {"k": big}, 1], ensure_ascii=False).encode()
    want = b"\n".join(compact(v) for v in ["a", big, {"k": big}, 1]) + b"\n"
    check(data, want, [None, 4093, 65536])


ERRORS = [
    (b"", "the document is empty: expected a JSON array"),
    (b"  \n", "the document is empty: expected a JSON array"),
    (b'{"a": 1}', "the document is not a JSON array: it starts with '{' at byte 0"),
    (b"  1", "the document is not a JSON array: it starts with '1' at byte 2"),
    (b"[1", "invalid JSON at byte 2: unexpected end of JSON"),
    (b"[1,", "invalid JSON at byte 3: unexpected end of JSON"),
    (b'[{"a": [1, 2}]', "invalid JSON at byte 12: expected ',' or ']'"),
    (b"[1,]", "invalid JSON at byte 3: expected a JSON value"),
    (b"[1 2]", "invalid JSON at byte 3: expected ',' or ']'"),
    (b"[01]", "invalid JSON at byte 2: expected ',' or ']'"),
    (b"[1.]", "invalid JSON at byte 3: invalid number"),
    (b"[-]", "invalid JSON at byte 2: invalid number"),
    (b"[1e+]", "invalid JSON at byte 4: invalid number"),
    (b"[NaN]", "invalid JSON at byte 1: expected a JSON value"),
    (b"[tru]", "invalid JSON at byte 4: expected a JSON value"),
    (b'["a\x01"]', "invalid JSON at byte 3: control character in string"),
    (b'["a\\x"]', "invalid JSON at byte 4: invalid escape in string"),
    (b'["\\u12g4"]', "invalid JSON at byte 6: invalid \\u escape"),
    (b'["\xff"]', "invalid JSON at byte 2: invalid UTF-8 in string"),
    (b'["\xed\xa0\x80"]', "invalid JSON at byte 3: invalid UTF-8 in string"),  # an encoded surrogate
    (b'{"a"', "the document is not a JSON array: it starts with '{' at byte 0"),
    (b"[1] [2]", "invalid JSON at byte 4: unexpected data after the JSON value"),
    (b'[{"a" 1}]', "invalid JSON at byte 6: expected ':'"),
    (b"[{1: 2}]", "invalid JSON at byte 2: expected a member name"),
    (b"\xef\xbb[]", "the document is not a JSON array: it starts with '?' at byte 0"),
]


@pytest.mark.parametrize(("data", "message"), ERRORS, ids=[repr(d) for d, _ in ERRORS])
def test_errors_name_the_byte_offset(data: bytes, message: str) -> None:
    assert python_elements(data) is None
    for size in (None, 1):
        assert error(data, size) == message


def test_max_element_bytes() -> None:
    data = b'[1, "' + b"x" * 100 + b'", 3]'
    assert run(data, config={"max_element_bytes": 102}) == b'1\n"' + b"x" * 100 + b'"\n3\n'
    message = (
        "the element at byte 4 exceeds max_element_bytes (101) at byte 105; raise max_element_bytes in the stage config"
    )
    for size in (None, 1, 10):
        assert error(data, size, {"max_element_bytes": 101}) == message
    # A number element of exactly the limit ends at the byte after it.
    assert run(b"[12345]", 1, {"max_element_bytes": 5}) == b"12345\n"
    assert "exceeds max_element_bytes (4)" in error(b"[12345]", 1, {"max_element_bytes": 4})


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"max_elements": 1}, "config: unknown key 'max_elements' (known: max_element_bytes)"),
        ({"max_element_bytes": 0}, "config.max_element_bytes: expected a positive integer"),
        ({"max_element_bytes": "1MiB"}, "config.max_element_bytes: expected a positive integer"),
    ],
)
def test_config_errors(config: dict[str, Any], message: str) -> None:
    assert error(b"[]", config=config) == message


# -------------------------------------------------------------------------------------------------
# Properties: parity with json.loads at any chunking
# -------------------------------------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**20), 10**20),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=4), inner, max_size=4)),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    elements=st.lists(values, max_size=6),
    ascii_only=st.booleans(),
    indent=st.sampled_from([None, 0, 2, "\t"]),
    chunk=st.one_of(st.none(), st.integers(1, 40)),
)
def test_documents_stream_as_their_compact_elements(
    elements: list[Any], ascii_only: bool, indent: int | str | None, chunk: int | None
) -> None:
    data = json.dumps(elements, ensure_ascii=ascii_only, indent=indent).encode()
    assert run(data, chunk) == b"".join(compact(e, ascii_only) + b"\n" for e in elements)


TOKENS = ["[", "]", "{", "}", ",", ":", " ", "\n", '"a"', '"\\u00e9"', '"é"', "1", "-2.5e3", "0", "01", "true", "nul"]


@settings(max_examples=300, deadline=None)
@given(tokens=st.lists(st.sampled_from(TOKENS), max_size=16), chunk=st.one_of(st.none(), st.integers(1, 5)))
def test_accepts_exactly_what_json_loads_accepts(tokens: list[str], chunk: int | None) -> None:
    data = "".join(tokens).encode()
    want = python_elements(data)
    if want is None:
        with pytest.raises(GuestError):
            run(data, chunk)
    else:
        assert [json.loads(line) for line in run(data, chunk).splitlines()] == want


# -------------------------------------------------------------------------------------------------
# Pipeline runs: resume, constant memory
# -------------------------------------------------------------------------------------------------

JOB = """\
name: json-array
source: {url: in.json, chunk_size: 50000}
stages:
  - guest: builtin:json-array
sink: {url: out/elements.jsonl}
checkpoint: {every: 64KiB}
"""


def test_resume_mid_document_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    elements = [{"id": i, "text": "x" * (i % 300), "tags": ["a", i / 7]} for i in range(5000)]
    data = json.dumps(elements, indent=1).encode()
    check_resume(tmp_path, JOB, {"in.json": data}, len(data) // 2, ["out/elements.jsonl"])


RSS_JOB = """\
name: rss
source: {url: in.json}
stages:
  - guest: builtin:json-array
sink: {url: out/elements.jsonl}
"""


def _write_array(path: Path, size: int) -> None:
    """A JSON array of about ``size`` bytes, written in 1 MB blocks of the same elements."""
    block = ",\n".join(json.dumps({"id": i, "name": "zoë", "tags": [1, 2.5, None], "n": "x" * 40}) for i in range(9000))
    with open(path, "w", encoding="utf-8") as out:
        out.write("[\n" + block)
        for _ in range(size // len(block)):
            out.write(",\n" + block)
        out.write("\n]\n")


def _peak_rss(directory: Path, size: int) -> int:
    _write_array(directory / "in.json", size)
    (directory / "job.yaml").write_text(RSS_JOB)
    try:
        return peak_rss(directory / "job.yaml")
    finally:
        (directory / "in.json").unlink()


@pytest.mark.slow
def test_peak_rss_is_flat_from_30mb_to_300mb(tmp_path_factory: pytest.TempPathFactory) -> None:
    started = time.perf_counter()
    small = _peak_rss(tmp_path_factory.mktemp("small"), 30_000_000)
    large = _peak_rss(tmp_path_factory.mktemp("large"), 300_000_000)
    print(
        f"json-array peak RSS {small / 2**20:.1f} -> {large / 2**20:.1f} MiB in {time.perf_counter() - started:.1f} s"
    )
    assert large - small < 16 * 1024 * 1024, f"peak RSS {small / 2**20:.1f} MiB -> {large / 2**20:.1f} MiB"
