"""An S3 object written exactly once, by multipart upload (DESIGN §6; Flink's RecoverableWriter).

Guarantee: **exactly-once.** A session writes one multipart upload. Bytes are buffered in
memory and uploaded as a part whenever the buffer reaches the part size — and only then: a
checkpoint cuts no part. What is buffered at a checkpoint is the *tail*, kept in the session's
snapshot store as a list of *pieces*: each checkpoint seals the bytes written since the one
before as a new piece and stashes that piece alone, once; a piece stays in every handle (and so
in the store) until the part it belongs to is uploaded. A checkpoint splits in two
(docs/architecture.md §4): :meth:`S3Sink.flush`, on the run's thread, only seals the new piece,
and :meth:`S3Sink.sync`, on the checkpoint thread, waits for the parts and stashes the new
piece; the handle it returns holds the upload id, every part up to the checkpoint with its ETag
and size, and the tail's pieces' blob ids in order. Nothing is visible at the target key until
:meth:`S3Sink.commit` completes the upload with exactly the parts the run recorded, which S3
makes atomic.

Why parts only at the part size: checkpoints come every second, and a part cut at each one
spends S3's 10,000 parts in hours on a job writing a few MiB a second. Why pieces: stashing the
whole tail at each checkpoint wrote the same growing bytes again every second.

After a crash :meth:`S3Sink.recover` checks the upload still exists and that every recorded
part still carries its recorded ETag, reloads the tail's pieces from the store and carries on;
parts uploaded after the checkpoint are simply overwritten, since the next part numbers are
reused. A handle written before the tail was cut into pieces (``"tail": blob id or None``)
resumes as a tail of one piece (or none). A commit retried after it succeeded (the upload is
gone) finds the object at the key with the size, and where S3 reports MD5-based ETags the
multipart ETag, that the handle predicts, and does nothing. ``--fresh`` and ``pipeline rm``
abort the upload a handle names.

Fencing: the session lease (a compare-and-swap on the manifest) stops a run that lost it at its
next checkpoint, before it can complete the upload; a stale run that still uploads a part
under a number the new run recorded changes that part's ETag, which the new run detects at
recovery or when completing (S3 refuses a completion whose ETags do not match) and reports
instead of publishing a mix.

Parts upload on a thread of their own while the next one fills, and buffers change hands rather
than being copied: bytes are gathered in a ``BytesIO`` whose ``getvalue()`` hands its buffer
over as ``bytes`` without a copy, and a part goes up from those very bytes (a part spanning
checkpoints is joined from its pieces, on the uploader thread). Memory: the part uploading and
the one filling, which holds the tail (the run waits for an upload only when the next part is
full). The part size doubles every 2,000 parts (up to 16 times), so S3's 10,000 parts hold
62,000 times the configured part size: 484 GiB at the default 8 MiB, S3's 5 TiB object limit
from 85 MiB.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from pipeline.connectors.base import Stash
from pipeline.errors import PipelineError, SinkError, SinkGone
from pipeline.spec import OutputSpec
from pipeline.stores._retry import RETRY_SETTINGS, Retry, RetryPolicy
from pipeline.stores.s3 import close_client, describe, is_missing, is_transient, open_client

MAX_PARTS = 10_000
MAX_TAIL_PIECES = 64
"""More pieces than this in a tail at a checkpoint are joined and stashed again as one."""
_PARTS_PER_SIZE = 2_000
_SIZE_DOUBLINGS = 4
_PART_SIZES_IN_AN_UPLOAD = _PARTS_PER_SIZE * ((2 << _SIZE_DOUBLINGS) - 1)
"""How many times the configured part size S3's 10,000 parts hold, as they grow (62,000)."""
_MD5 = re.compile(r"[0-9a-f]{32}")


class _Retry(Retry):
    """The snapshot stores' retry policy and fault seam, ending in the sink's errors."""

    def error(self, op: str, key: str, detail: str, *, exhausted: bool) -> PipelineError:
        hint = f"S3 looks unavailable; {RETRY_SETTINGS}" if exhausted else None
        return SinkError(f"{self.url}: cannot {op}{detail}", hint=hint)


@dataclass(eq=False)
class _Piece:
    """Bytes one checkpoint sealed: a piece of the tail, stashed once, named by every handle
    until the part it belongs to is uploaded."""

    data: bytes
    blob: tuple[str, int] | None = None
    """(blob id, bytes in the store) once stashed: set by the sync() that stashed it, read by the
    flushes after it (the runner starts a flush only after the sync before it returned)."""


@dataclass
class _Handover:
    """What :meth:`S3Sink.flush` leaves for :meth:`S3Sink.sync` to make durable."""

    length: int
    parts: int
    """The handle holds parts 1..parts ..."""
    uploads: list[Future[None]]
    """... of which these may still be going up ..."""
    tail: list[_Piece]
    """... and these pieces after them, in order, for the stash."""


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
        # [{"n", "etag", "size"}] of the parts uploaded, in order: appended by the uploader thread
        # (one worker, so in number order), read by sync() on the checkpoint thread.
        self._parts: list[dict[str, Any]] = []
        self._parts_lock = threading.Lock()
        self._cut = 0  # part numbers given out
        # One part uploads while the next fills: the run does not wait on S3 between checkpoints.
        self._uploader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pipeline-s3-part")
        self._uploads: list[Future[None]] = []  # parts handed to the uploader, not yet waited for
        self._sealed: list[_Piece] = []  # the part being gathered: pieces checkpoints sealed ...
        self._sealed_size = 0
        self._filling = io.BytesIO()  # ... and the bytes written since
        self._handover: _Handover | None = None
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

    def _buffered(self) -> int:
        return self._sealed_size + self._filling.tell()

    def _seal(self) -> None:
        """Make the bytes written since the last seal a piece of their own (no copy)."""
        if self._filling.tell():
            data = self._filling.getvalue()  # the BytesIO's own buffer, now ours: no copy
            self._sealed.append(_Piece(data))
            self._sealed_size += len(data)
            self._filling = io.BytesIO()

    def _cut_part(self) -> None:
        """Hand every buffered byte to the uploader thread as the next part (no copy: the buffers
        change hands), once the parts before it went up, which bounds memory."""
        self._wait_for_uploads()
        number = self._cut + 1
        if number > MAX_PARTS:
            capacity = self.part_size * _PART_SIZES_IN_AN_UPLOAD
            raise SinkError(
                f"sink {self.url}: the output outgrew S3's {MAX_PARTS:,} parts "
                f"({capacity / 2**30:,.0f} GiB from part_size {self.part_size / 2**20:,.0f} MiB)",
                hint=f"raise part_size on this output: the parts grow from it and hold "
                f"{_PART_SIZES_IN_AN_UPLOAD:,} times it in all",
            )
        self._seal()
        pieces, self._sealed, self._sealed_size = self._sealed, [], 0
        self._cut = number
        self._uploads.append(self._uploader.submit(self._send_part, number, pieces))

    def _send_part(self, number: int, pieces: list[_Piece]) -> None:
        """Upload part ``number`` and record it (on the uploader thread, so parts go up in order)."""
        body = b"".join([piece.data for piece in pieces])  # one piece is returned as is
        pieces.clear()  # the pieces can go once joined (a checkpoint's handover may still hold some)
        if len(self._parts) != number - 1:  # the part before failed: its error is the run's
            raise SinkError(f"sink {self.url}: part {number} not sent: the part before it did not go up")
        response = self._s3(
            "upload_part", f"upload part {number}", Key=self.key, UploadId=self._upload_id, PartNumber=number, Body=body
        )
        with self._parts_lock:
            self._parts.append({"n": number, "etag": response["ETag"], "size": len(body)})

    def _wait_for_uploads(self) -> None:
        """Wait for every part handed to the uploader; the first upload error is raised here."""
        uploads, self._uploads = self._uploads, []
        for upload in uploads:
            upload.result()

    def _next_part_size(self) -> int:
        """The size at which the buffer becomes the next part: it doubles every 2,000 parts."""
        return self.part_size << min(self._cut // _PARTS_PER_SIZE, _SIZE_DOUBLINGS)

    # -- the protocol -------------------------------------------------------------------------
    def acquire(self, *, wait: bool = False) -> None:
        """Nothing to lock locally: the session lease and the parts' ETags fence an S3 upload."""

    def start(self) -> None:
        """Begin a fresh upload (the runner records its id at once, so ``--fresh`` and ``rm`` find it)."""
        created = self._s3("create_multipart_upload", "start an upload", Key=self.key)
        self._upload_id = created["UploadId"]
        self._parts, self._cut, self.length = [], 0, 0

    def recover(self, handle: dict[str, Any], *, finished: bool = False) -> None:
        """Carry on from a checkpoint's handle: its parts, and its tail's pieces from the store.

        An upload that is gone is published only if the handle is ``finished`` and the object at
        the key is the one completing it would have made.
        """
        self._upload_id = handle["upload_id"]
        self._parts = [dict(part) for part in handle["parts"]]
        self._cut = len(self._parts)
        self.length = int(handle["length"])
        # Pieces already stashed: the next checkpoints name them again rather than stash them anew.
        tail = [
            _Piece(self._stash_or_fail("reload").get(blob_id), (blob_id, handle["blobs"][blob_id]))
            for blob_id in _tail_ids(handle)
        ]
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
        self._sealed, self._sealed_size = tail, sum(len(piece.data) for piece in tail)

    def write(self, data: memoryview | bytes) -> None:
        """Buffer bytes; the buffer becomes the next part when it reaches the part size (exactly:
        a write that crosses it is split there)."""
        if self._upload_id is None:
            raise SinkError(f"sink {self.url}: written before start() or recover()")
        view = memoryview(data)
        self.length += len(view)
        while self._buffered() + len(view) >= (size := self._next_part_size()):
            room = max(size - self._buffered(), 0)  # a resumed tail may outgrow a part_size lowered since
            self._filling.write(view[:room])
            view = view[room:]
            self._cut_part()
        self._filling.write(view)

    def flush(self) -> None:
        """Hand everything written so far to :meth:`sync`, without waiting on S3: the bytes
        written since the last flush are sealed as a new piece of the tail (which stays the start
        of the next part; a checkpoint cuts no part)."""
        self._seal()
        if len(self._sealed) > MAX_TAIL_PIECES:
            # One id per checkpoint until a part fills grows the handle without bound on a slow
            # output (10 hours at 100 B/s: 36,000 pieces, a 2.8 MB handle in every manifest, as
            # many blobs to load on resume). Joined, the tail is stashed again as one piece: its
            # bytes at most once every MAX_TAIL_PIECES checkpoints.
            self._sealed = [_Piece(b"".join([piece.data for piece in self._sealed]))]
        self._handover = _Handover(self.length, self._cut, list(self._uploads), list(self._sealed))

    def sync(self) -> dict[str, Any]:
        """Make what the last :meth:`flush` handed over durable — wait for its parts, stash the
        tail's new pieces — and return the handle naming exactly that (on the checkpoint thread).

        The handle's ``tail`` lists the blob ids of the tail's pieces in order; ``blobs`` gives
        each one's size in the store, so the store keeps a piece while a kept manifest names it.
        """
        handover, self._handover = self._handover, None
        if handover is None:
            raise SinkError(f"sink {self.url}: sync() without a flush() before it")
        for upload in handover.uploads:
            upload.result()
        with self._parts_lock:
            parts = [dict(part) for part in self._parts[: handover.parts]]
        blobs: list[tuple[str, int]] = []
        for piece in handover.tail:
            if piece.blob is None:  # sealed by this checkpoint: the only bytes it stashes
                piece.blob = self._stash_or_fail("keep").put(piece.data)
            blobs.append(piece.blob)
        return {
            "length": handover.length,
            "upload_id": self._upload_id,
            "parts": parts,
            "tail": [blob_id for blob_id, _ in blobs],
            "blobs": dict(blobs),
        }

    def commit(self) -> None:
        """Complete the upload with exactly the recorded parts. Idempotent."""
        if self._published:
            return
        if self._buffered():
            self._cut_part()  # the tail goes up as the last part
        self._wait_for_uploads()
        if not self._parts:
            # S3 completes no upload without a part: an empty output is one empty PutObject.
            self._s3("put_object", "write the empty object", Key=self.key, Body=b"")
            self.discard()
            self._published = True
            return
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
        if done is None and not self._is_published([]):  # gone: completed by an earlier attempt?
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
        """Drop the buffers and the client's connections; safe twice. An unfinished upload stays."""
        self._sealed, self._sealed_size, self._filling, self._handover = [], 0, io.BytesIO(), None
        with contextlib.suppress(Exception):  # a failing run's part in flight: its error is moot
            self._wait_for_uploads()
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

    def _stash_or_fail(self, doing: str) -> Stash:
        if self._stash is None:
            raise SinkError(f"sink {self.url}: an S3 output needs the session store to {doing} its tail")
        return self._stash

    def _is_published(self, tail: list[_Piece]) -> bool:
        """Whether the key holds what completing this upload (plus ``tail`` as its last part) publishes."""
        head = self._try("head_object", "look at the published object", Key=self.key)
        if head is None or int(head.get("ContentLength", -1)) != self.length:
            return False
        digests = [p["etag"].strip('"') for p in self._parts]
        if tail:
            last = hashlib.md5()  # the tail's pieces, joined, are the last part
            for piece in tail:
                last.update(piece.data)
            digests.append(last.hexdigest())
        if not digests or not all(_MD5.fullmatch(d) for d in digests):
            return True  # ETags that are not MD5s (SSE-KMS) cannot be predicted: the size has to do
        expected = hashlib.md5(b"".join(bytes.fromhex(d) for d in digests)).hexdigest() + f"-{len(digests)}"
        return str(head.get("ETag", "")).strip('"') == expected


def _tail_ids(handle: dict[str, Any]) -> list[str]:
    """The blob ids of a handle's tail pieces, in order. A handle written before the tail was cut
    into pieces names one blob or none (``"tail": blob id | None``): a run interrupted before an
    upgrade resumes after it."""
    tail = handle.get("tail")
    if tail is None:
        return []
    return [tail] if isinstance(tail, str) else list(tail)
