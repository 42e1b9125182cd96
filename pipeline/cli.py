"""The ``pipeline`` command: a thin shell over :mod:`pipeline.runner`.

Every :class:`~pipeline.errors.PipelineError` is turned into one ``error:`` line (plus a
``hint:`` line) and a non-zero exit here, in exactly one place; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from pipeline import __version__
from pipeline.admin import collect_garbage, describe, format_time, remove_session, session_infos
from pipeline.batch import FileOutcome, batch_status, run_batch
from pipeline.errors import KeyNotFound, PipelineError, SpecError
from pipeline.inspect import inspect_module
from pipeline.runner import ProgressCallback, RunResult, run_session
from pipeline.runtime import resolve_guest_path
from pipeline.session import SessionStore
from pipeline.spec import DEFAULT_STORE, JobSpec, load_job, parse_duration
from pipeline.stores import SnapshotStore, open_store

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130


class _Group(click.Group):
    """Prints pipeline errors as one line instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PipelineError as exc:
            if ctx.meta.get("pipeline.debug"):
                raise
            click.secho(f"error: {exc.message}", fg="red", err=True)
            if exc.hint:
                click.echo(f"hint: {exc.hint}", err=True)
            ctx.exit(EXIT_ERROR)
        except KeyboardInterrupt:
            click.echo("interrupted; rerun the same command to resume from the last checkpoint", err=True)
            ctx.exit(EXIT_INTERRUPTED)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="pipeline")
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Durable streaming pipelines through sandboxed WebAssembly guests.

    \b
    Example:
        pipeline run examples/csv-map.yaml
    """
    ctx.meta["pipeline.debug"] = debug
    _show_warnings()


class _WarningLines(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        click.secho(f"warning: {record.getMessage()}", fg="yellow", err=True)


def _show_warnings() -> None:
    """Print the engine's warnings (a fallback to an older checkpoint, say) as one line each."""
    logger = logging.getLogger("pipeline")
    if not any(isinstance(h, _WarningLines) for h in logger.handlers):
        handler = _WarningLines(logging.WARNING)
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)


def store_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--store URL`` / ``--job JOB.yaml``: which snapshot store a command looks at."""

    @click.option("--store", "store_url", metavar="URL", help=f"Snapshot store (default: ./{DEFAULT_STORE}).")
    @click.option(
        "-j", "--job", "job_file", metavar="JOB.yaml", type=click.Path(dir_okay=False), help="Use this job's store."
    )
    @functools.wraps(command)
    def wrapper(*args: Any, store_url: str | None, job_file: str | None, **kwargs: Any) -> Any:
        if store_url:
            store = open_store(store_url, base_dir=Path.cwd())
        elif job_file:
            job = load_job(job_file)
            store = open_store(job.store, base_dir=job.base_dir)
        else:
            store = open_store(DEFAULT_STORE, base_dir=Path.cwd())
        try:
            return command(*args, store=store, **kwargs)
        finally:
            store.close()

    return wrapper


@cli.command()
@click.argument("job_file", metavar="JOB.yaml", type=click.Path(dir_okay=False))
@click.option("--fresh", is_flag=True, help="Start the session over instead of resuming it.")
@click.option("--store", "store_url", metavar="URL", help="Snapshot store (default: the job's `store:`).")
@click.option("--session", metavar="ID", help="Session id (default: the job's name).")
@click.option("--wait", is_flag=True, help="If another run holds the session, wait for it instead of stopping.")
@click.option(
    "-p",
    "--parallel",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Files at once (batch), in worker processes.",
)
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
def run(
    job_file: str, fresh: bool, store_url: str | None, session: str | None, wait: bool, parallel: int, quiet: bool
) -> None:
    """Run a job, resuming its session from the last checkpoint if it was interrupted.

    Rerunning a finished job on an unchanged input does nothing; a changed input or job is
    refused until you pass --fresh. A job over a glob or a list of files (a batch) runs one
    session per file: new files are processed, interrupted ones resumed, finished ones skipped,
    and the exit status is non-zero if any file failed.

    \b
    Example:
        pipeline run examples/csv-map.yaml
        pipeline run examples/csv-map.yaml --fresh --store /tmp/snapshots
        pipeline run nightly.yaml --parallel 4        # source: {url: "incoming/*.csv"}
    """
    job = load_job(job_file)
    if job.is_batch:
        if session:
            raise SpecError(f"{job_file}: --session names one session; a batch has one per file")
        _run_batch(job, store_url=store_url, fresh=fresh, wait=wait, parallel=parallel, quiet=quiet)
        return
    with _progress(enabled=not quiet and sys.stderr.isatty(), label=job.name) as on_progress:
        result = run_session(job, store_url=store_url, session=session, fresh=fresh, wait=wait, on_progress=on_progress)
    if not quiet:
        click.echo(summary_line(result))


def _run_batch(job: JobSpec, *, store_url: str | None, fresh: bool, wait: bool, parallel: int, quiet: bool) -> None:
    def report(outcome: FileOutcome) -> None:
        if outcome.error is not None:
            click.secho(f"{outcome.url}: error: {outcome.error.message}", fg="red", err=True)
        elif not quiet and outcome.result is not None:
            click.echo(summary_line(outcome.result))

    outcomes = run_batch(job, parallel=parallel, store_url=store_url, fresh=fresh, wait=wait, on_done=report)
    failed = [o for o in outcomes if o.error is not None]
    if not quiet or failed:
        click.echo(batch_table(job.name, outcomes), err=bool(failed) and quiet)
    if failed:
        raise click.exceptions.Exit(EXIT_ERROR)


def batch_table(name: str, outcomes: list[FileOutcome]) -> str:
    """The table that ends a batch run: one row per file, then the totals."""
    lines = [f"{'FILE':<40} {'STATUS':<17} {'ROWS IN':>10} {'OUT':>10} {'REJECTED':>9} {'MB IN':>8}"]
    counts: dict[str, int] = {}
    for outcome in outcomes:
        result = outcome.result
        status = "failed" if result is None else ("resumed" if result.resumed_from else _STATUS[result.status])
        counts[status] = counts.get(status, 0) + 1
        rows = [result.records_in, result.records_out, result.records_rejected] if result else [None] * 3
        shown = [f"{n:,}" if n is not None else "-" for n in rows]
        size = f"{result.bytes_in / 1e6:.1f}" if result else "-"
        lines.append(f"{_tail(outcome.url, 40):<40} {status:<17} {shown[0]:>10} {shown[1]:>10} {shown[2]:>9} {size:>8}")
    totals = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    lines.append(f"{name}: {len(outcomes)} file{'s' if len(outcomes) != 1 else ''} · {totals}")
    return "\n".join(lines)


_STATUS = {"complete": "complete", "already-complete": "already complete"}


def _tail(text: str, width: int) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1) :]


@cli.command()
@click.argument("job_file", metavar="JOB.yaml", type=click.Path(dir_okay=False))
@click.option("--store", "store_url", metavar="URL", help="Snapshot store (default: the job's `store:`).")
def status(job_file: str, store_url: str | None) -> None:
    """Show each file of a job: new, running (how far), complete or changed — without running it.

    \b
    Example:
        pipeline status nightly.yaml
    """
    job = load_job(job_file)
    rows = batch_status(job, store_url=store_url)
    click.echo(f"{'FILE':<50} {'STATE':<9} {'PROGRESS':>8}  SESSION")
    for row in rows:
        progress = f"{row.progress:.1%}" if row.progress is not None else "-"
        click.echo(f"{_tail(row.url, 50):<50} {row.state:<9} {progress:>8}  {row.session}")


@cli.command()
@store_options
def sessions(store: SnapshotStore) -> None:
    """List the sessions in a store: state, progress, last checkpoint, bytes stored.

    \b
    Example:
        pipeline sessions --job examples/csv-map.yaml
        pipeline sessions --store s3://bucket/snapshots
    """
    infos = session_infos(store)
    if not infos:
        click.echo(f"no sessions in {store.url}")
        return
    click.echo(f"{'SESSION':<24} {'STATE':<9} {'PROGRESS':>8}  {'LAST CHECKPOINT':<25} {'STORED':>10}")
    for info in infos:
        progress = f"{info.progress:.1%}" if info.progress is not None else "-"
        stored = f"{info.stored_bytes / 1024:,.0f} KiB"
        click.echo(f"{info.session:<24} {info.state:<9} {progress:>8}  {format_time(info.updated_at):<25} {stored:>10}")


@cli.command()
@click.argument("session")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@store_options
def show(session: str, as_json: bool, store: SnapshotStore) -> None:
    """Show a session's last checkpoint: source position, stages, sinks, counts.

    \b
    Example:
        pipeline show csv-map --job examples/csv-map.yaml
    """
    manifest = SessionStore(store, session).read_head()
    if manifest is None:
        raise KeyNotFound(f"{store.url}: no session {session!r}", hint="`pipeline sessions` lists them")
    if as_json:
        click.echo(json.dumps(asdict(manifest), indent=2, sort_keys=True))
        return
    for line in describe(manifest):
        click.echo(line)


@cli.command()
@click.argument("session")
@store_options
def rm(session: str, store: SnapshotStore) -> None:
    """Remove a session: its snapshots and in-progress outputs (published outputs stay).

    Refused while a run on this machine holds the session's local outputs. A run elsewhere
    writing only remote outputs cannot be seen: it stops at its next checkpoint, publishing
    nothing.

    \b
    Example:
        pipeline rm csv-map --job examples/csv-map.yaml
    """
    remove_session(store, session)
    click.echo(f"removed session {session!r}")


@cli.command()
@click.option(
    "--older-than", default="7d", show_default=True, help="Only touch sessions idle this long (no checkpoint since)."
)
@store_options
def gc(older_than: str, store: SnapshotStore) -> None:
    """Remove old complete sessions, and blobs no checkpoint references from other old sessions.

    Sessions with a checkpoint more recent than --older-than are left alone, so runs in
    progress are safe (keep it longer than your checkpoint interval takes to run).

    \b
    Example:
        pipeline gc --older-than 1d --store /var/lib/pipeline
    """
    report = collect_garbage(store, older_than=parse_duration(older_than, "--older-than", allow_zero=True))
    removed = ", ".join(report.sessions_removed) or "none"
    click.echo(f"removed sessions: {removed}; swept {report.keys_swept} unreferenced keys")


@cli.command()
@click.argument("guest", metavar="GUEST.wasm")
def inspect(guest: str) -> None:
    """Describe a guest module: imports, exports, ABI compatibility, memory, globals, hash.

    GUEST.wasm is a path or builtin:NAME.

    \b
    Example:
        pipeline inspect builtin:csv-map
        pipeline inspect my-guest.wasm
    """
    path = resolve_guest_path(guest)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SpecError(f"cannot read guest module {path}: {exc.strerror}") from exc
    for line in inspect_module(data, guest):
        click.echo(line)


@cli.command()
@click.option("--size", default="1GB", show_default=True, help="Input size of the csv and jsonl jobs.")
@click.option(
    "--jobs", default="csv,jsonl,small-files", show_default=True, help="Comma-separated jobs, or 'none' (with --rss)."
)
@click.option(
    "--threads",
    type=click.Choice(["default", "1", "both"]),
    default="both",
    show_default=True,
    help="Peers with their default threads, pinned to one, or both.",
)
@click.option("--files", default=10_000, show_default=True, type=click.IntRange(1), help="Small-files job: files.")
@click.option("--repeat", default=1, show_default=True, type=click.IntRange(1), help="Rounds; the table shows medians.")
@click.option(
    "--pairs",
    default=30,
    show_default=True,
    type=click.IntRange(0),
    help="csv: pairs of runs with checkpoints on and off, for the checkpoint overhead (0: none).",
)
@click.option("--tools", metavar="A,B", help="Only these tools (default: all).")
@click.option("--rss", "rss_sizes", metavar="SIZES", help="Also compare peak RSS at these sizes: 100MB,10GB.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("benchmarks/RESULTS.md"),
    show_default=True,
    help="Where the Markdown report goes ('-': stdout only).",
)
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), help="Scratch folder (default: temp).")
def bench(
    size: str,
    jobs: str,
    threads: str,
    files: int,
    repeat: int,
    pairs: int,
    tools: str | None,
    rss_sizes: str | None,
    out: Path,
    workdir: Path | None,
) -> None:
    """Run the same jobs with wasm-pipeline and its peers (DuckDB, polars, pyarrow, Python), side by side.

    Each tool runs in its own process on one generated input; every output must hold the same
    rows as wasm-pipeline's, or the tool is marked FAIL and the exit status is non-zero. Prints
    and writes a Markdown report: MB/s, rows/s, peak RSS, ratios, the machine. Peers need
    `pip install 'wasm-pipeline[bench]'`; a missing one shows as "not installed".

    \b
    Example:
        pipeline bench --size 200MB --repeat 3
        pipeline bench --jobs csv --threads 1 --out -
        pipeline bench --jobs csv --tools wasm-pipeline,wasm-pipeline-no-ckpt --pairs 60
        pipeline bench --jobs none --rss 100MB,10GB --out rss.md
    """
    from pipeline.bench import JOBS, BenchOptions, run_benchmarks
    from pipeline.spec import parse_size

    chosen = tuple(name for name in jobs.split(",") if name and name != "none")
    unknown = sorted(set(chosen) - set(JOBS))
    if unknown:
        raise SpecError(f"--jobs: unknown job {unknown[0]!r} (jobs: {', '.join(JOBS)}, none)")
    options = BenchOptions(
        size=parse_size(size, "--size"),
        jobs=chosen,
        threads=threads,
        files=files,
        repeat=repeat,
        pairs=pairs,
        rss_sizes=tuple(parse_size(s, "--rss") for s in (rss_sizes or "").split(",") if s),
        tools=tuple((tools or "").split(",")) if tools else (),
        workdir=workdir,
    )
    ctx = click.get_current_context()
    given = [(p.opts[-1], ctx.params[p.name or ""], p.default) for p in ctx.command.params]
    command = " ".join(["pipeline bench", *(f"{opt} {v}" for opt, v, default in given if v not in (None, default))])
    report = run_benchmarks(options, command=command, log=lambda line: click.echo(line, err=True))
    text = report.markdown()
    click.echo(text)
    if str(out) != "-":
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text)
        except OSError as exc:
            raise PipelineError(f"--out: cannot write {out}: {exc.strerror}") from exc
        click.echo(f"wrote {out}", err=True)
    if not report.ok:
        raise click.exceptions.Exit(EXIT_ERROR)


@contextmanager
def _progress(*, enabled: bool, label: str) -> Iterator[ProgressCallback | None]:
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(label, total=None)

        def update(done: int, total: int | None) -> None:
            progress.update(task, completed=done, total=total)

        yield update


def summary_line(result: RunResult) -> str:
    """The one line every run ends with."""
    counts = (
        f"{result.records_in:,} rows in, {result.records_out or 0:,} out, {result.records_rejected or 0:,} rejected · "
        if result.records_in is not None
        else ""
    )
    volume = f"{_mb(result.bytes_in)} in, {_mb(result.bytes_out)} out"
    if result.status == "already-complete":
        return f"{result.session}: already complete ({counts}{volume}); nothing to do (--fresh runs it again)"
    resumed = f" · resumed at byte {result.resumed_from:,}" if result.resumed_from else ""
    return (
        f"{result.session}: complete · {counts}{volume}"
        f" · {result.seconds:.2f} s · {result.mb_per_second:.1f} MB/s"
        f" · {result.checkpoints} checkpoint{'s' if result.checkpoints != 1 else ''}{resumed}"
    )


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="pipeline")
