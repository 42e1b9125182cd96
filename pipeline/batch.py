"""Batch jobs: one session per source file, safe to rerun from cron.

A job whose ``source.url`` is a glob, or that lists ``source.urls``, is a batch. Each matching
file becomes its own session (named after the job and the file, so it is stable across runs)
with its own outputs, rendered from ``{stem}`` / ``{name}`` templates. Rerunning the batch
processes new files, resumes interrupted ones and skips finished ones; a file that changed
since its session ran is refused like any resume onto different bytes. Files run on
``parallel`` threads (wasm calls release the GIL); one failing file does not stop the others.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import fsspec

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


def run_batch(
    job: JobSpec,
    *,
    parallel: int = 1,
    store_url: str | None = None,
    fresh: bool = False,
    wait: bool = False,
    on_done: Callable[[FileOutcome], None] | None = None,
) -> list[FileOutcome]:
    """Run every file of a batch job; returns one outcome per file, in file order."""
    urls = expand_sources(job)
    stop = threading.Event()

    def cancel_between_chunks(done: int, total: int | None) -> None:
        if stop.is_set():
            raise Cancelled("interrupted; rerun the same command to resume")

    def one(url: str) -> FileOutcome:
        outcome = FileOutcome(redact_url(url), session_for(job, url))
        if stop.is_set():
            outcome.error = Cancelled("not started: the batch was interrupted")
        else:
            try:
                outcome.result = run_session(
                    job_for(job, url),
                    store_url=store_url,
                    session=outcome.session,
                    fresh=fresh,
                    wait=wait,
                    on_progress=cancel_between_chunks,
                )
            except PipelineError as exc:
                outcome.error = exc
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
