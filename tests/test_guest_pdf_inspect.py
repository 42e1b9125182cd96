"""The pdf-inspect guest: the PDF passes through unchanged; the summary output describes it.

PDFs are made by a small writer here (valid xref offsets, known page counts); every case runs at
several chunk sizes, so tokens split across chunks are seen.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pipeline.errors import GuestError
from pipeline.runner import run_session
from pipeline.spec import load_job
from pipeline.testing import run_guest

CHUNK_SIZES = [None, 1, 2, 7, 64, 1000]


def make_pdf(
    pages: int,
    *,
    version: str = "1.7",
    page_dict: bytes = b"/Type /Page",
    linearized: bool = False,
    objstm: bool = False,
    junk_before: bytes = b"",
    padding: int = 0,
) -> bytes:
    """A minimal PDF with `pages` page objects (each written with `page_dict`) and a valid xref."""
    objects = []
    if linearized:
        objects.append(b"<< /Linearized 1 /L 1000 /N %d >>" % pages)
    kids = b" ".join(b"%d 0 R" % (len(objects) + 3 + i) for i in range(pages))
    objects.append(b"<< /Type /Catalog /Pages %d 0 R >>" % (len(objects) + 2))
    objects.append(b"<< /Type /Pages /Kids [" + kids + b"] /Count %d >>" % pages)
    objects += [b"<< " + page_dict + b" /MediaBox [0 0 612 792] /Resources << >> >>"] * pages
    if objstm:
        objects.append(b"<< /Type /ObjStm /N 0 /First 0 /Length 0 >>\nstream\n\nendstream")
    objects.append(b"<< /Length %d >>\nstream\n" % padding + b"%" * padding + b"\nendstream")
    out = bytearray(junk_before + b"%PDF-" + version.encode() + b"\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def inspect(data: bytes) -> dict[str, Any]:
    """The summary, after checking at every chunk size that the PDF passed through unchanged."""
    summaries = set()
    for size in CHUNK_SIZES:
        run = run_guest("pdf-inspect", {}, data, chunk_size=size)
        assert run.outputs.get(0, b"") == data, f"chunk size {size}"
        assert set(run.outputs) == {0, 2}
        summaries.add(run.outputs[2])
    assert len(summaries) == 1
    text = summaries.pop()
    assert text.endswith(b"\n") and text.count(b"\n") == 1
    return json.loads(text)


def error(data: bytes, chunk_size: int | None = None, config: dict[str, Any] | None = None) -> str:
    with pytest.raises(GuestError) as info:
        run_guest("pdf-inspect", config or {}, data, chunk_size=chunk_size)
    return str(info.value).split(": ", 1)[1]


@pytest.mark.parametrize("pages", [1, 2, 17])
def test_summary_of_a_plain_pdf(pages: int) -> None:
    data = make_pdf(pages)
    assert inspect(data) == {
        "bytes": len(data),
        "version": "1.7",
        "pages": pages,
        "eof": True,
        "linearized": False,
        "object_streams": False,
    }


@pytest.mark.parametrize(
    "page_dict",
    [b"/Type/Page", b"/Type\n/Page", b"/Type  %comment /Pages\r\n/Page", b"/Type\r\n\t /Page"],
    ids=["no space", "newline", "comment", "crlf tab"],
)
def test_page_objects_are_found_through_whitespace_and_comments(page_dict: bytes) -> None:
    assert inspect(make_pdf(3, page_dict=page_dict))["pages"] == 3


def test_pages_and_near_names_are_not_counted() -> None:
    data = make_pdf(2).replace(b"/Resources << >>", b"/Resources << /Type /PageLabel /Typ /Page >>")
    assert inspect(data)["pages"] == 2  # /Pages, /PageLabel and /Typ /Page do not count


def test_version_linearized_and_a_header_after_junk() -> None:
    summary = inspect(make_pdf(4, version="1.4", linearized=True, junk_before=b"x" * 1000))
    assert (summary["version"], summary["linearized"], summary["pages"]) == ("1.4", True, 4)


def test_object_streams_make_the_page_count_null_with_a_note() -> None:
    summary = inspect(make_pdf(3, objstm=True))
    assert summary["pages"] is None
    assert summary["object_streams"] is True
    assert "object streams" in summary["pages_note"]


def test_no_page_objects_gives_null_with_a_note() -> None:
    summary = inspect(make_pdf(0))
    assert summary["pages"] is None
    assert summary["pages_note"] == "no page objects (/Type /Page) found"


def test_a_large_pdf_passes_through_in_big_chunks() -> None:
    data = make_pdf(5, padding=3_000_000)
    run = run_guest("pdf-inspect", {}, data)
    assert run.outputs[0] == data
    assert json.loads(run.outputs[2])["pages"] == 5


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "byte 0: not a PDF (no %PDF-x.y header in the first 1024 bytes)"),
        (b"hello,world\n" * 200, "byte 0: not a PDF (no %PDF-x.y header in the first 1024 bytes)"),
        (b"x" * 1024 + make_pdf(1), "byte 0: not a PDF (no %PDF-x.y header in the first 1024 bytes)"),
        (b"%PDF-x.y\n%%EOF\n", "byte 0: not a PDF (no %PDF-x.y header in the first 1024 bytes)"),
    ],
    ids=["empty", "csv", "header too late", "bad version"],
)
def test_not_a_pdf(data: bytes, message: str) -> None:
    for size in (None, 1, 100):
        assert error(data, size) == message


def test_truncated_pdf_names_its_size() -> None:
    data = make_pdf(2, padding=5000)
    cut = data[: len(data) - 1200]
    assert error(cut) == f"byte {len(cut)}: truncated PDF (no %%EOF in the last 1024 bytes)"
    assert error(data + b"\n" * 1100, chunk_size=3) == (
        f"byte {len(data) + 1100}: truncated PDF (no %%EOF in the last 1024 bytes)"
    )


def test_config_is_refused() -> None:
    assert error(make_pdf(1), config={"x": 1}) == "config: unknown key 'x' (pdf-inspect takes no config)"


def test_summary_is_routed_as_a_named_output(tmp_path: Path) -> None:
    data = make_pdf(6)
    (tmp_path / "in.pdf").write_bytes(data)
    (tmp_path / "job.yaml").write_text(
        "name: pdf\nsource: {url: in.pdf}\nstages:\n  - guest: builtin:pdf-inspect\n"
        "sink: {url: out/copy.pdf}\noutputs:\n  summary: {url: out/summary.json}\n"
    )
    run_session(load_job(tmp_path / "job.yaml"))
    assert (tmp_path / "out" / "copy.pdf").read_bytes() == data
    assert json.loads((tmp_path / "out" / "summary.json").read_bytes())["pages"] == 6
