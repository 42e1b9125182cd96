"""Batch jobs: one session per source file, safe to rerun from cron.

A job whose ``source.url`` is a glob, or that lists ``source.urls``, is a batch. Each matching
file becomes its own session (named after the job and the file, so it is stable across runs)
with its own outputs, rendered from ``{stem}`` / ``{name}`` templates. Rerunning the batch
processes new files, resumes interrupted ones and skips finished ones; a file that changed
since its session ran is refused like any resume onto different bytes. One failing file does
not stop the others.

``parallel`` files run at once in worker processes: a small file's session is mostly Python
(opening the store and sinks, starting its guest, two manifest commits), which threads would
run one at a time under the GIL. A job that keeps anything in ``memory://`` (which lives in one
process) runs its files on threads instead.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import dataclasses
import hashlib
import logging
import multiprocessing
import os
import re
import select
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Protocol

import fsspec

from pipeline._fs import url_scheme
from pipeline.connectors.source import Source, redact_url
from pipeline.errors import PipelineError, SnapshotCorrupt, SourceError
from pipeline.runner import RunResult, SessionGroup
from pipeline.session import SessionStore
from pipeline.spec import GLOB_CHARS, JobSpec, outputs_for
from pipeline.stores import open_store

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class Cancelled(PipelineError):
    """The batch was interrupted; each unfinished file resumes on the next run."""


@dataclass
class FileOutcome:
    """What happened to one file of a batch."""

    url: str
    session: str
    result: RunResult | None = None
    error: PipelineError | None = None


def expand_sources(job: JobSpec) -> list[str]:
    """The files a job covers: its one URL, or every match of its globs and lists, in order."""
    if not job.is_batch:
        return [job.source.url]
    urls: list[str] = []
    for pattern in job.source.patterns:
        if not GLOB_CHARS.search(pattern):
            urls.append(pattern)
            continue
        try:
            fs, path = fsspec.core.url_to_fs(pattern, **job.source.options)
            matches = sorted(fs.glob(path))
        except Exception as exc:  # any fsspec backend error, translated at this boundary
            raise SourceError(f"source {redact_url(pattern)}: cannot list: {exc}") from exc
        urls += [fs.unstrip_protocol(m) if "://" in pattern else m for m in matches]
    unique = list(dict.fromkeys(urls))
    if not unique:
        shown = ", ".join(redact_url(p) for p in job.source.patterns)
        raise SourceError(f"{job.path}: no files match {shown}", hint="check source.url / source.urls")
    return unique


def session_for(job: JobSpec, url: str) -> str:
    """The stable session id of one file of a batch (the job's name for a one-file job)."""
    if not job.is_batch:
        return job.name
    name = url.rstrip("/").rsplit("/", 1)[-1]
    digest = hashlib.sha256(url.encode()).hexdigest()[:8]
    return f"{job.name}.{_UNSAFE.sub('_', name)[:80]}.{digest}"


def job_for(job: JobSpec, url: str) -> JobSpec:
    """The one-file job for ``url``: its source and its rendered outputs."""
    if not job.is_batch:
        return job
    sink, outputs = outputs_for(job.path, url, job.sink, job.outputs)
    source = dataclasses.replace(job.source, url=url, patterns=())
    return dataclasses.replace(job, source=source, sink=sink, outputs=outputs)


@dataclass(frozen=True)
class _Files:
    """What every file of one batch run shares: the job and the run's options."""

    job: JobSpec
    store_url: str | None
    fresh: bool
    wait: bool

    def run(self, urls: list[str], stop: _StopFlag, report: Callable[[FileOutcome], None]) -> None:
        """Run files one after another, with their small sessions committed as groups; report
        each file's outcome (its error included) once it is final, in the order they end."""
        pending: list[FileOutcome] = []  # published, complete once the group commits them
        committing: list[tuple[Future[dict[str, PipelineError]], list[FileOutcome]]] = []

        def settle() -> None:  # report the commit in flight, once it is durable
            for future, outcomes in committing:
                failed = future.result()
                for outcome in outcomes:
                    outcome.error = failed.get(outcome.session)
                    if outcome.error is not None:
                        outcome.result = None
                    report(outcome)
            committing.clear()

        def commit() -> None:
            settle()
            if pending:
                committing.append((group.commit(), pending.copy()))
                pending.clear()

        def commit_and_report() -> None:  # before a long run: the pending ones must not wait for it
            commit()
            settle()

        try:
            group = SessionGroup(
                self.store_url or self.job.store, base_dir=self.job.base_dir, before_long_run=commit_and_report
            )
        except PipelineError as exc:
            for url in urls:
                report(FileOutcome(redact_url(url), session_for(self.job, url), error=exc))
            return
        try:
            for url in urls:
                outcome = self._run_one(group, url, stop)
                if outcome.error is None and outcome.session in group.pending:
                    pending.append(outcome)
                else:
                    report(outcome)
                if group.due:
                    commit()
            commit()
            settle()
        finally:
            group.close()

    def _run_one(self, group: SessionGroup, url: str, stop: _StopFlag) -> FileOutcome:
        """One file's session, unless the batch was interrupted; its error is its outcome."""
        outcome = FileOutcome(redact_url(url), session_for(self.job, url))
        if stop.is_set():
            outcome.error = _not_started()
            return outcome

        def cancel_between_chunks(done: int, total: int | None) -> None:
            if stop.is_set():
                raise Cancelled("interrupted; rerun the same command to resume")

        try:
            outcome.result = group.run(
                job_for(self.job, url),
                session=outcome.session,
                fresh=self.fresh,
                wait=self.wait,
                on_progress=cancel_between_chunks,
            )
        except PipelineError as exc:
            outcome.error = exc
        return outcome


def _groups(urls: list[str], parallel: int) -> list[list[str]]:
    """The files cut into runs of consecutive files, one per task: up to a full group of
    :class:`SessionGroup` each, but small enough that every worker gets a share."""
    size = max(1, min(SessionGroup.MAX_SESSIONS, len(urls) // (2 * parallel)))
    return [urls[i : i + size] for i in range(0, len(urls), size)]


class _StopFlag(Protocol):
    """Set when the batch is interrupted: a ``threading.Event`` on threads, shared memory across processes."""

    def is_set(self) -> bool: ...


def run_batch(
    job: JobSpec,
    *,
    parallel: int = 1,
    store_url: str | None = None,
    fresh: bool = False,
    wait: bool = False,
    on_done: Callable[[FileOutcome], None] | None = None,
) -> list[FileOutcome]:
    """Run every file of a batch job; returns one outcome per file, in file order.

    ``parallel`` > 1 runs that many files at once, in worker processes (on threads when the job
    keeps anything in ``memory://``, or in a daemonic process); ``on_done`` is called in this
    process as each file ends.
    """
    urls = expand_sources(job)
    files = _Files(job, store_url, fresh, wait)
    # A daemonic process (a multiprocessing pool's worker, say) may not start processes.
    if parallel > 1 and len(urls) > 1 and not _in_process_memory(job, store_url) and not _daemonic():
        return _Supervisor(files, parallel).run(urls, on_done)
    stop = threading.Event()
    done: dict[str, FileOutcome] = {}  # by session: one per file

    def report(outcome: FileOutcome) -> None:
        done[outcome.session] = outcome
        if on_done:
            on_done(outcome)

    pool = ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="pipeline-batch")
    try:
        for future in [pool.submit(files.run, group, stop, report) for group in _groups(urls, parallel)]:
            future.result()
        return [done[session_for(job, url)] for url in urls]
    except KeyboardInterrupt:
        stop.set()  # running sessions stop at their next chunk; each resumes on the next run
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _daemonic() -> bool:
    return bool(multiprocessing.current_process().daemon)


def _in_process_memory(job: JobSpec, store_url: str | None) -> bool:
    """Whether the job reads or writes ``memory://``, which worker processes would not share."""
    urls = [store_url or job.store, *job.source.patterns, job.sink.url, *(out.url for out in job.outputs.values())]
    return any(url_scheme(url).lower() == "memory" for url in urls)


# -- worker processes ------------------------------------------------------------------------
class _SharedFlag:
    """A stop flag in shared memory that needs no lock: a worker killed while reading it (the
    OOM killer, say) cannot leave it locked, as it could a ``multiprocessing.Event``."""

    def __init__(self, context: BaseContext) -> None:
        self._value = context.RawValue(ctypes.c_bool, False)

    def set(self) -> None:
        self._value.value = True

    def is_set(self) -> bool:
        return bool(self._value.value)


def _worker(
    conn: Connection, files: _Files, stop: _SharedFlag, batch_pid: int, environ: dict[str, str], log_level: int
) -> None:
    """A worker process: run the files the batch sends and send each outcome back (and its log
    records, for the batch's own handlers); None ends it."""
    os.environ.clear()  # the batch's environment now, not the forkserver's when it started
    os.environ.update(environ)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the batch decides about Ctrl-C: it sets `stop`
    threading.Thread(target=_die_with, args=(batch_pid,), name="pipeline-batch-watch", daemon=True).start()
    sending = threading.Lock()  # records may come from a session's checkpoint thread too

    def send(message: FileOutcome | logging.LogRecord) -> None:
        with sending:
            conn.send(message)

    logger = logging.getLogger("pipeline")
    logger.setLevel(log_level)
    logger.addHandler(_ToBatch(send))
    logger.propagate = False  # the forkserver's handlers, if any, are not the batch's
    with contextlib.suppress(EOFError):  # the batch is gone: the watch thread kills us anyway
        while (urls := conn.recv()) is not None:
            files.run(urls, stop, send)


class _ToBatch(logging.Handler):
    """Sends a worker's log records to the batch process, which hands them to its own handlers
    (the CLI's ``warning:`` lines, a script's logging setup)."""

    def __init__(self, send: Callable[[logging.LogRecord], None]) -> None:
        super().__init__()
        self._send = send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._send(_picklable(record))
        except Exception:  # the batch is gone or the record cannot go: as logging does
            self.handleError(record)


def _picklable(record: logging.LogRecord) -> logging.LogRecord:
    """The record with its message formatted and no arguments or traceback objects left
    (``logging.handlers.QueueHandler.prepare`` without a formatter)."""
    record = copy.copy(record)
    record.msg = record.getMessage()
    record.args = None
    if record.exc_info:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    record.exc_info = None
    return record


def _die_with(pid: int) -> None:
    """SIGKILL this worker as soon as the batch process has ended, however it ended.

    A worker is the forkserver's child, not the batch's, and holds the forkserver's liveness
    pipe itself, so neither a parent-death signal nor an EOF would reach it: without this, a
    SIGKILLed batch left its workers running (and holding their files' locks) for good. Dying
    at once is what the batch's own crash does to a thread: each session resumes from its last
    checkpoint on the next run.
    """
    try:
        watched = os.pidfd_open(pid)  # readable once the process has exited
    except ProcessLookupError:
        pass  # already gone
    except (AttributeError, OSError):  # no pidfds: not Linux, a kernel before 5.3, a seccomp filter
        while _alive(pid):
            time.sleep(0.5)
    else:
        select.select([watched], [], [])
    os.kill(os.getpid(), signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@dataclass
class _Running:
    process: BaseProcess
    conn: Connection
    urls: list[str] = dataclasses.field(default_factory=list)  # files given and not yet reported


class _Supervisor:
    """Runs a batch's files on worker processes, a run of consecutive files at a time each (one
    :class:`SessionGroup`), and replaces a worker that dies: only the files of its run not yet
    reported fail (``ProcessPoolExecutor`` failed every file left and terminated the other
    workers)."""

    def __init__(self, files: _Files, parallel: int) -> None:
        # forkserver: workers fork from a process that has imported the pipeline but started no
        # thread (a fork of this process could copy a lock some thread holds, and the guest
        # clock's thread would not follow).
        self.context = multiprocessing.get_context("forkserver")
        self.context.set_forkserver_preload(["pipeline._forkserver"])
        self.files = files
        self.parallel = parallel
        self.stop = _SharedFlag(self.context)
        self.workers: list[_Running] = []

    def run(self, urls: list[str], on_done: Callable[[FileOutcome], None] | None) -> list[FileOutcome]:
        """Each file's outcome, in file order; ``on_done`` is called here as each file ends."""
        todo = list(reversed(_groups(urls, self.parallel)))  # popped from the end: file order
        done: dict[str, FileOutcome] = {}

        def finish(url: str, outcome: FileOutcome) -> None:
            done[url] = outcome
            if on_done:
                on_done(outcome)

        interrupted = False
        try:
            for _ in range(min(self.parallel, len(todo))):
                self._give(self._start(), todo)
            while busy := [worker for worker in self.workers if worker.urls]:
                try:
                    ready = set(wait([w.conn for w in busy] + [w.process.sentinel for w in busy]))
                except KeyboardInterrupt:
                    # Running sessions stop at their next chunk (each resumes on the next run);
                    # their outcomes are still collected and reported.
                    interrupted = True
                    self.stop.set()
                    continue
                for worker in busy:
                    if worker.conn in ready or worker.process.sentinel in ready:
                        for url, outcome in self._collect(worker):
                            finish(url, outcome)
                        if not worker.urls:
                            self._give(self._replaced(worker, todo), todo)
        except KeyboardInterrupt:
            self.stop.set()
            raise
        finally:
            self._close()
        for group in reversed(todo):
            for url in group:
                finish(url, FileOutcome(redact_url(url), session_for(self.files.job, url), error=_not_started()))
        if interrupted:
            raise KeyboardInterrupt
        return [done[url] for url in urls]

    def _replaced(self, worker: _Running, todo: list[list[str]]) -> _Running:
        """``worker``, or if it died, a new one (when files are left to give it)."""
        if worker.process.is_alive():
            return worker
        worker.conn.close()
        worker.process.join()
        self.workers.remove(worker)
        return self._start() if todo and not self.stop.is_set() else worker

    def _start(self) -> _Running:
        """A new worker. SIGINT stays blocked here while it starts (a KeyboardInterrupt inside
        ``Process.start`` could leave it half started); one pressed meanwhile is raised after."""
        ours, theirs = self.context.Pipe()
        environ = dict(os.environ)
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            level = logging.getLogger("pipeline").getEffectiveLevel()
            process = self.context.Process(
                target=_worker, args=(theirs, self.files, self.stop, os.getpid(), environ, level), daemon=True
            )
            process.start()
            theirs.close()
            worker = _Running(process, ours)
            self.workers.append(worker)  # before a pending Ctrl-C is raised: _close must end it
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        return worker

    def _give(self, worker: _Running, todo: list[list[str]]) -> None:
        """The next files to ``worker``, or, when none are left (or the batch stops), its end."""
        if worker not in self.workers:
            return  # dead, and not replaced: nothing is left to give
        worker.urls = todo.pop() if todo and not self.stop.is_set() else []
        with contextlib.suppress(OSError):  # it died before it could take them: its sentinel says so next
            worker.conn.send(worker.urls or None)

    def _collect(self, worker: _Running) -> list[tuple[str, FileOutcome]]:
        """The next outcome ``worker`` reports (none for a log record, handed to this process's
        handlers), or, if it died, a failure for each file it held."""
        try:
            message: FileOutcome | logging.LogRecord = worker.conn.recv()
        except (EOFError, OSError):
            worker.process.join()
            code = worker.process.exitcode
            cause = f"killed by signal {-code}" if code is not None and code < 0 else f"exit status {code}"
            error = PipelineError(
                f"the worker process running this file died ({cause})", hint="rerun the same command to resume it"
            )
            lost, worker.urls = worker.urls, []
            return [(url, FileOutcome(redact_url(url), session_for(self.files.job, url), error=error)) for url in lost]
        if isinstance(message, logging.LogRecord):
            logging.getLogger(message.name).handle(message)
            return []
        outcome = message
        url = next(url for url in worker.urls if session_for(self.files.job, url) == outcome.session)
        worker.urls.remove(url)
        return [(url, outcome)]

    def _close(self) -> None:
        for worker in self.workers:
            with contextlib.suppress(OSError):
                worker.conn.send(None)
        for worker in self.workers:
            worker.process.join(timeout=30)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.conn.close()
        self.workers = []


def _not_started() -> Cancelled:
    return Cancelled("not started: the batch was interrupted")


@dataclass
class FileStatus:
    """One row of ``pipeline status``."""

    url: str
    session: str
    state: str  # new | starting | running | finished | complete | changed | damaged
    progress: float | None


def batch_status(job: JobSpec, *, store_url: str | None = None) -> list[FileStatus]:
    """Each file's state, read from the store without running anything."""
    store = open_store(store_url or job.store, base_dir=job.base_dir)
    rows = []
    try:
        for url in expand_sources(job):
            session = session_for(job, url)
            try:
                manifest = SessionStore(store, session).read_head()
            except SnapshotCorrupt:
                rows.append(FileStatus(redact_url(url), session, "damaged", None))
                continue
            if manifest is None:
                rows.append(FileStatus(redact_url(url), session, "new", None))
                continue
            state = manifest.state
            try:
                if Source(url, job.source.options).identity != manifest.source["identity"]:
                    state = "changed"
            except SourceError:
                state = "missing"
            size = manifest.source.get("size")
            progress = manifest.source["offset"] / size if size else None
            rows.append(FileStatus(redact_url(url), session, state, progress))
    finally:
        store.close()
    return rows
