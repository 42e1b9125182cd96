"""Building the guests: reproducible modules, and the C SDK's helpers through a probe guest.

Everything here runs the zig compiler (``pip install 'wasm-pipeline[build]'``); the first build
on a machine takes ~20 s while zig builds its libc.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import GuestError, PipelineError, SpecError
from pipeline.guests import BUILTIN_DIR, builtin_names, builtin_path
from pipeline.guests.build import GUESTS_DIR, build, build_all, guest_sources, main
from pipeline.runtime import Guest, GuestModule
from pipeline.testing import run_guest

pytestmark = pytest.mark.build


def test_committed_modules_match_a_fresh_build(tmp_path: Path) -> None:
    built = build_all(tmp_path)
    assert [p.name for p in built] == [f"{s.stem}.wasm" for s in guest_sources()]
    for module in built:
        assert module.read_bytes() == (GUESTS_DIR / module.name).read_bytes(), f"{module.name} is stale"


def test_check_passes_on_the_committed_modules(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--check"]) == 0
    assert "up to date" in capsys.readouterr().out


def test_every_source_is_a_builtin() -> None:
    assert builtin_names() == [s.stem for s in guest_sources()]
    assert builtin_path("csv-map") == BUILTIN_DIR / "csv-map.wasm"
    with pytest.raises(SpecError, match=r"^unknown builtin guest 'csv_map' \(known: csv-map"):
        builtin_path("csv_map")


def test_a_compile_error_is_reported(tmp_path: Path) -> None:
    (tmp_path / "broken.c").write_text("this is not C\n")
    with pytest.raises(PipelineError, match=r"(?s)^building broken.c failed:\n.*error"):
        build(tmp_path / "broken.c", tmp_path / "broken.wasm")


# -------------------------------------------------------------------------------------------------
# The SDK's line framer and JSON reader, through a probe guest
# -------------------------------------------------------------------------------------------------

PROBE = r"""
#include "pipeline_guest.h"

/* Config: any JSON object; port 0 gets a dump of it, then one "<n>:<line>" per input line.
 * "max_line_bytes" sets the line framer's limit; the value of a "skip" key is skipped. */
static pl_lines lines;
static pl_buf dump;

static int dump_value(pl_json *j);

static void dump_string(const pl_str *s) {
    pl_buf_putc(&dump, '"');
    for (size_t i = 0; i < s->len; i++) {
        uint8_t c = (uint8_t)s->ptr[i];
        if (c < 0x20 || c == '"' || c == '\\') {
            static const char hex[] = "0123456789abcdef";
            uint8_t e[6] = {'\\', 'u', '0', '0', (uint8_t)hex[c >> 4], (uint8_t)hex[c & 15]};
            pl_buf_put(&dump, e, 6);
        } else {
            pl_buf_putc(&dump, c);
        }
    }
    pl_buf_putc(&dump, '"');
}

static int dump_value(pl_json *j) {
    pl_str s;
    double d;
    bool b;
    switch (pl_json_peek(j)) {
    case PL_JSON_NULL: pl_buf_puts(&dump, "null"); return pl_json_null(j);
    case PL_JSON_BOOL: if (pl_json_bool(j, &b)) return -1; pl_buf_puts(&dump, b ? "true" : "false"); return 0;
    case PL_JSON_NUMBER: {
        if (pl_json_number(j, &d)) return -1;
        uint64_t bits;
        memcpy(&bits, &d, 8);
        pl_buf_putc(&dump, '#');
        for (int i = 60; i >= 0; i -= 4) pl_buf_putc(&dump, (uint8_t)"0123456789abcdef"[(bits >> i) & 15]);
        return 0;
    }
    case PL_JSON_STRING: if (pl_json_string(j, &s)) return -1; dump_string(&s); pl_str_free(&s); return 0;
    case PL_JSON_ARRAY:
    case PL_JSON_OBJECT: {
        bool object = pl_json_peek(j) == PL_JSON_OBJECT;
        if (pl_json_enter(j)) return -1;
        pl_buf_putc(&dump, object ? '{' : '[');
        int more, n = 0;
        while ((more = pl_json_next(j, object ? &s : NULL)) > 0) {
            if (n++) pl_buf_putc(&dump, ',');
            if (object) {
                dump_string(&s);
                pl_buf_putc(&dump, ':');
                if (pl_str_eq(&s, "skip", 4)) { /* skipped unread, whatever it is */
                    pl_str_free(&s);
                    if (pl_json_skip(j)) return -1;
                    pl_buf_putc(&dump, '~');
                    continue;
                }
                if (pl_str_eq(&s, "max_line_bytes", 14) && pl_json_peek(j) == PL_JSON_NUMBER) {
                    pl_json j2 = *j;
                    if (pl_json_number(&j2, &d) == 0) lines.max_line_bytes = (uint64_t)d;
                }
                pl_str_free(&s);
            }
            if (dump_value(j)) return -1;
        }
        pl_buf_putc(&dump, object ? '}' : ']');
        return more;
    }
    default: return -1;
    }
}

static int on_line(void *ctx, const uint8_t *line, size_t len, uint64_t no) {
    (void)ctx;
    pl_out *o = pl_port(0);
    pl_buf num = {0};
    pl_buf_put_u64(&num, no);
    pl_buf_putc(&num, ':');
    int rc = pl_out_write(o, num.data, num.len) || pl_out_write(o, line, len) || pl_out_putc(o, '\n');
    pl_buf_free(&num);
    return rc;
}

static int pl_guest_init(const uint8_t *config, size_t len) {
    pl_lines_init(&lines, on_line, NULL);
    pl_json j;
    pl_json_init(&j, config, len);
    if (dump_value(&j) || pl_json_done(&j)) return pl_json_fail(&j, "config");
    pl_buf_putc(&dump, '\n');
    return dump.oom ? pl_fail_str("out of memory") : pl_out_write(pl_port(0), dump.data, dump.len);
}

static int pl_guest_process(const uint8_t *data, size_t len) { return pl_lines_feed(&lines, data, len); }

static int pl_guest_finish(void) { return pl_lines_finish(&lines); }
"""


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The probe guest, built with the same flags as the builtins."""
    folder = tmp_path_factory.mktemp("probe")
    (folder / "sdk-probe.c").write_text(PROBE)
    return build(folder / "sdk-probe.c", folder / "sdk-probe.wasm")


def dump(value: Any) -> str:
    """The probe's rendering of a JSON value: numbers as the hex bits of their double."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{dump(k)}:{dump(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(map(dump, value)) + "]"
    if isinstance(value, str):
        return '"' + "".join(f"\\u{ord(c):04x}" if c < " " or c in '"\\' else c for c in value) + '"'
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    return "#" + struct.pack(">d", float(value)).hex()


def probe_run(probe: Path, config_text: str, data: bytes = b"", chunk_size: int | None = None) -> tuple[str, list[str]]:
    """(config dump, output lines) of the probe."""
    out = bytearray()
    with Guest(GuestModule.load(probe), stage="probe", on_emit=lambda port, view: out.extend(view)) as guest:
        guest.start(config_text.encode())
        step = chunk_size or len(data) or 1
        for i in range(0, len(data), step):
            guest.feed(data[i : i + step])
        guest.finish()
    first, _, rest = out.decode("utf-8", "surrogateescape").partition("\n")
    return first, rest.split("\n")[:-1]


# Object keys, but not "skip": the probe skips that key's value unread (it tests pl_json_skip).
_keys = st.text(max_size=6).filter(lambda key: key != "skip")
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(
    value=st.dictionaries(_keys, json_values, max_size=4),
    ascii_only=st.booleans(),
    indent=st.sampled_from([None, 2]),
)
def test_json_reader_reads_what_python_writes(
    probe: Path, value: dict[str, Any], ascii_only: bool, indent: int | None
) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only, indent=indent)
    assert probe_run(probe, text)[0] == dump(json.loads(text))
    text = json.dumps({"skip": value, "keep": value}, ensure_ascii=ascii_only, indent=indent)
    assert probe_run(probe, text)[0] == '{"skip":~,"keep":' + dump(value) + "}"


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", "unexpected end of JSON at byte 0"),
        ("{", "unexpected end of JSON at byte 1"),
        ('{"a" 1}', "expected ':' at byte 5"),
        ('{"a":1,}', "expected a member name at byte 7"),
        ('{"a":[1 2]}', "expected ',' or ']' at byte 8"),
        ('{"a":01}', "expected ',' or '}' at byte 6"),
        ('{"a":1} 2', "unexpected data after the JSON value at byte 8"),
        ('{"a":1.}', "invalid number at byte 7"),
        ('{"a":-}', "invalid number at byte 6"),
        ('{"a":tru}', "expected a JSON value at byte 5"),
        ('{"a":"\x01"}', "control character in string at byte 6"),
        ('{"a":"\\u12"}', "invalid \\u escape at byte 6"),
        ('{"a":"\\udc00"}', "invalid \\u escape (unpaired surrogate) at byte 6"),
        ('{"a":"\\ud800x"}', "invalid \\u escape (unpaired surrogate) at byte 6"),
        ("[" * 70 + "]" * 70, "nesting too deep at byte 64"),
        ('{"skip": [1, {"a": tru}]}', "expected a JSON value at byte 19"),
    ],
)
def test_json_reader_errors(probe: Path, text: str, error: str) -> None:
    with pytest.raises(GuestError) as info:
        probe_run(probe, text)
    where, _, what = error.rpartition(" at byte ")
    assert str(info.value).endswith(f"config: invalid JSON at byte {what}: {where}")


def test_json_numbers_round_like_python(probe: Path) -> None:
    numbers = [
        "0",
        "-0.0",
        "1e400",
        "-1e400",
        "1e-400",
        "123456789012345678901234567890",
        "0.1",
        "2.2250738585072014e-308",
        "9007199254740993",
        "1.7976931348623157e308",
        "4.9e-324",
    ]
    text = "{" + ",".join(f'"{i}":{n}' for i, n in enumerate(numbers)) + "}"
    assert probe_run(probe, text)[0] == dump(json.loads(text))


@settings(max_examples=150, deadline=None)
@given(
    text=st.lists(st.sampled_from(["a", "bc", "\n", "\r", "\r\n", "é", " "]), max_size=30).map("".join),
    bom=st.booleans(),
    chunk=st.integers(1, 10),
)
def test_line_framer_splits_like_jsonl_readers(probe: Path, text: str, bom: bool, chunk: int) -> None:
    data = (b"\xef\xbb\xbf" if bom else b"") + text.encode()
    pieces = text.split("\n")
    if pieces[-1] == "":
        pieces.pop()
    want = [f"{n}:{p.removesuffix(chr(13))}" for n, p in enumerate(pieces, 1)]
    assert probe_run(probe, "{}", data, chunk)[1] == want


def test_line_framer_limits_line_length(probe: Path) -> None:
    assert probe_run(probe, '{"max_line_bytes": 3}', b"abc\r\nde\nxyz", 1)[1] == ["1:abc", "2:de", "3:xyz"]
    for size in (None, 1, 2):
        with pytest.raises(GuestError) as info:
            probe_run(probe, '{"max_line_bytes": 3}', b"abc\nabcd\n", size)
        assert str(info.value).endswith(
            "line 2: line exceeds max_line_bytes (3); raise max_line_bytes in the stage config"
        )


def test_csv_map_is_usable_by_name() -> None:
    assert run_guest("csv-map", {}, b"a\n1\n").outputs == {0: b"a\n1\n"}
