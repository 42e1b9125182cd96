"""Running one session: source -> guest chain -> sinks, with checkpoints and resume.

:func:`run_session` needs nothing but its arguments and the store, so the same call runs on a
thread, in a subprocess or on a Dask worker (DESIGN §9). It keeps no process-global state.

The loop reads each chunk with ``readinto`` straight into the first guest's input area and
calls ``pl_process``; output a guest emits on port 0 goes to the next stage's input area or,
from the last stage, to the main sink; any other port goes to the job output its name routes to
(``rejects``, or whatever a guest declares with ``pl_outputs``).

A checkpoint is taken between chunks, when no guest call is active, in the commit order of
DESIGN §4: sinks persist -> page blobs written -> manifest compare-and-swap -> blobs the new
manifest no longer references released. A crash anywhere leaves the previous manifest valid,
and the sinks' handles in it say how much output belongs to it. Only the scan of guest memory
stops the guests; the durable steps run on a checkpoint thread while the next chunks are
processed (Flink's asynchronous snapshot phase), one checkpoint in flight at a time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline._faults import FaultPoints
from pipeline._fs import DeferredSyncs, barrier_covers, deferred_syncs, deferring
from pipeline.connectors.base import Sink, open_recorded_sink, open_sink
from pipeline.connectors.file_sink import FileSink
from pipeline.connectors.source import Source, describe_change, is_verifiable
from pipeline.errors import (
    Conflict,
    GuestABIError,
    GuestError,
    PipelineError,
    ResumeMismatch,
    SinkError,
    SnapshotCorrupt,
    SpecError,
    StoreError,
)
from pipeline.runtime import Guest, GuestModule
from pipeline.session import SessionStore
from pipeline.snapshot import Manifest, PageWriter, restore
from pipeline.spec import _SESSION_NAME, JobSpec
from pipeline.stores import SnapshotStore, open_store

log = logging.getLogger("pipeline")

PORT_MAIN = 0
MAIN = "main"

ProgressCallback = Callable[[int, int | None], None]
"""Called after each chunk with (bytes of input done, total input size or None)."""


@dataclass
class RunResult:
    """What a run did: the figures of the summary line."""

    session: str
    status: str  # "complete" | "already-complete"
    resumed_from: int | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    records_in: int | None = None
    """Rows (records) in/out/rejected, when the guests report counters."""
    records_out: int | None = None
    records_rejected: int | None = None
    seconds: float = 0.0
    checkpoints: int = 0
    outputs: dict[str, str] = field(default_factory=dict)

    @property
    def mb_per_second(self) -> float:
        processed = self.bytes_in - (self.resumed_from or 0)
        return processed / 1e6 / self.seconds if self.seconds > 0 else 0.0


def run_session(
    job: JobSpec,
    *,
    store_url: str | None = None,
    session: str | None = None,
    fresh: bool = False,
    wait: bool = False,
    on_progress: ProgressCallback | None = None,
) -> RunResult:
    """Run (or resume, or start over with ``fresh``) one session of ``job`` to completion.

    With ``wait``, a session another run is writing is waited for instead of refused.
    """
    if job.is_batch:
        raise SpecError(f"{job.path}: source names several files: run it with pipeline.batch.run_batch")
    session_id = session or job.name
    _check_session_id(session_id)
    store = open_store(store_url or job.store, base_dir=job.base_dir)
    try:
        return _Run(job, session_id, store, on_progress).execute(fresh=fresh, wait=wait)
    finally:
        store.close()


def _check_session_id(session: str) -> None:
    if not _SESSION_NAME.match(session):
        raise SpecError(f"session id {session!r} must be letters, digits, '.', '_' or '-' (at most 128)")


class SessionGroup:
    """Many small sessions of one store run one after another, committed as a group.

    A batch worker's way to make a small file cost less than its ~7 fsyncs: a session that is
    new, whose input fits in one chunk and whose outputs are local files runs with every fsync
    deferred (:class:`~pipeline._fs.DeferredSyncs`), publishes its outputs, and is handed to the
    group still holding its outputs' locks. :meth:`commit` then makes the group durable in the
    order a single session's fsyncs would: a sync (every published output on disk), the
    ``complete`` manifests (the directory store writes them but stages their names), a second
    sync (their bytes), the manifests named, a third sync; only then are the sessions complete
    and their locks released. A crash before that leaves those sessions without a head: the
    next run starts them over and publishes the same bytes again. Any other session (resumed,
    large, with remote outputs) runs as :func:`run_session` runs it, at once.

    It commits no ``starting`` lease for a deferred session: nothing of an earlier run is there
    to protect, and the outputs' locks keep out every other run until ``complete`` is on disk.
    ``pipeline status`` shows such a session as new until its group commits.
    """

    MAX_SESSIONS = 32
    """Published sessions a group holds before :attr:`due` says commit (each holds its locks)."""
    MAX_SECONDS = 0.25
    """How long the first published session waits at most, so a slow group still reports."""

    def __init__(
        self, store_url: str, *, base_dir: Path | None = None, before_long_run: Callable[[], None] | None = None
    ) -> None:
        """``before_long_run``: called before a run that may take long (one not deferred, or
        one about to wait for a lock) while sessions are pending, for the caller to commit them
        first (they would wait, holding their locks and unreported, as long as it runs)."""
        self.store = open_store(store_url, base_dir=base_dir)
        self.store_directory = _local_root(self.store)
        self._covered: dict[Path, bool] = {}
        self._modules: dict[tuple[str, str, bool], GuestModule] = {}
        self._before_long_run = before_long_run
        self.syncs = DeferredSyncs()
        self._published: list[_Run] = []
        self._since = 0.0
        self._committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pipeline-group-commit")
        self._inflight: Future[dict[str, PipelineError]] | None = None

    def run(
        self,
        job: JobSpec,
        *,
        session: str,
        fresh: bool = False,
        wait: bool = False,
        on_progress: ProgressCallback | None = None,
    ) -> RunResult:
        """Run one session as :func:`run_session` does; a deferred one is complete only once
        :meth:`commit` says so (see :attr:`pending`)."""
        _check_session_id(session)
        return _Run(job, session, self.store, on_progress, group=self).execute(fresh=fresh, wait=wait)

    def load_module(self, guest: str, *, name: str, fuel: bool) -> GuestModule:
        """:meth:`GuestModule.load`, once per guest for the group: its files share their job's
        stages, and a load stats the module file (twice for a builtin) to see if it changed."""
        key = (guest, name, fuel)
        module = self._modules.get(key)
        if module is None:
            module = self._modules[key] = GuestModule.load(guest, name=name, fuel=fuel)
        return module

    def covers(self, directory: Path) -> bool:
        """:func:`~pipeline._fs.barrier_covers`, asked once per directory for the group (a
        ``statfs`` each: the same few folders come back with every file)."""
        covered = self._covered.get(directory)
        if covered is None:
            covered = self._covered[directory] = barrier_covers(directory)
        return covered

    def long_run_ahead(self) -> None:
        """Called by a run that will not be deferred, or will wait for a lock: pending sessions,
        and a commit in flight, are reported first."""
        if (self._published or self._inflight is not None) and self._before_long_run is not None:
            self._before_long_run()

    def hand_over(self, run: _Run) -> None:
        """Called by a deferred run that has published: its ``complete`` commit waits for the group."""
        if not self._published:
            self._since = time.monotonic()
        self._published.append(run)

    @property
    def pending(self) -> list[str]:
        """Sessions published and awaiting :meth:`commit`."""
        return [run.session for run in self._published]

    @property
    def due(self) -> bool:
        """Whether enough sessions (or time) have gathered to commit."""
        return len(self._published) >= self.MAX_SESSIONS or (
            bool(self._published) and time.monotonic() - self._since >= self.MAX_SECONDS
        )

    def commit(self) -> Future[dict[str, PipelineError]]:
        """Start making every pending session complete — sync, ``complete`` manifests written,
        sync, named, sync — on the group's committer thread, and return at once: the next
        sessions run meanwhile (their fsyncs are noted for the next commit's barriers). One
        commit is in flight at most: this first waits for the one before.

        The future gives the sessions that failed, with their errors (all of them when a barrier
        fails); every other session handed over before this call is then complete and durable.
        """
        if self._inflight is not None:
            self._inflight.result()
        runs, self._published = self._published, []
        syncs, self.syncs = self.syncs, DeferredSyncs()
        self._inflight = self._committer.submit(self._commit, runs, syncs)
        return self._inflight

    @staticmethod
    def _commit(runs: list[_Run], syncs: DeferredSyncs) -> dict[str, PipelineError]:
        failed: dict[str, PipelineError] = {}
        try:
            try:
                # The outputs on disk before any "complete" is committed, in whatever store: a
                # remote store's commit is durable when it returns.
                syncs.sync()
            except OSError as exc:
                return dict.fromkeys((run.session for run in runs), _not_durable(exc))
            with deferred_syncs(syncs):
                for run in runs:
                    try:
                        with syncs.owner(run.session):
                            run.complete()  # a directory store writes it; its name waits for the barrier
                    except PipelineError as exc:
                        failed[run.session] = exc
                        syncs.drop(run.session)
            # Sessions whose "complete" is staged; a remote store's are committed already.
            staged = syncs.keyed_owners()
            try:
                raised = syncs.barrier()  # the manifests' bytes on disk, then their names, then those
            except OSError as exc:
                failed |= dict.fromkeys(staged, _not_durable(exc))
            else:
                failed |= {session: _group_failure(session, exc) for session, exc in raised.items()}
        finally:
            syncs.close()
            for run in runs:
                run.close()
        return failed

    def close(self) -> None:
        """Wait for the commit in flight; release what is pending without committing it (it
        reruns next time), and the store."""
        with contextlib.suppress(Exception):  # its error was (or will never be) reported by its future
            if self._inflight is not None:
                self._inflight.result()
        self._committer.shutdown(wait=True)
        runs, self._published = self._published, []
        for run in runs:
            run.close()
        # What the store still defers (the directory of the last manifest created) the last
        # commit's last sync covered: it synced the whole filesystem.
        with deferred_syncs(self.syncs):
            self.store.close()
        self.syncs.close()


def _local_root(store: SnapshotStore) -> Path:
    """Where a store keeps its files locally; a remote store's commits are durable on return,
    so a barrier has nothing to cover there (its working directory stands in)."""
    while (inner := getattr(store, "inner", None)) is not None:  # encryption, retries
        store = inner
    return Path(getattr(store, "root", "."))


def _not_durable(exc: OSError) -> StoreError:
    return StoreError(f"cannot make a group of sessions durable: {exc.strerror}")


def _group_failure(session: str, exc: Exception) -> PipelineError:
    """What a session's staged step raised at the group's barrier, as that session's error."""
    if isinstance(exc, Conflict):  # its head appeared between the group's write and its naming
        return Conflict(
            f"session {session!r} was committed by another run while this run's group committed it",
            hint="only one run per session may proceed; `pipeline status` shows how it ended",
        )
    if isinstance(exc, PipelineError):
        return exc
    raise exc  # a bug, not the session's failure


class _Run:
    """The state of one run of one session; lives for a single :func:`run_session` call."""

    def __init__(
        self,
        job: JobSpec,
        session: str,
        store: SnapshotStore,
        on_progress: ProgressCallback | None,
        group: SessionGroup | None = None,
    ):
        self.job = job
        self.session = session
        self.on_progress = on_progress
        self.group = group
        self.state = SessionStore(store, session)
        self.spec_sha = job.sha256()
        self.modules = [self._load_module(index) for index in range(len(job.stages))]
        self.pages = PageWriter(store, self.state.pages_prefix)
        self.outputs = {MAIN: job.sink} | job.outputs
        self.sinks: dict[str, Sink] = {
            name: open_sink(out, session, stash=self.pages) for name, out in self.outputs.items()
        }
        self.routes = self._routes()
        self.guests: list[Guest] = []
        self.manifest: Manifest | None = None
        self.offset = 0
        self.checkpoints = 0
        self.faults = FaultPoints()
        self._checkpointer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pipeline-checkpoint")
        self._inflight: Future[None] | None = None
        self.deferred = False
        """Whether this run publishes with its fsyncs deferred to its group's barrier."""

    def _load_module(self, index: int) -> GuestModule:
        stage = self.job.stages[index]
        load = GuestModule.load if self.group is None else self.group.load_module
        try:
            return load(stage.guest, name=stage.label, fuel=stage.limits.fuel is not None)
        except (SpecError, GuestABIError) as exc:
            raise type(exc)(f"{self.job.path}: stages[{index}].guest: {exc.message}", hint=exc.hint) from exc

    # -- the run ------------------------------------------------------------------------
    def execute(self, *, fresh: bool, wait: bool) -> RunResult:
        started = time.perf_counter()
        source = Source(self.job.source.url, self.job.source.options)
        handed_over = False  # to the group, which commits and closes it after its barrier
        try:
            with contextlib.ExitStack() as durability:
                # Local locks before the lease: a run that cannot write the sinks must not take
                # the session from a run that can.
                for sink in self.sinks.values():
                    self._acquire(sink, wait=wait)
                resumed_from: int | None = None
                had_head = True
                candidate = None if fresh else self._resumable(source)
                if candidate is not None and candidate.state == "complete":
                    return self._already_complete(candidate)
                self.deferred = candidate is None and self._may_defer(source, fresh)
                if self.group is not None and not self.deferred:
                    self.group.long_run_ahead()
                if candidate is not None:
                    resumed_from = candidate.source["offset"]
                    self._resume(candidate)
                elif self.deferred:
                    assert self.group is not None
                    durability.enter_context(deferred_syncs(self.group.syncs))
                    self._start_deferred(source)
                    had_head = False
                else:
                    had_head = self._start_fresh(source, head_read=not fresh)
                if had_head:  # a session with no head before this run has no keys to sweep
                    self.state.sweep()
                if self.manifest is not None and self.manifest.state in ("starting", "running"):
                    self._stream(source)
                    for guest in self.guests:
                        guest.finish()
                    if self.manifest.state == "running":
                        self._checkpoint("finished")
                    else:
                        # Done before its first checkpoint: a crash from here on restarts the
                        # session from its "starting" head (or none), so a "finished" commit
                        # would save nothing. A read of the head fences the publish instead: a
                        # file output's lock already keeps out another run; for S3 a run may yet
                        # take the lease between the read and the publish, then both publish the
                        # same bytes (the old commit narrowed that window, but did not close it
                        # either). A deferred run has no head yet: its locks are its fence.
                        self.manifest.stats.update(self._stats())
                        if not self.deferred:
                            self.state.check_lease()
                for sink in self.sinks.values():
                    sink.commit()
                self.faults.reached("published")
                result = self._result(resumed_from, time.perf_counter() - started)
                if self.deferred:
                    assert self.group is not None
                    self._close_guests()  # a group holds many published runs: keep only their locks
                    self.group.hand_over(self)
                    handed_over = True
                    return result
                self._checkpoint("complete")
                return result
        finally:
            source.close()
            if not handed_over:
                self.close()

    def _acquire(self, sink: Sink, *, wait: bool) -> None:
        """Take a sink's lock; in a group, what is pending is reported before waiting for one."""
        if wait and self.group is not None:
            try:
                sink.acquire(wait=False)
                return
            except SinkError:  # held: the wait may be long
                self.group.long_run_ahead()
        sink.acquire(wait=wait)

    def complete(self) -> None:
        """Commit the ``complete`` manifest of a run its group took over after publishing."""
        self._checkpoint("complete")

    def _stream(self, source: Source) -> None:
        first = self.guests[0]
        chunk = min(self.job.source.chunk_size, first.input_area[1])
        every = self.job.checkpoint_every
        since_bytes, last_checkpoint = 0, time.monotonic()
        source.open(self.offset)
        while True:
            area = first.input_view()
            view = area[:chunk]
            n = source.readinto(view)
            view.release()
            area.release()
            if n == 0:
                break
            first.process(n)
            self.offset += n
            since_bytes += n
            # A deferred run never checkpoints: it took no lease yet, and its input is one chunk.
            if not self.deferred and every.due(since_bytes, time.monotonic() - last_checkpoint):
                self._checkpoint("running")
                since_bytes, last_checkpoint = 0, time.monotonic()
            if self.on_progress:
                self.on_progress(self.offset, source.size)

    # -- starting and resuming ------------------------------------------------------------
    def _resumable(self, source: Source) -> Manifest | None:
        """The newest committed checkpoint whose pages load, restored into fresh guests.

        A damaged manifest or page falls back to the checkpoint before it, with a warning;
        a changed input, job or guest is a ``ResumeMismatch`` at once. Returns None for a new
        session.
        """
        first_error: SnapshotCorrupt | None = None
        for candidate in self.state.candidates():
            manifest = candidate.manifest
            if manifest.state == "starting":
                return None  # the previous run died before it wrote anything: start again
            self._check_resumable(manifest, source)
            if manifest.state == "complete":
                return manifest
            try:
                self.pages.load_stashed(manifest.sink_blobs())  # must load too; kept for recover()
                if manifest.state == "running":
                    self._new_guests()
                    for guest, stage in zip(self.guests, manifest.stages, strict=True):
                        restore(guest, stage, self.pages.store, self.state.pages_prefix)
            except SnapshotCorrupt as exc:
                log.warning("%s; trying the checkpoint before it", exc)
                first_error = first_error or exc
                self._close_guests()
                continue
            if candidate.key != self.state.head_key:
                log.warning("resuming session %r from checkpoint %d (%s)", self.session, manifest.seq, candidate.key)
            return manifest
        if first_error is not None or self.state.version is not None:
            raise SnapshotCorrupt(
                f"session {self.session!r}: no checkpoint can be restored"
                + (f" ({first_error.message})" if first_error else " (every manifest is damaged)"),
                hint="rerun with --fresh to start this session over",
            )
        return None

    def _check_resumable(self, manifest: Manifest, source: Source) -> None:
        hint = "rerun with --fresh to start this session over"
        if manifest.state != "complete" and not is_verifiable(source.identity):
            raise ResumeMismatch(
                f"source {source.url} reports neither an ETag nor a modification time, so resuming "
                f"session {self.session!r} could splice two different files",
                hint=hint,
            )
        if manifest.source["identity"] != source.identity:
            change = describe_change(manifest.source["identity"], source.identity)
            raise ResumeMismatch(
                f"source {source.url} changed since session {self.session!r} last ran ({change})", hint=hint
            )
        if manifest.spec_sha256 != self.spec_sha:
            raise ResumeMismatch(
                f"job {self.job.path.name} changed since session {self.session!r} last ran "
                "(source, stages, config or outputs differ)",
                hint=hint,
            )
        if manifest.state == "complete":
            return
        for index, (state, module) in enumerate(zip(manifest.stages, self.modules, strict=False)):
            if state.module_sha256 != module.sha256:
                raise ResumeMismatch(
                    f"guest of stage {index + 1} ({module.name}) changed since session {self.session!r} "
                    f"last ran (sha256 {state.module_sha256[:12]} -> {module.sha256[:12]})",
                    hint=hint,
                )

    def _already_complete(self, manifest: Manifest) -> RunResult:
        self.state.adopt(manifest)
        self.state.sweep()  # whatever a crash right after the 'complete' commit left behind
        stats = manifest.stats
        return RunResult(
            session=self.session,
            status="already-complete",
            bytes_in=stats.get("bytes_in", 0),
            bytes_out=stats.get("bytes_out", 0),
            records_in=stats.get("records_in"),
            records_out=stats.get("records_out"),
            records_rejected=stats.get("records_rejected"),
            outputs={name: sink.url for name, sink in self.sinks.items()},
        )

    def _routes(self) -> list[dict[int, str]]:
        """Per stage, port -> job output name; every declared output routed, every output declared."""
        routes: list[dict[int, str]] = []
        declared: set[str] = set()
        for index, module in enumerate(self.modules):
            table: dict[int, str] = {}
            for name, port in module.outputs.items():
                declared.add(name)
                if name in self.job.outputs:
                    table[port] = name
                elif module.declared:
                    raise SpecError(
                        f"{self.job.path}: stage {index + 1} ({module.name}) writes an output {name!r} "
                        "that the job does not route",
                        hint=f"add `outputs: {{{name}: {{url: ...}}}}` to the job",
                    )
            routes.append(table)
        for name in self.job.outputs:
            if name not in declared:
                raise SpecError(
                    f"{self.job.path}: outputs.{name}: no stage writes an output named {name!r} "
                    f"(they write: {', '.join(sorted(declared)) or 'only main'})"
                )
        return routes

    def _new_guests(self) -> None:
        self.guests = [
            Guest(module, stage=f"stage {i + 1} ({module.name})", on_emit=self._emitter(i), limits=stage.limits)
            for i, (module, stage) in enumerate(zip(self.modules, self.job.stages, strict=True))
        ]

    def _start_fresh(self, source: Source, *, head_read: bool) -> bool:
        """Take the session with a ``starting`` manifest and start every sink and guest afresh;
        whether the session had a head (readable or not) before.

        ``head_read``: :meth:`_resumable` has just read the head, so no head means there is none.
        """
        old = None if head_read and self.state.version is None else self._old_head()
        had_head = old is not None or self.state.version is not None
        # Take the lease before touching any output: until this CAS the previous manifest, and
        # the in-progress files it points into, stay intact. A "starting" head resumes as a
        # fresh start.
        self.manifest = self._starting_manifest(source, old)
        self.state.commit(self.manifest)
        self.state.adopt(self.manifest)
        ours = {(sink.url, self.outputs[name].format): sink for name, sink in self.sinks.items()}
        for entry in old.sinks if old else []:  # the old run's in-progress outputs (uploads, files)
            sink = ours.get((entry["url"], entry.get("format", "raw")))
            if sink is not None:
                sink.discard(entry["handle"])
            else:  # an output the job no longer writes to
                with open_recorded_sink(entry, self.session) as dropped:
                    dropped.discard(entry["handle"])
        for sink in self.sinks.values():
            sink.start()
        started = self._flushed_sink_entries()
        if started != self.manifest.sinks:  # an S3 upload id: record it before any part goes up
            self.manifest.sinks = started
            self.manifest.seq += 1
            self.state.commit(self.manifest)
            self.state.adopt(self.manifest)
        self._start_guests()
        # No checkpoint here: one at offset 0 would resume exactly as a fresh start does (from the
        # "starting" head), and skipping it saves a small file most of its store writes.
        return had_head

    def _starting_manifest(self, source: Source, old: Manifest | None) -> Manifest:
        now = time.time()
        return Manifest(
            session=self.session,
            seq=(old.seq if old else 0) + 1,
            lease_epoch=(old.lease_epoch if old else 0) + 1,
            spec_sha256=self.spec_sha,
            state="starting",
            source={"url": source.url, "identity": source.identity, "offset": 0, "size": source.size},
            sinks=self._flushed_sink_entries(),  # so `pipeline rm` and gc find (and lock) the outputs at once
            stats={"started_at": now, "updated_at": now},
        )

    def _may_defer(self, source: Source, fresh: bool) -> bool:
        """Whether this run may publish with its fsyncs deferred to its group's barrier.

        Only a session with no head at all (nothing of an earlier run to protect), whose input
        fits in one chunk (it never checkpoints) and whose outputs are all local files (their
        locks, held until the group commits, fence it: it commits no ``starting`` lease), on
        filesystems whose ``syncfs`` the group's barriers can trust (:func:`barrier_covers`).
        """
        return (
            self.group is not None
            and not fresh
            and self.state.version is None
            and source.size is not None
            and source.size <= self.job.source.chunk_size
            and all(isinstance(sink, FileSink) and self.group.covers(sink.path.parent) for sink in self.sinks.values())
            and self.group.covers(self.group.store_directory)
        )

    def _start_deferred(self, source: Source) -> None:
        """Start a deferred run: no ``starting`` commit (its group commits ``complete`` only)."""
        self.manifest = self._starting_manifest(source, None)
        self.state.adopt(self.manifest)
        for sink in self.sinks.values():
            sink.start()
        self._start_guests()

    def _start_guests(self) -> None:
        self._new_guests()
        # Last stage first: a stage may emit from pl_init into the next, which must be ready.
        for index in reversed(range(len(self.guests))):
            guest = self.guests[index]
            try:
                guest.start(json.dumps(self.job.stages[index].config).encode())
            except (SpecError, GuestError) as exc:
                if type(exc) not in (SpecError, GuestError):
                    raise  # a trap or a timeout is not a config problem
                reason = guest.failure if isinstance(exc, GuestError) and guest.failure else exc.message
                label = self.job.stages[index].label
                raise SpecError(f"{self.job.path}: stages[{index}].config ({label}): {reason}") from exc

    def _old_head(self) -> Manifest | None:
        """The head a fresh start replaces (for its epoch and outputs), if it can be read."""
        try:
            return self.state.read_head()
        except SnapshotCorrupt:
            return None  # self.state.version is still set: the CAS replaces the damaged head

    def _resume(self, manifest: Manifest) -> None:
        # Take the lease first: from here on a run that still holds the old epoch cannot commit.
        manifest.lease_epoch += 1
        manifest.seq += 1
        self.state.commit(manifest)
        self.state.adopt(manifest)
        self.pages.remember(manifest)
        self.manifest = manifest
        self.offset = manifest.source["offset"]
        handles = {entry["name"]: entry["handle"] for entry in manifest.sinks}
        for name, sink in self.sinks.items():
            sink.recover(handles[name], finished=manifest.state == "finished")

    # -- output routing -------------------------------------------------------------------
    def _emitter(self, index: int) -> Callable[[int, memoryview], None]:
        next_stage = index + 1 if index + 1 < len(self.job.stages) else None
        module = self.modules[index]

        def emit(port: int, data: memoryview) -> None:
            if port == PORT_MAIN:
                if next_stage is None:
                    self.sinks[MAIN].write(data)
                else:
                    self.guests[next_stage].feed(data)
                return
            name = self.routes[index].get(port)
            if name is not None:
                self.sinks[name].write(data)
                return
            known = {p: n for n, p in module.outputs.items()}
            if module.declared or port not in known:
                stage = f"stage {index + 1} ({module.name})"
                raise GuestABIError(f"{stage} wrote to port {port}, which it does not declare")
            raise SpecError(
                f"{self.job.path.name}: stage {index + 1} ({module.name}) emitted to its {known[port]} output, "
                "which the job does not route anywhere",
                hint=f"add `{known[port]}: {{url: ...}}` to the job",
            )

        return emit

    # -- checkpoints ----------------------------------------------------------------------
    def _checkpoint(self, state: str) -> None:
        """Commit a manifest: sinks persist -> page blobs -> manifest CAS -> release old blobs.

        What needs the guests and sinks to stand still runs here: sinks flush, pages are hashed
        and the new ones copied. The durable part (sink syncs, blob writes, the CAS, the release)
        of a ``running`` checkpoint runs on the checkpoint thread while the guests go on; a
        ``finished`` or ``complete`` one runs here. At most one is in flight: each checkpoint
        first waits for the one before, and raises its error.
        """
        self._await_checkpoint()
        manifest = self.manifest
        assert manifest is not None
        self._flush_sinks()
        new_pages: dict[str, bytes] = {}
        if state == "running":
            manifest.stages = []
            for guest in self.guests:
                stage, new = self.pages.scan(guest, guest.stage)
                manifest.stages.append(stage)
                new_pages |= new
        elif state == "complete":
            manifest.stages = []  # nothing left to resume; the pages can go
        manifest.state = state
        manifest.seq += 1
        manifest.source["offset"] = self.offset
        # Publishing moves no bytes: a "complete" manifest keeps the figures the run took at its end.
        figures = {"updated_at": time.time()} if state == "complete" else self._stats()
        manifest.stats.update(figures, checkpoints=manifest.stats.get("checkpoints", 0) + 1)
        # The checkpoint thread gets its own copy: this thread changes the manifest next time.
        frozen = dataclasses.replace(
            manifest, source=dict(manifest.source), stats=dict(manifest.stats), stages=list(manifest.stages)
        )
        if state == "running":
            self._inflight = self._checkpointer.submit(self._commit, frozen, new_pages)
        else:
            self._commit(frozen, new_pages)

    def _sink_entries(self) -> list[dict[str, Any]]:
        """The manifest's ``sinks``: each output with the handle its ``sync()`` returns, which
        names exactly what that sync made durable of what the last ``flush()`` handed on."""
        return [
            {"name": name, "url": sink.url, "format": self.outputs[name].format, "handle": sink.sync()}
            for name, sink in self.sinks.items()
        ]

    def _flush_sinks(self) -> None:
        for sink in self.sinks.values():
            sink.flush()

    def _flushed_sink_entries(self) -> list[dict[str, Any]]:
        """:meth:`_sink_entries` after a flush, here on the run's thread (starting manifests)."""
        self._flush_sinks()
        return self._sink_entries()

    def _commit(self, manifest: Manifest, new_pages: dict[str, bytes]) -> None:
        """The durable half of a checkpoint, in DESIGN §4's order."""
        manifest.sinks = self._sink_entries()
        self.faults.reached("sinks-persisted")
        self.pages.write(new_pages, manifest.stages)
        self.faults.reached("blobs-written")
        manifest.stats["stored_bytes"] = manifest.stored_bytes()
        self.state.commit(manifest)
        if syncs := deferring():
            # A group's commit: the directory store only staged the manifest. What follows a
            # commit waits for its name, at the group's barrier (an owner's steps run in order).
            syncs.stage(functools.partial(self._committed, manifest))
        else:
            self._committed(manifest)

    def _committed(self, manifest: Manifest) -> None:
        """After a commit: count it, and forget what it replaced."""
        self.faults.reached("manifest-committed")
        self.checkpoints += 1
        self.state.release(manifest)
        self.pages.retain(self.state.referenced())
        self.faults.reached("released")

    def _await_checkpoint(self) -> None:
        """Wait for the checkpoint in flight, if any; its error is this run's."""
        inflight, self._inflight = self._inflight, None
        if inflight is not None:
            inflight.result()

    def _stats(self) -> dict[str, Any]:
        counters = [c for c in (g.counters() for g in self.guests) if c is not None]
        stats: dict[str, Any] = {
            "bytes_in": self.offset,
            "bytes_out": sum(s.length for s in self.sinks.values()),
            "updated_at": time.time(),
        }
        if counters:
            # Rows in: the first stage that counts records (a gunzip stage in front counts none).
            stats |= {
                "records_in": next((c[0] for c in counters if c[0]), 0),
                "records_out": counters[-1][1],
                "records_rejected": sum(c[2] for c in counters),
            }
        return stats

    def _result(self, resumed_from: int | None, seconds: float) -> RunResult:
        assert self.manifest is not None
        stats = self.manifest.stats  # as the run's end (or the resumed "finished" checkpoint) left them
        return RunResult(
            session=self.session,
            status="complete",
            resumed_from=resumed_from,
            bytes_in=self.offset,
            bytes_out=stats.get("bytes_out", 0),
            records_in=stats.get("records_in"),
            records_out=stats.get("records_out"),
            records_rejected=stats.get("records_rejected"),
            seconds=seconds,
            checkpoints=self.checkpoints,
            outputs={name: sink.url for name, sink in self.sinks.items()},
        )

    def _close_guests(self) -> None:
        for guest in self.guests:
            guest.close()
        self.guests = []

    def close(self) -> None:
        """Release everything the run holds: its checkpoint thread, sinks (and their locks), guests."""
        # Only reached with a checkpoint in flight when the run is already failing: that error
        # wins, and the checkpoint may land or not, as if the crash had come a moment later.
        with contextlib.suppress(Exception):
            self._await_checkpoint()
        self._checkpointer.shutdown(wait=True)
        for sink in self.sinks.values():
            sink.close()
        self._close_guests()
