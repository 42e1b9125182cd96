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

import dataclasses
import hashlib
import multiprocessing
import os
import re
import select
import signal
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Protocol

import fsspec

from pipeline._fs import url_scheme
from pipeline.connectors.source import Source, redact_url
from pipeline.errors import PipelineError, SnapshotCorrupt, SourceError
from pipeline.runner import RunResult, run_session
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

    def run(self, url: str, stop: _StopFlag) -> FileOutcome:
        """One file's session, unless the batch was interrupted; its error is its outcome."""
        outcome = FileOutcome(redact_url(url), session_for(self.job, url))
        if stop.is_set():
            outcome.error = Cancelled("not started: the batch was interrupted")
            return outcome

        def cancel_between_chunks(done: int, total: int | None) -> None:
            if stop.is_set():
                raise Cancelled("interrupted; rerun the same command to resume")

        try:
            outcome.result = run_session(
                job_for(self.job, url),
                store_url=self.store_url,
                session=outcome.session,
                fresh=self.fresh,
                wait=self.wait,
                on_progress=cancel_between_chunks,
            )
        except PipelineError as exc:
            outcome.error = exc
        return outcome


class _StopFlag(Protocol):
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
    keeps anything in ``memory://``); ``on_done`` is called in this process as each file ends.
    """
    urls = expand_sources(job)
    files = _Files(job, store_url, fresh, wait)
    if parallel > 1 and len(urls) > 1 and not _in_process_memory(job, store_url):
        return _run_in_processes(files, urls, parallel, on_done)
    stop = threading.Event()

    def one(url: str) -> FileOutcome:
        outcome = files.run(url, stop)
        if on_done:
            on_done(outcome)
        return outcome

    pool = ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="pipeline-batch")
    try:
        futures = [pool.submit(one, url) for url in urls]
        return [future.result() for future in futures]
    except KeyboardInterrupt:
        stop.set()  # running sessions stop at their next chunk; each resumes on the next run
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _in_process_memory(job: JobSpec, store_url: str | None) -> bool:
    """Whether the job reads or writes ``memory://``, which worker processes would not share."""
    urls = [store_url or job.store, *job.source.patterns, job.sink.url, *(out.url for out in job.outputs.values())]
    return any(url_scheme(url).lower() == "memory" for url in urls)


# -- worker processes ------------------------------------------------------------------------
_FILES_PER_TASK = 8
"""Files a worker takes at a time, at most: fewer round trips to the parent, still an even spread."""

_worker_stop: _StopFlag | None = None


def _start_worker(stop: _StopFlag, batch_pid: int) -> None:
    """In each worker: the batch decides about Ctrl-C (it sets ``stop``); die with the batch."""
    global _worker_stop
    _worker_stop = stop
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(os, "pidfd_open"):  # Linux
        threading.Thread(target=_die_with, args=(batch_pid,), name="pipeline-batch-watch", daemon=True).start()


def _die_with(pid: int) -> None:
    """SIGKILL this worker as soon as the batch process has ended, however it ended.

    A worker is the forkserver's child, not the batch's, and holds the forkserver's liveness
    pipe itself, so neither a parent-death signal nor an EOF would reach it: without this, a
    SIGKILLed batch left its workers running (and holding their files' locks) for good. Dying
    at once is what the batch's own crash does to a thread: each session resumes from its last
    checkpoint on the next run.
    """
    try:
        watched = os.pidfd_open(pid)
    except ProcessLookupError:
        os.kill(os.getpid(), signal.SIGKILL)
    select.select([watched], [], [])  # readable once the process has exited
    os.kill(os.getpid(), signal.SIGKILL)


def _run_files(files: _Files, urls: list[str]) -> list[FileOutcome]:
    assert _worker_stop is not None, "_start_worker did not run"
    return [files.run(url, _worker_stop) for url in urls]


def _run_in_processes(
    files: _Files, urls: list[str], parallel: int, on_done: Callable[[FileOutcome], None] | None
) -> list[FileOutcome]:
    # forkserver: workers fork from a process that has imported the pipeline but started no
    # thread (a fork of this process could copy a lock some thread holds, and the guest clock's
    # thread would not follow).
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["pipeline.batch"])
    stop = context.Event()
    per_task = max(1, min(_FILES_PER_TASK, len(urls) // (parallel * 4)))  # a few tasks per worker at least
    tasks = [urls[i : i + per_task] for i in range(0, len(urls), per_task)]
    workers = min(parallel, len(tasks))
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=(stop, os.getpid()))
    try:
        futures = {pool.submit(_run_files, files, task): task for task in tasks}
        done: dict[str, FileOutcome] = {}
        for future in as_completed(futures):
            task = futures[future]
            try:
                outcomes = future.result()
            except BrokenProcessPool as exc:
                outcomes = [_worker_died(files, url, exc) for url in task]
            for url, outcome in zip(task, outcomes, strict=True):
                done[url] = outcome
                if on_done:
                    on_done(outcome)
        return [done[url] for url in urls]
    except KeyboardInterrupt:
        stop.set()  # running sessions stop at their next chunk; each resumes on the next run
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _worker_died(files: _Files, url: str, exc: BaseException) -> FileOutcome:
    error = PipelineError(
        f"a worker process of the batch died before this file was done ({exc})",
        hint="rerun the same command to resume it",
    )
    return FileOutcome(redact_url(url), session_for(files.job, url), error=error)


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
