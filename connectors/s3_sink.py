"""An S3 object written exactly once, by multipart upload (DESIGN §6; Flink's RecoverableWriter).

Guarantee: **exactly-once.** A session writes one multipart upload. Bytes are buffered in
memory and uploaded as a part whenever the buffer reaches the part size. At a checkpoint
:meth:`S3Sink.persist` uploads the buffer as a part if it is at least 5 MiB (S3's minimum for
any part but the last) and otherwise keeps that *tail* as a blob in the session's snapshot
store; the handle holds the upload id, every completed part with its ETag and size, and the
tail's blob id. Nothing is visible at the target key until :meth:`S3Sink.commit` completes the
upload with exactly the parts the run recorded, which S3 makes atomic.

After a crash :meth:`S3Sink.recover` checks the upload still exists and that every recorded
part still carries its recorded ETag, reloads the tail from the store and carries on; parts
uploaded after the checkpoint are simply overwritten, since the next part numbers are reused.
A commit retried after it succeeded (the upload is gone) finds the object at the key with the
size, and where S3 reports MD5-based ETags the multipart ETag, that the handle predicts, and
does nothing. ``--fresh`` and ``pipeline rm`` abort the upload a handle names.

Fencing: the session lease (a compare-and-swap on the manifest) stops a run that lost it at its
next checkpoint, before it can complete the upload; a stale run that still uploads a part
under a number the new run recorded changes that part's ETag, which the new run detects at
recovery or when completing (S3 refuses a completion whose ETags do not match) and reports
instead of publishing a mix. Parts upload on a thread of their own while the next one fills;
memory: two part-sized buffers (the part size doubles every 2,000 parts so an upload of 10,000
parts can reach S3's 5 TiB object limit).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

from pipeline.connectors.base import Stash
from pipeline.errors import PipelineError, SinkError, SinkGone
from pipeline.spec import MIN_PART_SIZE, OutputSpec
from pipeline.stores._retry import RETRY_SETTINGS, Retry, RetryPolicy
from pipeline.stores.s3 import close_client, describe, is_missing, is_transient, open_client

MAX_PARTS = 10_000
_PARTS_PER_SIZE = 2_000
_MD5 = re.compile(r"[0-9a-f]{32}")


class _Retry(Retry):
    """The snapshot stores' retry policy and fault seam, ending in the sink's errors."""

    def error(self, op: str, key: str, detail: str, *, exhausted: bool) -> PipelineError:
        hint = f"S3 looks unavailable; {RETRY_SETTINGS}" if exhausted else None
        return SinkError(f"{self.url}: cannot {op}{detail}", hint=hint)


class S3Sink:
    """An exactly-once S3 object sink (multipart upload with a stashed tail)."""

    def __init__(self, spec: OutputSpec, session: str, *, stash: Stash | None) -> None:
        self.url = spec.url
        self.session = session
        parts = urlsplit(spec.url)
        self.bucket, self.key = parts.netloc, parts.path.lstrip("/")
        if not self.bucket or not self.key or self.key.endswith("/"):
            raise SinkError(f"sink {spec.url}: an S3 output needs a bucket and an object key: s3://bucket/key")
        self.part_size = spec.part_size
        self.length = 0
        self._stash = stash
        self._fs = open_client(**spec.options)
        self._retry = _Retry(f"sink {spec.url}", RetryPolicy.from_env(), is_transient=is_transient, describe=describe)
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []  # [{"n", "etag", "size"}] in order, uploaded
        # One part uploads while the next fills: the run does not wait on S3 between checkpoints.
        self._uploader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pipeline-s3-part")
        self._in_flight: Future[dict[str, Any]] | None = None
        self._buffer = bytearray()
        self._published = False

    # -- requests ---------------------------------------------------------------------------
    def _s3(self, method: str, doing: str, **kwargs: Any) -> dict[str, Any]:
        """One request, retried on transient faults as the stores retry theirs; a failure is a
        ``SinkError`` saying what we were doing.

        Every request the sink makes can be repeated: a part again under its number, a listing,
        a HEAD, an abort. Two need a word: a lost answer to creating an upload leaves the first
        upload unrecorded (a bucket lifecycle rule reaps it), and one to completing the upload
        makes the retry meet NoSuchUpload, which :meth:`commit` settles by looking at the object.
        """

        def request() -> dict[str, Any]:
            response: dict[str, Any] = self._fs.call_s3(method, Bucket=self.bucket, **kwargs)
            return response

        return self._retry(doing, self.key, request)

    def _try(self, method: str, doing: str, **kwargs: Any) -> dict[str, Any] | None:
        """A request whose target may be gone: None if S3 says so, else as :meth:`_s3`."""
        try:
            return self._s3(method, doing, **kwargs)
        except SinkError as exc:
            if exc.__cause__ is not None and is_missing(exc.__cause__):
                return None
            raise

    def _upload_part(self, data: bytes | bytearray) -> None:
        """Send ``data`` as the next part, on the uploader thread, once the part before it is up."""
        self._drain()
        number = len(self._parts) + 1
        if number > MAX_PARTS:
            raise SinkError(
                f"sink {self.url}: the output outgrew S3's {MAX_PARTS:,} parts",
                hint="raise part_size on this output",
            )
        self._in_flight = self._uploader.submit(self._send_part, number, bytes(data))

    def _send_part(self, number: int, body: bytes) -> dict[str, Any]:
        response = self._s3(
            "upload_part", f"upload part {number}", Key=self.key, UploadId=self._upload_id, PartNumber=number, Body=body
        )
        return {"n": number, "etag": response["ETag"], "size": len(body)}

    def _drain(self) -> None:
        """Wait for the part in flight and record it; its upload error is raised here."""
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is not None:
            self._parts.append(in_flight.result())

    def _next_part_size(self) -> int:
        return self.part_size << min(len(self._parts) // _PARTS_PER_SIZE, 4)

    # -- the protocol -------------------------------------------------------------------------
    def acquire(self, *, wait: bool = False) -> None:
        """Nothing to lock locally: the session lease and the parts' ETags fence an S3 upload."""

    def start(self) -> None:
        """Begin a fresh upload (the runner records its id at once, so ``--fresh`` and ``rm`` find it)."""
        created = self._s3("create_multipart_upload", "start an upload", Key=self.key)
        self._upload_id = created["UploadId"]
        self._parts, self._buffer, self.length = [], bytearray(), 0

    def recover(self, handle: dict[str, Any], *, finished: bool = False) -> None:
        """Carry on from a checkpoint's handle: its parts, and its tail from the store.

        An upload that is gone is published only if the handle is ``finished`` and the object at
        the key is the one completing it would have made.
        """
        self._upload_id = handle["upload_id"]
        self._parts = [dict(part) for part in handle["parts"]]
        self.length = int(handle["length"])
        tail = self._stash_get(handle["tail"]) if handle.get("tail") else b""
        uploaded = self._uploaded_parts()
        if uploaded is None:
            if finished and self._is_published(tail):
                self._published = True
                return
            raise SinkGone(
                f"sink {self.url}: upload {self._upload_id[:16]}... no longer exists and the object is not "
                "the one it would have published (aborted, or expired by a bucket lifecycle rule)",
                hint="rerun with --fresh to write this output again",
            )
        for part in self._parts:
            if uploaded.get(part["n"]) != part["etag"]:
                raise SinkError(
                    f"sink {self.url}: part {part['n']} of the upload is not the one the checkpoint recorded "
                    "(another run of this session wrote to it)",
                    hint="stop the other run, then rerun with --fresh",
                )
        self._buffer = bytearray(tail)

    def write(self, data: memoryview | bytes) -> None:
        """Buffer bytes; a full buffer becomes the next part."""
        if self._upload_id is None:
            raise SinkError(f"sink {self.url}: written before start() or recover()")
        self._buffer += data
        self.length += len(data)
        if len(self._buffer) >= self._next_part_size():
            self._upload_part(self._buffer)
            self._buffer = bytearray()

    def persist(self) -> dict[str, Any]:
        """Make everything written so far durable: a part if it can be one, else a stashed tail."""
        if self._published:
            return {"length": self.length, "upload_id": self._upload_id, "parts": self._parts, "tail": None}
        if len(self._buffer) >= MIN_PART_SIZE:
            self._upload_part(self._buffer)
            self._buffer = bytearray()
        self._drain()
        handle: dict[str, Any] = {
            "length": self.length,
            "upload_id": self._upload_id,
            "parts": [dict(part) for part in self._parts],
            "tail": None,
        }
        if self._buffer:
            if self._stash is None:
                raise SinkError(f"sink {self.url}: an S3 output needs the session store to keep its tail")
            blob_id, stored = self._stash.put(bytes(self._buffer))
            handle |= {"tail": blob_id, "blobs": {blob_id: stored}}
        return handle

    flush = persist  # the upload or the stash is the durable step: nothing left for sync()

    def sync(self) -> None:
        """Nothing to do: :meth:`persist` (as :meth:`flush`) already made the bytes durable."""

    def commit(self) -> None:
        """Complete the upload with exactly the recorded parts. Idempotent."""
        if self._published:
            return
        self._drain()
        tail = bytes(self._buffer)
        if not self._parts and not tail:
            # S3 completes no upload without a part: an empty output is one empty PutObject.
            self._s3("put_object", "write the empty object", Key=self.key, Body=b"")
            self.discard()
            self._published = True
            return
        if tail:
            self._upload_part(tail)
            self._drain()
        self._buffer = bytearray()
        parts = [{"PartNumber": p["n"], "ETag": p["etag"]} for p in self._parts]
        try:
            done = self._try(
                "complete_multipart_upload",
                "complete the upload",
                Key=self.key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": parts},
            )
        except SinkError as exc:
            exc.hint = exc.hint or "if another run of this session was active, stop it and rerun with --fresh"
            raise
        if done is None and not self._is_published(b""):  # gone: completed by an earlier attempt?
            raise SinkError(
                f"sink {self.url}: the upload disappeared before it completed (aborted by another run?)",
                hint="rerun with --fresh to write this output again",
            )
        self._published = True

    def discard(self, handle: dict[str, Any] | None = None) -> None:
        """Abort the upload the handle names (without one, this run's own); a gone upload is fine.

        A handle with no upload id comes from a run's first ``starting`` commit: that run may have
        died between creating its upload and recording it, so every unfinished upload on the key
        goes (another session writing the very same key is the one that could lose its upload).
        """
        if handle is None:
            upload_ids = [self._upload_id] if self._upload_id else []
        elif handle.get("upload_id"):
            upload_ids = [handle["upload_id"]]
        else:
            listing = self._s3("list_multipart_uploads", "list unfinished uploads", Prefix=self.key)
            upload_ids = [u["UploadId"] for u in listing.get("Uploads", ()) if u["Key"] == self.key]
        for upload_id in upload_ids:
            self._try("abort_multipart_upload", f"abort upload {upload_id[:16]}...", Key=self.key, UploadId=upload_id)

    def close(self) -> None:
        """Drop the buffer and the client's connections; safe twice. An unfinished upload stays."""
        self._buffer = bytearray()
        with contextlib.suppress(Exception):  # a failing run's part in flight: its error is moot
            self._drain()
        self._uploader.shutdown(wait=True)
        with contextlib.suppress(Exception):
            close_client(self._fs)

    # -- helpers ------------------------------------------------------------------------------
    def _uploaded_parts(self) -> dict[int, str] | None:
        """Part number -> ETag of every part the upload holds; None if the upload is gone."""
        uploaded: dict[int, str] = {}
        marker = 0
        for _ in range(MAX_PARTS // 1000 + 1):  # S3 lists at most 1,000 parts a page
            page = self._try(
                "list_parts",
                "list the parts of the upload",
                Key=self.key,
                UploadId=self._upload_id,
                PartNumberMarker=marker,
            )
            if page is None:
                return None
            uploaded |= {part["PartNumber"]: part["ETag"] for part in page.get("Parts", ())}
            if not page.get("IsTruncated"):
                break
            marker = int(page["NextPartNumberMarker"])
        return uploaded

    def _stash_get(self, blob_id: str) -> bytes:
        if self._stash is None:
            raise SinkError(f"sink {self.url}: an S3 output needs the session store to reload its tail")
        return self._stash.get(blob_id)

    def _is_published(self, tail: bytes) -> bool:
        """Whether the key holds what completing this upload (plus ``tail``) publishes."""
        head = self._try("head_object", "look at the published object", Key=self.key)
        if head is None or int(head.get("ContentLength", -1)) != self.length:
            return False
        digests = [p["etag"].strip('"') for p in self._parts] + ([hashlib.md5(tail).hexdigest()] if tail else [])
        if not digests or not all(_MD5.fullmatch(d) for d in digests):
            return True  # ETags that are not MD5s (SSE-KMS) cannot be predicted: the size has to do
        expected = hashlib.md5(b"".join(bytes.fromhex(d) for d in digests)).hexdigest() + f"-{len(digests)}"
        return str(head.get("ETag", "")).strip('"') == expected
