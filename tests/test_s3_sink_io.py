"""How the S3 sink talks to S3: retries under the stores' policy, and lost answers.

Faults are real: the moto server's middleware answers 503 SlowDown before moto sees a request
(tests/conftest.py), and a botocore event hook on the sink's own client drops an answer after
moto acted on the request, as a connection closed on the way back would.
"""

from __future__ import annotations

import os
from typing import Any

import botocore.exceptions
import pytest
from conftest import Bucket
from fsspec.asyn import sync
from support import DictStash

from pipeline.connectors.s3_sink import S3Sink
from pipeline.errors import SinkError
from pipeline.stores._retry import RETRIES_ENV

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
        assert len(sink.persist()["parts"]) == 1
        before = middleware.requests
        middleware.fail_next(3)  # three in a row spend the policy's three tries, and no more
        sink.write(os.urandom(5 * MiB))
        with pytest.raises(SinkError) as caught:
            sink.persist()
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
    sink.persist()
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
    sink.persist()

    def replaced() -> None:  # completed, then overwritten before the retry: a gone upload proves nothing
        bucket.put("raced.bin", b"someone else's")
        bucket.server.middleware.fail_next(1, 404, "NoSuchUpload")

    lose_answers(sink, "CompleteMultipartUpload", 1, then=replaced)
    with pytest.raises(SinkError, match="the upload disappeared before it completed"):
        sink.commit()
    sink.close()
    assert bucket.read("raced.bin") == b"someone else's"
