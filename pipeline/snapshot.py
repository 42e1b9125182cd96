"""Snapshots of guest state: the blob codec, page deltas and the manifest (DESIGN §4).

A stage's state is all of its linear memory plus every mutable global. Memory is cut into
64 KiB pages; each page is hashed (xxh3-128) and stored as a content-addressed blob, so a
checkpoint writes only pages whose content the store does not already hold, and every
manifest still carries the full page table: restoring never replays a chain of deltas, and a
page that went A→B→A is restored as A because the table names A's blob.

Pages entirely inside the guest's input area are not captured: the ABI says its contents do
not survive a checkpoint. All-zero pages are not stored either.

Every blob, the manifest included, is framed the same way::

    b"PLB1" | codec (1 byte: 1 zstd, 2 gzip) | xxh3-64 of the raw bytes (8) | raw length (8) | payload

Reading checks all of it; an unknown codec (an uncompressed blob included), a short frame or a
checksum mismatch is a :class:`~pipeline.errors.SnapshotCorrupt` naming the key.
"""

from __future__ import annotations

import gzip
import json
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from typing import Any

import xxhash
import zstandard

from pipeline.errors import KeyNotFound, SnapshotCorrupt
from pipeline.runtime import WASM_PAGE, GlobalState, Guest
from pipeline.stores import SnapshotStore

MANIFEST_FORMAT = "wasm-pipeline/manifest@1"
PAGE_SIZE = WASM_PAGE
_MAGIC = b"PLB1"
_HEADER = struct.Struct("<4sBQQ")
CODEC_ZSTD, CODEC_GZIP = 1, 2
_ZERO_PAGE = bytes(PAGE_SIZE)
_ZERO_PAGE_ID = xxhash.xxh3_128_hexdigest(_ZERO_PAGE)

_codecs = threading.local()  # zstandard's (de)compressor objects must not be shared by threads


def _compressor() -> zstandard.ZstdCompressor:
    if not hasattr(_codecs, "compressor"):
        _codecs.compressor = zstandard.ZstdCompressor(level=3)
    return _codecs.compressor


def _decompressor() -> zstandard.ZstdDecompressor:
    if not hasattr(_codecs, "decompressor"):
        _codecs.decompressor = zstandard.ZstdDecompressor()
    return _codecs.decompressor


def encode_blob(raw: bytes | memoryview, codec: int = CODEC_ZSTD) -> bytes:
    """Frame and compress ``raw`` (zstd by default)."""
    payload = _compressor().compress(raw) if codec == CODEC_ZSTD else gzip.compress(raw, mtime=0)
    return _HEADER.pack(_MAGIC, codec, xxhash.xxh3_64_intdigest(raw), len(raw)) + payload


def decode_blob(blob: bytes, key: str) -> bytes:
    """Check and decompress a framed blob; anything amiss is ``SnapshotCorrupt`` naming ``key``."""
    if len(blob) < _HEADER.size:
        raise SnapshotCorrupt(f"{key}: blob is truncated ({len(blob)} bytes, shorter than its header)")
    magic, codec, checksum, length = _HEADER.unpack_from(blob)
    if magic != _MAGIC:
        raise SnapshotCorrupt(f"{key}: not a wasm-pipeline blob (uncompressed or foreign data)")
    payload = memoryview(blob)[_HEADER.size :]
    try:
        if codec == CODEC_ZSTD:
            raw = _decompressor().decompress(payload, max_output_size=length)
        elif codec == CODEC_GZIP:
            raw = gzip.decompress(payload)
        else:
            raise SnapshotCorrupt(f"{key}: unknown blob codec {codec}")
    except (zstandard.ZstdError, OSError, EOFError) as exc:
        raise SnapshotCorrupt(f"{key}: blob does not decompress: {exc}") from exc
    if len(raw) != length or xxhash.xxh3_64_intdigest(raw) != checksum:
        raise SnapshotCorrupt(f"{key}: blob fails its checksum (damaged or truncated)")
    return raw


@dataclass
class StageState:
    """One stage in a manifest: which module, how much memory, which blob holds each page."""

    name: str
    module_sha256: str
    memory_pages: int
    pages: dict[int, str]
    globals: list[GlobalState]
    bytes_in: int
    blob_sizes: dict[str, int] = field(default_factory=dict)
    """Stored (compressed) size of each distinct blob in ``pages``."""

    def to_json(self) -> dict[str, Any]:
        # Shallow, by hand: dataclasses.asdict deep-copies every page entry, which showed up as
        # the largest pure-Python cost of a small-file session.
        data = _shallow(self)
        data["pages"] = {str(index): blob for index, blob in sorted(self.pages.items())}
        data["globals"] = [_shallow(g) for g in self.globals]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StageState:
        return cls(
            name=data["name"],
            module_sha256=data["module_sha256"],
            memory_pages=int(data["memory_pages"]),
            pages={int(index): blob for index, blob in data["pages"].items()},
            globals=[GlobalState(**g) for g in data["globals"]],
            bytes_in=int(data["bytes_in"]),
            blob_sizes={blob: int(size) for blob, size in data.get("blob_sizes", {}).items()},
        )


@dataclass
class Manifest:
    """The one atomic commit point of a session: everything needed to resume it."""

    session: str
    seq: int
    lease_epoch: int
    spec_sha256: str
    state: str  # "running" | "finished" (all output persisted, not yet published) | "complete"
    source: dict[str, Any]  # {url, identity, offset, size}
    stages: list[StageState] = field(default_factory=list)
    sinks: list[dict[str, Any]] = field(default_factory=list)  # [{name, port, url, handle}]
    oplog: dict[str, int] = field(default_factory=lambda: {"next_call_index": 0})
    stats: dict[str, Any] = field(default_factory=dict)
    format: str = MANIFEST_FORMAT

    def blob_ids(self) -> set[str]:
        """Every blob this manifest references: stage pages, and bytes sinks stashed."""
        return set(self.blob_sizes())

    def blob_sizes(self) -> dict[str, int]:
        """Blob id -> bytes in the store, for every blob this manifest references."""
        sizes: dict[str, int] = {}
        for stage in self.stages:
            sizes |= {blob: stage.blob_sizes.get(blob, 0) for blob in stage.pages.values()}
        return sizes | self.sink_blobs()

    def sink_blobs(self) -> dict[str, int]:
        """Blob id -> stored size of the bytes sinks stashed (an S3 upload's tail)."""
        return {blob: int(size) for sink in self.sinks for blob, size in sink["handle"].get("blobs", {}).items()}

    def stored_bytes(self) -> int:
        """Bytes this checkpoint occupies in the store: its distinct blobs."""
        return sum(self.blob_sizes().values())

    def to_bytes(self) -> bytes:
        data = _shallow(self)
        data["stages"] = [stage.to_json() for stage in self.stages]
        return encode_blob(json.dumps(data, sort_keys=True, separators=(",", ":")).encode())

    @classmethod
    def from_bytes(cls, blob: bytes, key: str) -> Manifest:
        raw = decode_blob(blob, key)
        try:
            data = json.loads(raw)
            if data.get("format") != MANIFEST_FORMAT:
                raise SnapshotCorrupt(f"{key}: unknown manifest format {data.get('format')!r}")
            data["stages"] = [StageState.from_json(stage) for stage in data["stages"]]
            return cls(**data)
        except (ValueError, KeyError, TypeError) as exc:
            raise SnapshotCorrupt(f"{key}: manifest is not valid: {exc}") from exc


def _shallow(instance: Any) -> dict[str, Any]:
    """A dataclass's fields as a dict, without copying their values."""
    return {f.name: getattr(instance, f.name) for f in fields(instance)}


def blob_key(prefix: str, blob_id: str) -> str:
    """The store key of a page blob under a session's pages prefix."""
    return f"{prefix}{blob_id}"


def _skipped_pages(guest: Guest) -> range:
    """Pages lying wholly inside the input area, whose contents the ABI does not preserve."""
    ptr, cap = guest.input_area
    first = -(-ptr // PAGE_SIZE)
    last = (ptr + cap) // PAGE_SIZE
    return range(first, max(first, last))


class PageWriter:
    """Writes the pages of one session's stages, and bytes its sinks stash, as content-addressed blobs.

    It is the :class:`~pipeline.connectors.base.Stash` the runner hands its sinks.
    """

    def __init__(self, store: SnapshotStore, prefix: str) -> None:
        self.store = store
        self.prefix = prefix
        self.known: dict[str, int] = {}
        """Blob ids the store is known to hold (kept manifests reference them), with their sizes."""
        self.bytes_written = 0
        self.blobs_written = 0
        self._loaded: dict[str, bytes] = {}  # stashed bytes read ahead by load_stashed(), until get()

    def capture(self, guest: Guest, name: str) -> StageState:
        """Snapshot one stage and store the pages the store does not hold yet."""
        state, new = self.scan(guest, name)
        self.write(new, [state])
        return state

    def scan(self, guest: Guest, name: str) -> tuple[StageState, dict[str, bytes]]:
        """The first half of :meth:`capture`: hash every page; return the stage's state and copies
        of the pages the store does not hold yet, for :meth:`write` — which may run on another
        thread while the guest goes on. Scan again only after that write returned."""
        memory = guest.memory_view()
        skipped = _skipped_pages(guest)
        pages: dict[int, str] = {}
        new: dict[str, bytes] = {}
        try:
            for index in range(len(memory) // PAGE_SIZE):
                if index in skipped:
                    continue
                page = memory[index * PAGE_SIZE : (index + 1) * PAGE_SIZE]
                blob_id = xxhash.xxh3_128_hexdigest(page)
                if blob_id == _ZERO_PAGE_ID:
                    continue
                if blob_id not in self.known and blob_id not in new:
                    new[blob_id] = bytes(page)
                pages[index] = blob_id
        finally:
            memory.release()
        state = StageState(
            name=name,
            module_sha256=guest.module.sha256,
            memory_pages=guest.memory_pages(),
            pages=pages,
            globals=guest.read_globals(),
            bytes_in=guest.bytes_in,
            blob_sizes={blob_id: self.known[blob_id] for blob_id in set(pages.values()) if blob_id in self.known},
        )
        return state, new

    def write(self, new: dict[str, bytes], stages: list[StageState]) -> None:
        """Compress and store the pages :meth:`capture` found new; record their sizes in ``stages``."""
        for blob_id, page in new.items():
            self._store(blob_id, page)
        for stage in stages:
            stage.blob_sizes |= {blob: self.known[blob] for blob in stage.pages.values() if blob in new}

    def _store(self, blob_id: str, data: bytes | memoryview) -> None:
        if blob_id not in self.known:
            blob = encode_blob(data)
            self.store.put(blob_key(self.prefix, blob_id), blob)
            self.known[blob_id] = len(blob)
            self.bytes_written += len(blob)
            self.blobs_written += 1

    def put(self, data: bytes) -> tuple[str, int]:
        """Stash bytes for a sink (its upload's tail); returns (blob id, bytes in the store)."""
        blob_id = xxhash.xxh3_128_hexdigest(data)
        self._store(blob_id, data)
        return blob_id, self.known[blob_id]

    def load_stashed(self, blob_ids: Iterable[str]) -> None:
        """Read and check the bytes sinks stashed (``SnapshotCorrupt`` if one does not load), and
        keep them for the one :meth:`get` each sink's recovery makes: a resume reads them once."""
        self._loaded = {}  # emptied first, so the get() calls below read the store, not an older load
        self._loaded = {blob_id: self.get(blob_id) for blob_id in blob_ids}

    def get(self, blob_id: str) -> bytes:
        """Bytes a sink stashed, checked against their blob's checksum."""
        loaded = self._loaded.pop(blob_id, None)
        if loaded is not None:
            return loaded
        key = blob_key(self.prefix, blob_id)
        try:
            return decode_blob(self.store.get(key), key)
        except KeyNotFound:
            raise SnapshotCorrupt(f"{key}: a sink's stashed bytes are missing from the store") from None

    def remember(self, manifest: Manifest) -> None:
        """Know the blobs a committed manifest references: the store holds those."""
        self.known |= manifest.blob_sizes()

    def retain(self, blob_ids: Iterable[str]) -> None:
        """Forget every blob but these (the rest were released from the store)."""
        keep = set(blob_ids)
        self.known = {blob: size for blob, size in self.known.items() if blob in keep}


def restore(guest: Guest, state: StageState, store: SnapshotStore, prefix: str) -> None:
    """Load a stage's memory and globals from a snapshot into a fresh instance."""
    guest.grow_to(state.memory_pages)
    prefilled = guest.module.data_pages  # only these pages of a fresh instance may be non-zero
    memory = guest.memory_view()
    try:
        for index in range(state.memory_pages):
            offset = index * PAGE_SIZE
            blob_id = state.pages.get(index)
            if blob_id is None:  # a zero page, or input area whose contents are undefined
                if prefilled is None or index in prefilled:
                    memory[offset : offset + PAGE_SIZE] = _ZERO_PAGE
                continue
            key = blob_key(prefix, blob_id)
            try:
                blob = store.get(key)
            except KeyNotFound:
                raise SnapshotCorrupt(f"{key}: page blob is missing from the store") from None
            raw = decode_blob(blob, key)
            if len(raw) != PAGE_SIZE:
                raise SnapshotCorrupt(f"{key}: page blob holds {len(raw)} bytes, not {PAGE_SIZE}")
            memory[offset : offset + PAGE_SIZE] = raw
    finally:
        memory.release()
    guest.write_globals(state.globals)
    guest.bytes_in = state.bytes_in
    guest.restored()
