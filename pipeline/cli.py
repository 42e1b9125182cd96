"""The ``pipeline`` command: a thin shell over :mod:`pipeline.runner`.

Every :class:`~pipeline.errors.PipelineError` is turned into one ``error:`` line (plus a
``hint:`` line) and a non-zero exit here, in exactly one place; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from pipeline import __version__
from pipeline.errors import PipelineError
from pipeline.runner import ProgressCallback, RunResult, run_session
from pipeline.spec import load_job

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


@cli.command()
@click.argument("job_file", metavar="JOB.yaml", type=click.Path(dir_okay=False))
@click.option("--fresh", is_flag=True, help="Start the session over instead of resuming it.")
@click.option("--store", "store_url", metavar="URL", help="Snapshot store (default: the job's `store:`).")
@click.option("--session", metavar="ID", help="Session id (default: the job's name).")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
def run(job_file: str, fresh: bool, store_url: str | None, session: str | None, quiet: bool) -> None:
    """Run a job, resuming its session from the last checkpoint if it was interrupted.

    Rerunning a finished job on an unchanged input does nothing; a changed input or job is
    refused until you pass --fresh.

    \b
    Example:
        pipeline run examples/csv-map.yaml
        pipeline run examples/csv-map.yaml --fresh --store /tmp/snapshots
    """
    job = load_job(job_file)
    with _progress(enabled=not quiet and sys.stderr.isatty(), label=job.name) as on_progress:
        result = run_session(job, store_url=store_url, session=session, fresh=fresh, on_progress=on_progress)
    if not quiet:
        click.echo(summary_line(result))


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
