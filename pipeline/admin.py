"""Looking at and cleaning up sessions in a store: what ``pipeline sessions/show/rm/gc`` do.

Cleaning up is safe while other runs are active: a session is only removed or swept while this
process holds the locks of its in-progress outputs, the same locks a run holds for its whole life.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pipeline.connectors.base import Sink, open_recorded_sink
from pipeline.errors import KeyNotFound, SinkError, SnapshotCorrupt
from pipeline.session import SessionStore, list_sessions
from pipeline.snapshot import PAGE_SIZE, Manifest
from pipeline.stores import SnapshotStore


@dataclass
class SessionInfo:
    """One row of ``pipeline sessions``."""

    session: str
    state: str
    progress: float | None
    updated_at: float | None
    stored_bytes: int
    manifest: Manifest | None


def session_infos(store: SnapshotStore) -> list[SessionInfo]:
    """Every session in the store, with its state; a damaged head shows as ``damaged``."""
    infos = []
    for name in list_sessions(store):
        try:
            manifest = SessionStore(store, name).read_head()
        except SnapshotCorrupt:
            infos.append(SessionInfo(name, "damaged", None, None, 0, None))
            continue
        if manifest is None:
            continue
        size = manifest.source.get("size")
        progress = manifest.source["offset"] / size if size else (1.0 if manifest.state == "complete" else None)
        updated = manifest.stats.get("updated_at")
        stored = manifest.stats.get("stored_bytes", 0)
        infos.append(SessionInfo(name, manifest.state, progress, updated, stored, manifest))
    return infos


def describe(manifest: Manifest) -> list[str]:
    """A manifest in human form, one ``label  value`` line each."""
    source, stats = manifest.source, manifest.stats
    size = source.get("size")
    of = f" of {size:,} ({source['offset'] / size:.1%})" if size else ""
    lines = [
        ("session", manifest.session),
        ("state", f"{manifest.state} (checkpoint {manifest.seq}, lease epoch {manifest.lease_epoch})"),
        ("source", f"{source['url']}  at byte {source['offset']:,}{of}"),
        ("identity", ", ".join(f"{k}={v}" for k, v in sorted(source["identity"].items()))),
        ("job sha256", manifest.spec_sha256),
    ]
    for index, stage in enumerate(manifest.stages, start=1):
        lines.append(
            (
                "stage" if index == 1 else "",
                f"{index}. {stage.name}  module {stage.module_sha256[:16]}  "
                f"memory {stage.memory_pages * PAGE_SIZE / 2**20:.1f} MiB ({stage.memory_pages} pages, "
                f"{len(stage.pages)} stored)  globals {len(stage.globals)}  input {stage.bytes_in:,} bytes",
            )
        )
    for index, sink in enumerate(manifest.sinks):
        length = sink["handle"]["length"]
        lines.append(("sinks" if index == 0 else "", f"{sink['name']:<8} {sink['url']}  {length:,} bytes"))
    counters = ("records_in", "records_out", "records_rejected")
    counts = [f"{stats[k]:,} {k.removeprefix('records_')}" for k in counters if k in stats]
    if counts:
        lines.append(("rows", ", ".join(counts)))
    lines.append(("bytes", f"{stats.get('bytes_in', 0):,} in, {stats.get('bytes_out', 0):,} out"))
    lines.append(("stored", f"{manifest.stored_bytes():,} bytes in {len(manifest.blob_ids())} blobs"))
    lines.append(("updated", format_time(stats.get("updated_at"))))
    return [f"{label:<11} {value}" for label, value in lines]


def format_time(timestamp: float | None) -> str:
    """An epoch time as ISO 8601 UTC, or ``-``."""
    if timestamp is None:
        return "-"
    return datetime.fromtimestamp(timestamp, tz=UTC).isoformat(timespec="seconds")


@contextlib.contextmanager
def holding(session: str, manifest: Manifest | None) -> Iterator[list[tuple[dict[str, Any], Sink]]]:
    """Hold a session's in-progress outputs (fails if a run is active); yields (entry, sink) pairs.

    Storage options of remote outputs come from the environment: manifests never record them.
    """
    with contextlib.ExitStack() as stack:
        entries = manifest.sinks if manifest else []
        yield [(entry, stack.enter_context(open_recorded_sink(entry, session))) for entry in entries]


def remove_session(store: SnapshotStore, session: str) -> None:
    """Delete a session's snapshots and its in-progress outputs; published outputs stay."""
    state = SessionStore(store, session)
    try:
        manifest = state.read_head()
    except SnapshotCorrupt:
        manifest = None
    else:
        if manifest is None:
            raise KeyNotFound(f"{store.url}: no session {session!r}", hint="`pipeline sessions` lists them")
    with holding(session, manifest) as sinks:
        for entry, sink in sinks:
            sink.discard(entry["handle"])
        state.delete_all()


@dataclass
class GcReport:
    """What ``pipeline gc`` removed."""

    sessions_removed: list[str]
    keys_swept: int


def collect_garbage(store: SnapshotStore, *, older_than: float) -> GcReport:
    """Remove complete sessions idle for ``older_than`` seconds; sweep unreferenced blobs of the
    other sessions idle that long.

    Idleness, not a lock, is what protects a session being run: outputs on S3 take no local
    lock, and a run between two checkpoints has written blobs its head does not name yet. A run
    sweeps its own session's leftovers when it starts, so gc only matters for abandoned ones.
    """
    removed, swept = [], 0
    now = time.time()
    for info in session_infos(store):
        if info.manifest is None:
            continue  # damaged: leave it for a person to look at (`pipeline rm` removes it)
        if now - (info.updated_at or now) < older_than:
            continue  # possibly being run right now
        if info.state == "complete":
            remove_session(store, info.session)
            removed.append(info.session)
            continue
        state = SessionStore(store, info.session)
        try:
            with holding(info.session, info.manifest):
                state.adopt_kept()
                swept += state.sweep()
        except SinkError:
            continue  # a run is active on it; it sweeps its own leftovers when it starts
    return GcReport(removed, swept)
