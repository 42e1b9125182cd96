"""How the S3 sink talks to S3: retries under the stores' policy, lost answers, which thread
waits at a checkpoint, and how many copies a part costs.

Faults are real: the moto server's middleware answers 503 SlowDown before moto sees a request
(tests/conftest.py), and a botocore event hook on the sink's own client drops an answer after
moto acted on the request, as a connection closed on the way back would.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest
from conftest import Bucket
from fsspec.asyn import sync
from support import DictStash, Interrupt, interrupt_at, persist, write_job

from pipeline.connectors.s3_sink import S3Sink
from pipeline.errors import SinkError
from pipeline.runner import run_session
from pipeline.snapshot import PageWriter
from pipeline.spec import load_job
from pipeline.stores._retry import RETRIES_ENV
from pipeline.stores.directory import DirectoryStore

pytestmark = pytest.mark.s3

MiB = 1024 * 1024


def lose_answers(sink: S3Sink, operation: str, count: int, then: Any = None) -> list[str]:
    """Drop the next ``count`` answers to ``operation`` after S3 acted on the request (``then()``
    runs after each); returns the operations lost, as they happen."""
    client = sync(sink._fs.loop, sink._fs.set_session)
    lost: list[str] = []

    def drop(**_: Any) -> None:
        if len(lost) < count:
            lost.append(operation)
            if then is not None:
                then()
            raise botocore.exceptions.ConnectionClosedError(endpoint_url="http://127.0.0.1 (answer lost by the test)")

    client.meta.events.register(f"after-call.s3.{operation}", drop)
    return lost


def test_s3_sink_retries_throttled_parts_within_the_store_retry_policy(
    bucket: Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(RETRIES_ENV, "3")
    middleware = bucket.server.middleware
    sink = S3Sink(bucket.spec("throttled.bin", part_size=5 * MiB), "s", stash=DictStash())
    try:
        sink.start()
        middleware.fail_next(2)  # SlowDown twice: the third try lands
        sink.write(os.urandom(5 * MiB))
        assert len(persist(sink)["parts"]) == 1
        before = middleware.requests
        middleware.fail_next(3)  # three in a row spend the policy's three tries, and no more
        sink.write(os.urandom(5 * MiB))
        with pytest.raises(SinkError) as caught:
            persist(sink)
        # botocore's and s3fs's retries multiplied the tries (a throttled part went out 4 times
        # and landed), outside PIPELINE_STORE_RETRIES.
        assert middleware.requests - before == 3
    finally:
        middleware.fail_next(0)
        sink.close()
    url = bucket.url("throttled.bin")
    assert caught.value.message.startswith(f"sink {url}: cannot upload part 2 after 3 tries in ")
    assert caught.value.message.endswith("SlowDown: injected by the test server")
    assert caught.value.hint is not None and RETRIES_ENV in caught.value.hint


@pytest.mark.parametrize("retry_answer", ["done", "NoSuchUpload"])
def test_s3_commit_whose_answer_was_lost_finds_the_upload_completed(retry_answer: str, bucket: Bucket) -> None:
    # Completing again answers "done" on moto (and, for a while, on AWS) or NoSuchUpload, as
    # AWS answers once the upload is forgotten: the middleware plays that answer.
    data = os.urandom(6 * MiB + 5)
    sink = S3Sink(bucket.spec("lost.bin"), "s", stash=DictStash())
    sink.start()
    sink.write(data)
    persist(sink)
    then = (lambda: bucket.server.middleware.fail_next(1, 404, "NoSuchUpload")) if retry_answer != "done" else None
    lost = lose_answers(sink, "CompleteMultipartUpload", 1, then=then)
    sink.commit()  # retried; a gone upload is published when the object is the one the parts make
    sink.close()
    assert lost == ["CompleteMultipartUpload"]
    assert bucket.read("lost.bin") == data
    assert bucket.uploads() == []


def test_s3_commit_whose_answer_was_lost_refuses_an_object_it_did_not_make(bucket: Bucket) -> None:
    sink = S3Sink(bucket.spec("raced.bin"), "s", stash=DictStash())
    sink.start()
    sink.write(os.urandom(6 * MiB))
    persist(sink)

    def replaced() -> None:  # completed, then overwritten before the retry: a gone upload proves nothing
        bucket.put("raced.bin", b"someone else's")
        bucket.server.middleware.fail_next(1, 404, "NoSuchUpload")

    lose_answers(sink, "CompleteMultipartUpload", 1, then=replaced)
    with pytest.raises(SinkError, match="the upload disappeared before it completed"):
        sink.commit()
    sink.close()
    assert bucket.read("raced.bin") == b"someone else's"


# -- a checkpoint's two halves: flush() on the run's thread, sync() on the checkpoint thread ----


class ThreadStash(DictStash):
    """A stash that notes the thread of every put."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[str] = []

    def put(self, data: bytes) -> tuple[str, int]:
        self.threads.append(threading.current_thread().name)
        return super().put(data)


class HeldParts:
    """A wrapper around the sink's client: notes the thread of every S3 request, and holds part
    uploads until :meth:`release` (a part that cannot go up yet, as on a slow link), noting their bodies."""

    def __init__(self, sink: S3Sink) -> None:
        self.calls: list[tuple[str, str]] = []
        self.bodies: list[Any] = []
        self.released = threading.Event()
        self._call_s3 = sink._fs.call_s3
        sink._fs.call_s3 = self.call_s3

    def call_s3(self, method: str, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((threading.current_thread().name, method))
        if method == "upload_part":
            self.bodies.append(kwargs["Body"])
            assert self.released.wait(30), "the test never released the part"
        return self._call_s3(method, *args, **kwargs)

    def release(self) -> None:
        self.released.set()

    def on(self, thread: str) -> list[str]:
        return [method for name, method in self.calls if name == thread]


def on_thread(name: str, fn: Any) -> Any:
    """Run ``fn()`` on a thread called ``name``; its result (or its error, raised here)."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(fn())
        except BaseException as exc:  # handed to the caller
            outcome.append(exc)

    thread = threading.Thread(target=run, name=name)
    thread.start()
    thread.join(60)
    assert outcome, f"{name} did not finish"
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def test_s3_flush_waits_for_nothing_and_sync_makes_the_checkpoint_durable(bucket: Bucket) -> None:
    stash = ThreadStash()
    sink = S3Sink(bucket.spec("split.bin"), "s", stash=stash)  # 8 MiB parts
    run = threading.current_thread().name
    try:
        sink.start()
        s3 = HeldParts(sink)
        data = os.urandom(13 * MiB)
        sink.write(data[: 9 * MiB])  # 8 MiB are part 1, handed to the uploader, which S3 holds
        sink.flush()  # the 1 MiB after it: a piece of the tail, sealed here; flush must not wait
        assert s3.on(run) == [] and stash.threads == []
        sink.write(data[9 * MiB : 10 * MiB])  # the run goes on while the part is held
        s3.release()
        first = on_thread("checkpoint", sink.sync)
        assert [p["n"] for p in first["parts"]] == [1] and first["length"] == 9 * MiB
        assert [stash.blobs[blob] for blob in first["tail"]] == [data[8 * MiB : 9 * MiB]]
        sink.flush()  # the next 1 MiB: a second piece, the only bytes the next sync stashes
        sink.write(data[10 * MiB :])
        second = on_thread("checkpoint", sink.sync)
        assert second["length"] == 10 * MiB and [p["n"] for p in second["parts"]] == [1]
        assert second["tail"][0] == first["tail"][0]
        assert [stash.blobs[blob] for blob in second["tail"]] == [data[8 * MiB : 9 * MiB], data[9 * MiB : 10 * MiB]]
        assert second["blobs"] == {blob: MiB for blob in second["tail"]}
        assert stash.threads == ["checkpoint", "checkpoint"]  # one put per checkpoint, each on its thread
        assert s3.on(run) == [] and s3.on("checkpoint") == []  # parts go up on the uploader thread
        sink.commit()
    finally:
        sink.close()
    assert bucket.read("split.bin") == data
    assert bucket.uploads() == []


def test_s3_part_goes_up_from_the_bytes_that_gathered_it(bucket: Bucket) -> None:
    # One copy, into the sink's buffer, is the only one: the part sent is that buffer's bytes
    # (a bytes(buffer) copy held a second part of memory for every part).
    sink = S3Sink(bucket.spec("copies.bin"), "s", stash=DictStash())
    chunk = memoryview(os.urandom(64 * 1024))  # as a guest emits: a view of its memory
    try:
        sink.start()
        s3 = HeldParts(sink)
        gathering = sink._filling
        for _ in range(8 * MiB // len(chunk)):
            sink.write(chunk)  # the 128th fills the 8 MiB part: it goes to the uploader
        s3.release()
        assert [p["size"] for p in persist(sink)["parts"]] == [8 * MiB]
    finally:
        sink.close()
    assert [type(body) for body in s3.bodies] == [bytes]
    assert s3.bodies[0] is gathering.getvalue()  # BytesIO hands its own buffer over: not a copy


def test_s3_resume_reads_the_stashed_tail_once(
    orders: Path, bucket: Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = write_job(tmp_path, source=str(orders), sink=bucket.output("m.csv"), rejects=bucket.output("r.csv"))
    with pytest.raises(Interrupt):
        run_session(load_job(job), on_progress=interrupt_at(3 * MiB))
    reads: list[str] = []
    head = DirectoryStore.head

    def counted(self: DirectoryStore, key: str) -> tuple[bytes, str]:
        reads.append(key)
        return head(self, key)

    monkeypatch.setattr(DirectoryStore, "head", counted)
    assert run_session(load_job(job)).resumed_from
    tails = [key for key in reads if "/pages/" in key and reads.count(key) > 1]
    assert tails == [], f"read more than once on resume: {sorted(set(tails))}"  # the check, then recover()


def test_parquet_output_on_s3_closes_every_client_it_opens(
    orders: Path, bucket: Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import s3fs

    opened: list[s3fs.S3FileSystem] = []
    init = s3fs.S3FileSystem.__init__

    def noted(self: s3fs.S3FileSystem, *args: Any, **kwargs: Any) -> None:
        opened.append(self)
        init(self, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "__init__", noted)
    job = write_job(
        tmp_path, source=str(orders), sink=bucket.output("m.parquet", format="parquet"), rejects="{url: r.csv}"
    )
    run_session(load_job(job))
    assert bucket.read("m.parquet").startswith(b"PAR1")
    # fsspec's cached instance, which the Parquet sink used to convert, kept its connections.
    assert opened and [fs for fs in opened if fs._s3 is not None] == []


def test_s3_output_in_a_run_stashes_tails_on_the_checkpoint_thread(
    orders: Path, golden: dict[str, bytes], bucket: Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[str] = []
    put = PageWriter.put

    def noted(self: PageWriter, data: bytes) -> tuple[str, int]:
        threads.append(threading.current_thread().name)
        return put(self, data)

    monkeypatch.setattr(PageWriter, "put", noted)
    job = write_job(tmp_path, source=str(orders), sink=bucket.output("m.csv"), rejects="{url: out/r.csv}")
    run_session(load_job(job))
    assert bucket.read("m.csv") == golden["mapped.csv"]
    # Every running checkpoint's tail goes to the store from the checkpoint thread; the run's own
    # thread stashes only at the synchronous "finished" checkpoint.
    assert threads.count(threading.current_thread().name) <= 1
    assert sum(name.startswith("pipeline-checkpoint") for name in threads) >= 5, threads
