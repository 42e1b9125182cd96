"""The gunzip guest: byte-exact with Python's gzip/zlib at any chunking, header flags, members, errors.

Also end to end: a ``.csv.gz`` through ``stages: [gunzip, csv-map]``, SIGKILLed in a subprocess
after a checkpoint and rerun, publishes exactly what the same job on the plain CSV publishes.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import random
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import Interrupt, interrupt_at

from pipeline._faults import ENV as KILL_ENV
from pipeline.errors import GuestError
from pipeline.runner import run_session
from pipeline.spec import load_job
from pipeline.testing import run_guest
from pipeline.testing.data import write_orders_csv

RNG = random.Random(5)
RANDOM = RNG.randbytes(200_000)
TEXT = b"".join(b"%d,order %d,%0.2f,city %d\n" % (i, i % 977, RNG.random() * 1000, i % 13) for i in range(20_000))
# Repeats at distances up to and beyond the 32 KiB window.
FAR = b"".join(RNG.randbytes(40_000) * 2 for _ in range(3))


def gunzip(data: bytes, chunk_size: int | None = None) -> bytes:
    return run_guest("gunzip", {}, data, chunk_size=chunk_size).outputs.get(0, b"")


def error(data: bytes, chunk_size: int | None = None, config: dict[str, object] | None = None) -> str:
    """The message gunzip fails with (after the host's location prefix)."""
    with pytest.raises(GuestError) as info:
        run_guest("gunzip", config or {}, data, chunk_size=chunk_size)
    return str(info.value).split(": ", 1)[1]


def deflate(raw: bytes, level: int = 6, strategy: int = zlib.Z_DEFAULT_STRATEGY) -> bytes:
    """A gzip member made by zlib itself (wbits 31), with any strategy."""
    c = zlib.compressobj(level, zlib.DEFLATED, 31, 9, strategy)
    return c.compress(raw) + c.flush()


def member(raw: bytes, *, flags: int = 0, extra: bytes = b"", name: bytes = b"", comment: bytes = b"") -> bytes:
    """A gzip member with a hand-made header (RFC 1952) around raw deflate data."""
    header = b"\x1f\x8b\x08" + bytes([flags]) + b"\x00\x00\x00\x00\x00\xff"
    if flags & 4:
        header += struct.pack("<H", len(extra)) + extra
    if flags & 8:
        header += name + b"\x00"
    if flags & 16:
        header += comment + b"\x00"
    if flags & 2:
        header += struct.pack("<H", zlib.crc32(header) & 0xFFFF)
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    body = c.compress(raw) + c.flush()
    return header + body + struct.pack("<II", zlib.crc32(raw), len(raw) & 0xFFFFFFFF)


# -------------------------------------------------------------------------------------------------
# Byte-exact decompression
# -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("level", range(10))
@pytest.mark.parametrize("raw", [RANDOM, TEXT, FAR, b"", b"x"], ids=["random", "text", "far", "empty", "one"])
def test_every_level_matches_python(level: int, raw: bytes) -> None:
    data = gzip.compress(raw, level)
    assert gunzip(data) == raw
    assert gunzip(data, chunk_size=4093) == raw


@pytest.mark.parametrize(
    "strategy",
    [zlib.Z_FILTERED, zlib.Z_HUFFMAN_ONLY, zlib.Z_RLE, zlib.Z_FIXED],
    ids=["filtered", "huffman", "rle", "fixed"],
)
def test_zlib_strategies_cover_fixed_and_dynamic_blocks(strategy: int) -> None:
    for raw in (TEXT, FAR[:50_000]):
        assert gunzip(deflate(raw, 9, strategy)) == raw


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 5, 8, 9, 64])
def test_tiny_chunks(chunk_size: int) -> None:
    raw = TEXT[:6_000] + RANDOM[:3_000] + TEXT[:4_000]
    for level in (0, 1, 9):
        assert gunzip(gzip.compress(raw, level), chunk_size) == raw


def test_output_larger_than_the_input_area_and_output_buffer() -> None:
    raw = TEXT * 3 + bytes(2_000_000)  # ~3.4 MB from a ~0.3 MB member
    assert gunzip(gzip.compress(raw, 6), chunk_size=100_000) == raw


def test_concatenated_members_empty_members_and_zero_padding() -> None:
    data = gzip.compress(b"") + gzip.compress(TEXT[:1000]) + gzip.compress(b"") + gzip.compress(RANDOM[:5000], 0)
    want = TEXT[:1000] + RANDOM[:5000]
    for size in (None, 1, 17):
        assert gunzip(data, size) == want
        assert gunzip(data + b"\x00" * 7, size) == want


@pytest.mark.parametrize(
    "fields",
    [
        {"flags": 8, "name": b"orders.csv"},
        {"flags": 16, "comment": b"a comment \xe9"},
        {"flags": 4, "extra": b"AB\x04\x00wxyz" * 50},
        {"flags": 2},
        {"flags": 2 | 4 | 8 | 16, "extra": b"", "name": b"n", "comment": b""},
        {"flags": 1 | 2 | 4 | 8 | 16, "extra": b"xy", "name": b"name.txt", "comment": b"c"},  # FTEXT too
    ],
)
def test_header_fields(fields: dict[str, object]) -> None:
    data = member(TEXT[:3000], **fields) + member(b"second", **fields)  # type: ignore[arg-type]
    for size in (None, 1, 3):
        assert gunzip(data, size) == TEXT[:3000] + b"second"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    raw=st.one_of(st.binary(max_size=3000), st.text(alphabet='ab,\n"xyz', max_size=5000).map(str.encode)),
    level=st.integers(0, 9),
    members=st.integers(1, 3),
    chunk_size=st.integers(1, 700),
)
def test_any_chunking_matches_python(raw: bytes, level: int, members: int, chunk_size: int) -> None:
    assert gunzip(gzip.compress(raw, level) * members, chunk_size) == raw * members


# -------------------------------------------------------------------------------------------------
# Errors
# -------------------------------------------------------------------------------------------------


def _bits(*fields: tuple[int, int]) -> bytes:
    """Packs (value, width) fields LSB first, as deflate does (Huffman codes given pre-reversed)."""
    acc, n = 0, 0
    for value, width in fields:
        acc |= value << n
        n += width
    return acc.to_bytes((n + 7) // 8, "little")


HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
GOOD = gzip.compress(TEXT[:5000])


def _trailer_error(crc: int, size: int) -> bytes:
    return GOOD[:-8] + struct.pack("<II", crc, size)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"PK\x03\x04 not gzip", "compressed byte 0: not gzip data (bad magic bytes, expected 1f 8b)"),
        (b"\x1f\x8c", "compressed byte 1: not gzip data (bad magic bytes, expected 1f 8b)"),
        (b"\x1f\x8b\x07" + bytes(20), "compressed byte 2: unknown compression method (not deflate)"),
        (b"\x1f\x8b\x08\x20" + bytes(20), "compressed byte 3: reserved gzip header flags set"),
        (HEADER + b"\x07", "compressed byte 10: invalid block type 3"),
        (HEADER + b"\x01\x05\x00\x00\x00hello", "compressed byte 11: invalid stored block lengths"),
        # Fixed block whose first code is a match (length 3: 7-bit code 0000001, distance 1).
        (HEADER + _bits((1, 1), (1, 2), (0b1000000, 7), (0, 5)), "compressed byte 10: invalid distance too far back"),
        # Dynamic block with 30 literal/length codes beyond the 286 allowed.
        (
            HEADER + _bits((1, 1), (2, 2), (31, 5), (0, 5), (0, 4)),
            "compressed byte 10: too many length or distance codes",
        ),
        (
            _trailer_error(zlib.crc32(TEXT[:5000]) ^ 1, 5000),
            f"compressed byte {len(GOOD) - 8}: CRC32 mismatch (stored 0x{zlib.crc32(TEXT[:5000]) ^ 1:08x}, "
            f"computed 0x{zlib.crc32(TEXT[:5000]):08x})",
        ),
        (
            _trailer_error(zlib.crc32(TEXT[:5000]), 4999),
            f"compressed byte {len(GOOD) - 8}: length mismatch (stored 4999, decompressed 5000)",
        ),
        (
            member(b"abc", flags=2)[:10] + b"\x00\x00" + member(b"abc")[10:],
            "compressed byte 10: header CRC16 mismatch",
        ),
        (GOOD + b"garbage", f"compressed byte {len(GOOD)}: not gzip data (bad magic bytes, expected 1f 8b)"),
        (b"\x1f\x8b\x08", "compressed byte 3: truncated gzip stream (input ends in the header of the first member)"),
        (
            GOOD[:-3],
            f"compressed byte {len(GOOD) - 3}: truncated gzip stream (input ends in the trailer of the first member)",
        ),
        (
            GOOD[:200],
            "compressed byte 200: truncated gzip stream (input ends in the deflate data of the first member)",
        ),
        (
            GOOD + GOOD[:5],
            f"compressed byte {len(GOOD) + 5}: truncated gzip stream (input ends in the header of member 2)",
        ),
    ],
    ids=[
        "magic",
        "magic2",
        "method",
        "flags",
        "block type",
        "stored lengths",
        "distance",
        "code counts",
        "crc",
        "isize",
        "header crc",
        "trailing garbage",
        "cut header",
        "cut trailer",
        "cut data",
        "cut second member",
    ],
)
def test_corrupt_input_fails_naming_the_compressed_offset(data: bytes, message: str) -> None:
    assert error(data) == message
    assert error(data, chunk_size=1) == message


def test_random_corruption_never_crashes_and_names_an_offset() -> None:
    rng = random.Random(3)
    data = gzip.compress(TEXT[:20_000])
    for _ in range(60):
        bad = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            bad[rng.randrange(10, len(bad))] ^= 1 << rng.randrange(8)
        try:
            out = gunzip(bytes(bad), chunk_size=rng.choice([None, 1000]))
        except GuestError as exc:
            assert str(exc).split(": ", 1)[1].startswith("compressed byte ")
        else:
            assert out == TEXT[:20_000]  # only if the flips cancel out (or hit unused bits)


def test_config_is_refused() -> None:
    assert error(GOOD, config={"level": 9}) == "config: unknown key 'level' (gunzip takes no config)"


# -------------------------------------------------------------------------------------------------
# Chained before csv-map, interrupted and resumed
# -------------------------------------------------------------------------------------------------

CHAIN_JOB = """\
name: orders-gz
source: {{url: {source}}}
stages:
{gunzip}  - guest: builtin:csv-map
    config:
      select: [id, name, amount, city]
      upper: [name]
      filter: {{column: amount, op: ">", value: 100}}
sink: {{url: out/mapped.csv}}
rejects: {{url: out/rejects.csv}}
checkpoint: {{every: {every}}}
"""


def _write_job(directory: Path, source: str, every: str) -> Path:
    gunzip_stage = "  - guest: builtin:gunzip\n" if source.endswith(".gz") else ""
    (directory / "job.yaml").write_text(CHAIN_JOB.format(source=source, gunzip=gunzip_stage, every=every))
    return directory / "job.yaml"


def _digests(directory: Path) -> list[str]:
    return [hashlib.sha256((directory / "out" / n).read_bytes()).hexdigest() for n in ("mapped.csv", "rejects.csv")]


@pytest.fixture(scope="module")
def orders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A ~20 MB orders CSV and its gzip, and the outputs of the plain job on it."""
    base = tmp_path_factory.mktemp("orders")
    csv_path = base / "orders.csv"
    write_orders_csv(csv_path, 20_000_000, seed=3)
    with open(csv_path, "rb") as src, gzip.open(base / "orders.csv.gz", "wb", compresslevel=6) as dst:
        dst.write(src.read())
    return csv_path, base / "orders.csv.gz"


@pytest.fixture(scope="module")
def plain_digests(orders: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    directory = tmp_path_factory.mktemp("plain")
    os.link(orders[0], directory / "orders.csv")
    run_session(load_job(_write_job(directory, "orders.csv", "8MiB")))
    return _digests(directory)


def test_chain_interrupted_in_process_resumes_mid_file(
    orders: tuple[Path, Path], plain_digests: list[str], tmp_path: Path
) -> None:
    os.link(orders[1], tmp_path / "orders.csv.gz")
    job = load_job(_write_job(tmp_path, "orders.csv.gz", "512KiB"))
    size = (tmp_path / "orders.csv.gz").stat().st_size
    with pytest.raises(Interrupt):
        run_session(job, on_progress=interrupt_at(size // 2))
    assert run_session(job).resumed_from
    assert _digests(tmp_path) == plain_digests


def test_chain_sigkilled_after_a_checkpoint_resumes_to_the_same_output(
    orders: tuple[Path, Path], plain_digests: list[str], tmp_path: Path
) -> None:
    os.link(orders[1], tmp_path / "orders.csv.gz")
    job = _write_job(tmp_path, "orders.csv.gz", "1MiB")
    command = [sys.executable, "-m", "pipeline", "run", str(job)]
    killed = subprocess.run(
        command, env={**os.environ, KILL_ENV: "manifest-committed:3"}, capture_output=True, timeout=300, check=False
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()
    assert not (tmp_path / "out" / "mapped.csv").exists()
    rerun = subprocess.run(command, capture_output=True, timeout=300, check=False)
    assert rerun.returncode == 0, rerun.stderr.decode()
    assert "resumed at byte" in rerun.stdout.decode() + rerun.stderr.decode()
    assert _digests(tmp_path) == plain_digests
