"""The S3 sink under checkpoints that come far more often than parts fill.

Parts are cut at the part size only, never by a checkpoint; what a checkpoint finds buffered is
a tail of pieces, each checkpoint stashing only the bytes written since the one before, each
piece kept in the store while a kept manifest names it; a run killed between checkpoints, or
left by the version that stashed the whole tail as one blob, resumes to the object an
uninterrupted run publishes.

The echo guest on random input: each 256 KiB chunk is one checkpoint (``every: 256KiB``) and
256 KiB of output, so the tail grows by one piece a checkpoint and a 6 MiB part fills every 24.
S3 is the moto server (tests/conftest.py); crashes are SIGKILLs at a commit step
(pipeline/_faults.py) or an in-process interrupt between chunks.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import S3_TEST_BUCKET, Bucket, S3Server
from support import Interrupt, interrupt_at, run_cli

from pipeline import _faults
from pipeline._faults import ENV as KILL_ENV
from pipeline.connectors.s3_sink import MAX_TAIL_PIECES
from pipeline.runner import run_session
from pipeline.session import SessionStore
from pipeline.snapshot import PageWriter, decode_blob
from pipeline.spec import load_job
from pipeline.stores import open_store
from pipeline.testing import wat

pytestmark = pytest.mark.s3

KiB, MiB = 1024, 1024 * 1024
CHUNK = 256 * KiB  # the echo guest's input area: one chunk, one checkpoint
PART = 6 * MiB
INPUT = random.Random(7).randbytes(13 * MiB)
OUTPUT = INPUT + sum(INPUT).to_bytes(8, "little")  # the echo guest adds its byte sum at the end

JOB = """\
name: echo
source: {{url: in.bin}}
stages:
  - guest: echo.wasm
sink: {sink}
store: store
checkpoint: {{every: 256KiB}}
"""


def echo_job(directory: Path, bucket: Bucket, key: str) -> Path:
    """The echo job on :data:`INPUT`, writing ``key`` in ``PART``-sized parts; returns its path."""
    directory.mkdir(parents=True, exist_ok=True)
    wat.write(wat.ECHO_SUM, directory / "echo.wasm")
    (directory / "in.bin").write_bytes(INPUT)
    (directory / "job.yaml").write_text(JOB.format(sink=bucket.output(key, part_size="6MiB")))
    return directory / "job.yaml"


def multipart_etag(data: bytes, part_size: int) -> str:
    """The ETag S3 gives ``data`` uploaded in parts of exactly ``part_size`` (the last one shorter)."""
    parts = [data[start : start + part_size] for start in range(0, len(data), part_size)]
    digest = hashlib.md5(b"".join(hashlib.md5(part).digest() for part in parts)).hexdigest()
    return f'"{digest}-{len(parts)}"'


def published(bucket: Bucket, key: str) -> tuple[bytes, str, int]:
    """The object at ``key``: its bytes, its ETag and the number of parts it was completed from."""

    def head(**part: int) -> dict[str, Any]:
        return bucket.client.head_object(Bucket=S3_TEST_BUCKET, Key=f"{bucket.prefix}/{key}", **part)

    return bucket.read(key), head()["ETag"], head(PartNumber=1)["PartsCount"]


@pytest.fixture(scope="module")
def uninterrupted(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, str, int]:
    """What an uninterrupted run publishes: bytes, ETag, parts."""
    bucket = Bucket(s3_server)
    run_session(load_job(echo_job(tmp_path_factory.mktemp("uninterrupted"), bucket, "echo.bin")))
    return published(bucket, "echo.bin")


def test_uninterrupted_run_cuts_parts_at_the_part_size_and_stashes_each_checkpoints_bytes_once(
    bucket: Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stashed: list[int] = []
    put = PageWriter.put

    def counted(self: PageWriter, data: bytes) -> tuple[str, int]:
        stashed.append(len(data))
        return put(self, data)

    monkeypatch.setattr(PageWriter, "put", counted)
    run_session(load_job(echo_job(tmp_path, bucket, "echo.bin")))
    data, etag, parts = published(bucket, "echo.bin")
    assert data == OUTPUT
    # 53 checkpoints (52 chunks, then the finished one) cut no part: three parts, 6 + 6 MiB and
    # the rest (a part cut at each checkpoint holding 5 MiB made 5 + 5 + 3 MiB).
    assert (parts, etag) == (3, multipart_etag(OUTPUT, PART))
    # Each checkpoint stashes its chunk, and nothing it stashed before: the 24th and 48th chunks
    # fill a part, so their checkpoints have no new bytes to stash; the finished checkpoint
    # stashes the 8-byte sum. (Stashing the whole tail each time stashed 117.5 MiB.)
    assert stashed == [CHUNK] * 50 + [8]


def test_a_tail_of_many_small_pieces_is_joined_into_one_and_the_object_is_unchanged(
    bucket: Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tails: list[int] = []
    commit = SessionStore.commit

    def spy(self: SessionStore, manifest: Any) -> None:
        commit(self, manifest)
        tails.append(len(manifest.sinks[0]["handle"]["tail"] or ()))

    monkeypatch.setattr(SessionStore, "commit", spy)
    job = echo_job(tmp_path, bucket, "small.bin")
    text = (
        job.read_text()
        .replace("every: 256KiB", "every: 4KiB")
        .replace("{url: in.bin}", "{url: in.bin, chunk_size: 4KiB}")
    )
    job.write_text(text)
    (tmp_path / "in.bin").write_bytes(INPUT[: 600 * 4 * KiB])  # 600 checkpoints of 4 KiB: no part fills
    run_session(load_job(job))
    assert max(tails) == MAX_TAIL_PIECES  # one piece a checkpoint, joined into one past the limit
    assert tails.count(1) >= 600 // MAX_TAIL_PIECES
    data = INPUT[: 600 * 4 * KiB]
    assert published(bucket, "small.bin")[0] == data + sum(data).to_bytes(8, "little")


def test_tail_pieces_stay_in_the_store_while_a_kept_manifest_names_them(
    bucket: Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: set[str] = set()  # every piece a kept manifest named so far
    released: set[str] = set()
    checks: list[int] = []
    reached = _faults.FaultPoints.reached

    def check(self: Any, step: str) -> None:  # on the thread that released: the store stands still
        reached(self, step)
        if step != "released":
            return
        store = open_store(str(tmp_path / "store"))
        try:
            state = SessionStore(store, "echo")
            named = set().union(*(c.manifest.sink_blobs() for c in state.candidates()))
            present = {key.removeprefix(state.pages_prefix) for key in store.list(state.pages_prefix)}
        finally:
            store.close()
        assert named <= present, "a kept manifest names a piece the store released"
        seen.update(named)
        assert not (seen - named) & present, "a piece no kept manifest names is still stored"
        released.update(seen - named)
        checks.append(len(named))

    monkeypatch.setattr(_faults.FaultPoints, "reached", check)
    run_session(load_job(echo_job(tmp_path, bucket, "echo.bin")))
    # Up to 23 pieces named at once; a part's pieces go once neither kept manifest names them.
    assert len(checks) == 54 and max(checks) == 23
    assert len(released) == len(seen) == 51 and checks[-1] == 0  # published: every piece gone
    assert published(bucket, "echo.bin")[0] == OUTPUT


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", ["sinks-persisted:30", "manifest-committed:40", "released:25", "blobs-written:53"])
def test_run_killed_between_checkpoints_publishes_what_an_uninterrupted_run_does(
    kill_at: str, uninterrupted: tuple[bytes, str, int], bucket: Bucket, tmp_path: Path
) -> None:
    # sinks-persisted:30: the 30th checkpoint stashed its piece, its manifest never committed;
    # released:25: just after the first part's pieces left the head; blobs-written:53: the
    # finished checkpoint, its 8-byte piece stashed, not committed.
    job = echo_job(tmp_path, bucket, "echo.bin")
    killed = run_cli("run", str(job), env={KILL_ENV: kill_at})
    assert killed.returncode == -9, killed.stderr
    resumed = run_cli("run", str(job))
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed at byte" in resumed.stdout
    assert published(bucket, "echo.bin") == uninterrupted
    assert bucket.uploads() == []


def test_run_interrupted_between_checkpoints_publishes_what_an_uninterrupted_run_does(
    uninterrupted: tuple[bytes, str, int], bucket: Bucket, tmp_path: Path
) -> None:
    job = echo_job(tmp_path, bucket, "echo.bin")
    with pytest.raises(Interrupt):
        run_session(load_job(job), on_progress=interrupt_at(9 * MiB + CHUNK // 2))
    assert run_session(load_job(job)).resumed_from == 9 * MiB + CHUNK  # 1 part, 13 pieces stashed
    assert published(bucket, "echo.bin") == uninterrupted


@pytest.fixture
def older_version_head(tmp_path: Path) -> Iterator[Any]:
    """Rewrites the session's head as the version before tail pieces wrote it: the main
    sink's tail one blob holding the pieces joined (``"tail": blob id``), or None."""

    def rewrite() -> dict[str, Any]:
        store = open_store(str(tmp_path / "store"))
        try:
            state = SessionStore(store, "echo")
            head = state.read_head()
            assert head is not None and head.state == "running"
            handle = head.sinks[0]["handle"]
            pieces = [decode_blob(store.get(state.page_key(blob)), blob) for blob in handle["tail"]]
            if pieces:
                blob_id, stored = PageWriter(store, state.pages_prefix).put(b"".join(pieces))
                handle |= {"tail": blob_id, "blobs": {blob_id: stored}}
            else:
                handle |= {"tail": None}
                del handle["blobs"]
            state.commit(head)
            return dict(handle)
        finally:
            store.close()

    yield rewrite


@pytest.mark.parametrize(("offset", "tail"), [(9 * MiB + CHUNK, 3 * MiB + CHUNK), (6 * MiB, 0)])
def test_handle_of_the_older_version_resumes(
    offset: int,
    tail: int,
    older_version_head: Any,
    uninterrupted: tuple[bytes, str, int],
    bucket: Bucket,
    tmp_path: Path,
) -> None:
    job = echo_job(tmp_path, bucket, "echo.bin")
    with pytest.raises(Interrupt):
        run_session(load_job(job), on_progress=interrupt_at(offset))
    handle = older_version_head()
    assert len(handle["parts"]) == 1 and handle["length"] == PART + tail
    assert isinstance(handle["tail"], str) if tail else handle["tail"] is None
    assert run_session(load_job(job)).resumed_from == offset
    assert published(bucket, "echo.bin") == uninterrupted
