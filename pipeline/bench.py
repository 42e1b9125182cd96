"""Side by side: the same jobs run by wasm-pipeline and by its peers, with outputs checked equal.

``pipeline bench`` (or ``python benchmarks/compare.py``) generates one input per job, runs every
tool on it in its own child process (so each peak RSS is its own), checks that every output holds
the same rows as wasm-pipeline's, and reports MB/s, rows/s, peak RSS and each tool's time as a
multiple of wasm-pipeline's, with the machine it ran on, as Markdown. The tools and the jobs are
in :mod:`pipeline._bench_tools`. A tool whose library is missing is reported "not installed"; a
tool whose rows differ is marked FAIL (and :attr:`Report.ok` is false).

``pairs`` measures the checkpoint overhead apart from the table: on the csv job's input,
wasm-pipeline with checkpoints at the default interval and without, in pairs of child processes
run back to back, the order alternating; :mod:`pipeline._bench_stats` turns the pairs into an
estimate with a confidence interval. The table's medians cannot resolve a few percent on a
machine whose runs move by 10%.

``rss_sizes`` adds a memory check: wasm-pipeline's csv job on inputs of each size (written to
disk by repeating one generated block), comparing peak RSS. A named pipe would save the disk,
but the source needs a seekable file.
"""

from __future__ import annotations

import csv
import datetime
import filecmp
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from importlib import metadata, util
from itertools import zip_longest
from pathlib import Path

from pipeline._bench_report import render
from pipeline._bench_stats import Overhead, paired_overhead
from pipeline._bench_tools import CHECKPOINT_OFF, NO_CHECKPOINTS, TOOLS, Tool
from pipeline.errors import PipelineError
from pipeline.testing.data import ORDERS_HEADER, write_events_jsonl, write_orders_csv, write_small_files

JOBS = ("csv", "jsonl", "small-files")
REFERENCE = "wasm-pipeline"
SMALL_FILE_BYTES = 1_000

_FORMATS = {"csv": "csv", "jsonl": "jsonl", "small-files": "jsonl"}
_NUMBER = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?")
_LIBRARIES = ("wasm-pipeline", "wasmtime", "duckdb", "polars", "pyarrow")
MiB = 1024 * 1024

Log = Callable[[str], None]


@dataclass
class BenchOptions:
    """What ``pipeline bench`` runs."""

    size: int = 1_000_000_000
    """Bytes of input for the csv and jsonl jobs."""
    jobs: tuple[str, ...] = JOBS
    threads: str = "both"
    """Peers with their ``default`` threads, pinned to ``1``, or ``both``."""
    files: int = 10_000
    repeat: int = 1
    """Rounds; every tool runs once per round, rounds interleaved, and the table shows medians."""
    pairs: int = 30
    """Interleaved pairs of csv runs with checkpoints on and off (0: none); see the module docstring."""
    pair_seconds: float = 5.0
    """How long a pair's runs last at least (the csv input's rows repeated where a run over it is
    shorter): the overhead is a share of runs that checkpoint several times at the default
    interval (one second), not of runs too short to take one."""
    rss_sizes: tuple[int, ...] = ()
    tools: tuple[str, ...] = ()
    """Only these tools (default: all)."""
    workdir: Path | None = None
    """Where the scratch folder goes (created if missing; default: the system's temp folder)."""


@dataclass
class ToolRun:
    """One row of a job's table: one tool at one thread setting, over every round."""

    tool: Tool
    threads: int | None
    """Requested threads; None is the tool's default."""
    seconds: list[float] = field(default_factory=list)
    peak_rss: int = 0
    """Bytes, the largest over the rounds."""
    effective_threads: int | None = None
    status: str = "ok"
    """ok | FAIL (rows differ) | error (the tool failed) | not installed."""
    detail: str = ""

    @property
    def median(self) -> float:
        """Median seconds over the rounds."""
        return statistics.median(self.seconds)

    @property
    def measured(self) -> bool:
        """Whether the row has figures: it ran, whatever its rows."""
        return bool(self.seconds) and self.status in ("ok", "FAIL")


@dataclass
class Pairs:
    """wasm-pipeline's csv runs with checkpoints (``on``) and without (``off``), pair by pair."""

    on: list[float] = field(default_factory=list)
    off: list[float] = field(default_factory=list)
    checkpoints: list[int] = field(default_factory=list)
    """Checkpoints each ``on`` run took (the final one at the end of the input included)."""
    on_wait: list[float] = field(default_factory=list)
    """Seconds each run's thread waited for a CPU (empty where the system does not say)."""
    off_wait: list[float] = field(default_factory=list)
    input_bytes: int = 0
    """Size of the csv input the pairs ran on (the job's, or longer: ``BenchOptions.pair_seconds``)."""

    @property
    def overhead(self) -> Overhead:
        """The checkpoints' share of the run time, with its confidence interval."""
        return paired_overhead(self.on, self.off)

    @property
    def overhead_less_waits(self) -> Overhead | None:
        """The same with each run's waits for a CPU taken out of its time: what other work on the
        machine adds, mostly, and with it the noise (a checkpoint thread that kept the run's
        thread from a CPU is taken out too; on a machine with a free core there is none)."""
        if len(self.on_wait) != len(self.on) or len(self.off_wait) != len(self.off):
            return None
        return paired_overhead(
            [t - w for t, w in zip(self.on, self.on_wait, strict=True)],
            [t - w for t, w in zip(self.off, self.off_wait, strict=True)],
        )


@dataclass
class JobReport:
    """One job: its input and every tool's figures."""

    job: str
    input_bytes: int
    rows_in: int
    files: int
    rows_out: int | None = None
    runs: list[ToolRun] = field(default_factory=list)
    pairs: Pairs | None = None
    """The checkpoint overhead's pairs (csv job, with both wasm-pipeline variants selected)."""

    def find(self, tool: str, threads: int | None = None, *, any_threads: bool = False) -> ToolRun | None:
        """The measured run of ``tool`` at ``threads`` (the first at any setting with ``any_threads``)."""
        for run in self.runs:
            if run.tool.name == tool and (any_threads or run.threads == threads) and run.measured:
                return run
        return None

    @property
    def reference(self) -> ToolRun | None:
        """The run every ratio is taken against: wasm-pipeline's first."""
        return self.find(REFERENCE, any_threads=True)


@dataclass
class RssPoint:
    """The csv job's wasm-pipeline run on one input size."""

    size: int
    seconds: float
    peak_rss: int


@dataclass
class Report:
    """Everything one ``pipeline bench`` invocation measured."""

    options: BenchOptions
    command: str
    jobs: list[JobReport] = field(default_factory=list)
    rss: list[RssPoint] = field(default_factory=list)
    machine: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """No tool gave different rows and none failed."""
        return all(run.status in ("ok", "not installed") for job in self.jobs for run in job.runs)

    def markdown(self) -> str:
        """The report: machine, one table per job, the targets, how it was measured."""
        return render(self)


# -- running ---------------------------------------------------------------------------------
def run_benchmarks(options: BenchOptions, *, command: str = "pipeline bench", log: Log = print) -> Report:
    """Run every selected job with every selected tool; see the module docstring."""
    report = Report(options, command, machine=machine_info())
    if options.workdir is not None:
        try:
            options.workdir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PipelineError(
                f"--workdir {options.workdir}: cannot create it: {exc.strerror}", hint="pass a folder you can write to"
            ) from exc
    with tempfile.TemporaryDirectory(prefix="pipeline-bench-", dir=options.workdir) as tmp:
        work = Path(tmp).resolve()  # the children run in their own folders
        for job in options.jobs:
            report.jobs.append(_run_job(job, work / job, options, log))
        if options.rss_sizes:
            report.rss = _rss_points(options.rss_sizes, work / "rss", log)
    return report


def _variants(job: str, options: BenchOptions) -> list[ToolRun]:
    runs = []
    for tool in TOOLS:
        if tool.job != job or (options.tools and tool.name not in options.tools):
            continue
        if not tool.threaded:
            runs.append(ToolRun(tool, None))
            continue
        settings = {"default": [None], "1": [1], "both": [None, 1]}[options.threads]
        runs += [ToolRun(tool, threads) for threads in settings]
    for run in runs:
        missing = [name for name in run.tool.needs if util.find_spec(name.split(".")[0]) is None]
        if missing:
            run.status, run.detail = "not installed", f"pip install {missing[0]}"
    return runs


def _make_input(job: str, folder: Path, options: BenchOptions) -> JobReport:
    folder.mkdir(parents=True)
    if job == "csv":
        path = folder / "orders.csv"
        rows = write_orders_csv(path, options.size)
        return JobReport(job, path.stat().st_size, rows, 1)
    if job == "jsonl":
        rows = write_events_jsonl(folder / "events.jsonl", options.size, invalid=False)
        return JobReport(job, (folder / "events.jsonl").stat().st_size, rows, 1)
    rows = write_small_files(folder / "files", options.files, size=SMALL_FILE_BYTES)
    size = sum(path.stat().st_size for path in (folder / "files").iterdir())
    return JobReport(job, size, rows, options.files)


def _input_path(job: str, folder: Path) -> Path:
    return folder / {"csv": "orders.csv", "jsonl": "events.jsonl", "small-files": "files"}[job]


def _run_job(job: str, folder: Path, options: BenchOptions, log: Log) -> JobReport:
    log(f"{job}: generating the input")
    report = _make_input(job, folder / "input", options)
    report.runs = _variants(job, options)
    source = _input_path(job, folder / "input")
    reference: Path | None = None
    for round_ in range(options.repeat):
        for index, run in enumerate(report.runs):
            if run.status not in ("ok", "FAIL") or (round_ and not run.seconds):
                continue
            out = folder / f"{index}-{run.tool.name}-r{round_}"
            out.mkdir()
            label = f"{job}: {run.tool.name} (threads {run.threads or 'default'}), round {round_ + 1}"
            log(f"{label} ...")
            try:
                result, peak = run_child(run.tool, run.threads, source, out)
            except ChildFailed as exc:
                run.status, run.detail = "error", str(exc)
                log(f"{label}: error: {exc}")
                continue
            run.seconds.append(result["seconds"])
            run.peak_rss = max(run.peak_rss, peak)
            run.effective_threads = result["threads"]
            output = Path(result["output"])
            if round_ == 0:
                if reference is None:
                    reference = output
                    report.rows_out = count_rows(output, _FORMATS[job])
                    continue  # kept until the job is done: every other output is compared with it
                problem = compare_outputs(reference, output, _FORMATS[job])
                if problem:
                    run.status, run.detail = "FAIL", problem
                    log(f"{label}: FAIL: {problem}")
            if job != "small-files":
                # Outputs of many files stay until the job is done: deleting tens of thousands of
                # files makes file creation slow for minutes after on some disks (ext4 without a
                # journal scans recently deleted inodes: 31 -> 468 us a file here), which would
                # charge one tool's cleanup to the next tool's time.
                shutil.rmtree(out)
    report.pairs = _run_pairs(report, source, folder, options.pairs, options.pair_seconds, log)
    shutil.rmtree(folder)
    return report


def _run_pairs(report: JobReport, source: Path, folder: Path, count: int, least: float, log: Log) -> Pairs | None:
    """``count`` pairs of runs with checkpoints on and off, back to back, the order alternating,
    each run ``least`` seconds or more (see :func:`_pairs_input`)."""
    on, off = report.find(REFERENCE), report.find(NO_CHECKPOINTS)
    if not count or on is None or off is None or not on.seconds:
        return None
    source = _pairs_input(source, folder, on.median, least, log)
    pairs = Pairs(input_bytes=source.stat().st_size)
    for index in range(count):
        seconds: dict[str, float] = {}
        waits: dict[str, float] = {}
        for run in (on, off) if index % 2 == 0 else (off, on):
            out = folder / f"pair-{index}-{run.tool.name}"
            out.mkdir()
            try:
                result, _ = run_child(run.tool, run.threads, source, out)
            except ChildFailed as exc:
                run.status, run.detail = "error", f"checkpoint overhead pairs: {exc}"
                log(f"{report.job}: {run.tool.name}, pair {index + 1}: error: {exc}")
                return None
            seconds[run.tool.name] = float(result["seconds"])  # type: ignore[arg-type]
            if "cpu_wait" in result:
                waits[run.tool.name] = float(result["cpu_wait"])  # type: ignore[arg-type]
            if run is on:
                pairs.checkpoints.append(int(result.get("checkpoints", 0)))  # type: ignore[call-overload]
            shutil.rmtree(out)
        pairs.on.append(seconds[on.tool.name])
        pairs.off.append(seconds[off.tool.name])
        if len(waits) == 2:
            pairs.on_wait.append(waits[on.tool.name])
            pairs.off_wait.append(waits[off.tool.name])
        times = f"{pairs.on[-1]:.3f} / {pairs.off[-1]:.3f} s"
        log(f"{report.job}: checkpoints on / off, pair {index + 1} of {count}: {times}")
    return pairs


def _pairs_input(source: Path, folder: Path, seconds: float, least: float, log: Log) -> Path:
    """The csv input for the pairs: ``source``, or where a run over it takes ``seconds``, less
    than ``least``, its rows repeated until one would last that long (ids repeat; the pairs
    compare times, not rows). ``source`` itself when the disk has no room for it."""
    repeats = math.ceil(least / seconds) if seconds > 0 else 1
    if repeats <= 1:
        return source
    body = source.stat().st_size - len(ORDERS_HEADER)
    size = len(ORDERS_HEADER) + repeats * body
    if shutil.disk_usage(folder).free < size + size // 2 + 256 * MiB:  # the output is about half
        log(f"csv: no room for a {size / 1e9:.1f} GB input for the checkpoint pairs: the pairs use the csv input")
        return source
    longer = folder / "pairs.csv"
    log(f"csv: writing a {size / 1e9:.1f} GB input for the checkpoint pairs (runs of {least:g} s or more)")
    with open(source, "rb") as src, open(longer, "wb") as out:
        out.write(ORDERS_HEADER.encode())
        for _ in range(repeats):
            src.seek(len(ORDERS_HEADER))
            shutil.copyfileobj(src, out, 16 * MiB)
    return longer


class ChildFailed(Exception):
    """A tool's child process exited with an error; the message is the end of its output."""


def run_child(tool: Tool, threads: int | None, source: Path, out: Path) -> tuple[dict[str, object], int]:
    """Run ``tool`` once in a child process; return its ``result.json`` and its peak RSS in bytes.

    The peak is the child's own ``VmHWM``; ``ru_maxrss`` from ``wait4`` (which also counts this
    process's RSS at fork) only where there is no ``/proc``.
    """
    # The child imports the pipeline this process runs, whatever its working directory holds.
    home = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [home, os.environ.get("PYTHONPATH")])))
    if threads:
        env["POLARS_MAX_THREADS"] = str(threads)  # read once, when polars is imported
    command = [sys.executable, "-m", "pipeline._bench_tools", tool.job, tool.name, str(threads or 0), str(source)]
    log_path = out / "log.txt"
    with open(log_path, "wb") as log_file:
        child = subprocess.Popen([*command, str(out)], stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=out)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        lines = log_path.read_text(errors="replace").strip().splitlines()
        raise ChildFailed(lines[-1] if lines else f"exit status {child.returncode}")
    result = json.loads((out / "result.json").read_text())
    return result, result.get("peak_rss") or usage.ru_maxrss * 1024  # Linux: KiB


# -- comparing outputs -----------------------------------------------------------------------
def _canonical(text: str) -> str:
    """A number in one spelling (``284.20``, ``284.2`` and ``2.842e2`` agree); other text as is."""
    if _NUMBER.fullmatch(text.strip()):
        return format(Decimal(text.strip()).normalize(), "f")
    return text


def _json_value(value: object) -> str:
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def normalised_rows(path: Path, fmt: str) -> Iterator[tuple[str, ...]]:
    """The rows of an output (a file, or a folder of files in name order) as comparable tuples.

    CSV: every field, numbers in one spelling, the header a row like the others. JSONL: the
    ``key=value`` pairs of each object in order, numbers in one spelling.
    """
    for file in sorted(path.iterdir()) if path.is_dir() else [path]:
        with open(file, newline="", encoding="utf-8") as f:
            if fmt == "csv":
                for row in csv.reader(f):
                    if row:
                        yield tuple(_canonical(value) for value in row)
                continue
            for line in f:
                if not line.strip():
                    continue
                value = json.loads(line, parse_float=Decimal, parse_int=Decimal)
                if not isinstance(value, dict):
                    yield ("<not an object>", line.rstrip("\n"))
                    continue
                yield tuple(f"{key}={_json_value(item)}" for key, item in value.items())


def count_rows(path: Path, fmt: str) -> int:
    """Data rows in an output (a CSV's header is not one)."""
    rows = sum(1 for _ in normalised_rows(path, fmt))
    return rows - 1 if fmt == "csv" and not path.is_dir() else rows


def compare_outputs(reference: Path, other: Path, fmt: str) -> str | None:
    """None if ``other`` holds the rows of ``reference`` in the same order, else where they first differ."""
    if reference.is_file() and other.is_file() and filecmp.cmp(reference, other, shallow=False):
        return None
    end = ("<end of output>",)
    pairs = zip_longest(normalised_rows(reference, fmt), normalised_rows(other, fmt), fillvalue=end)
    for number, (want, got) in enumerate(pairs, 1):
        if want != got:
            return f"row {number}: expected {list(want)}, got {list(got)}"
    return None


# -- the memory check ------------------------------------------------------------------------
def _rss_points(sizes: tuple[int, ...], folder: Path, log: Log) -> list[RssPoint]:
    from pipeline._bench_tools import find_tool

    folder.mkdir(parents=True)
    body = folder / "body.csv"
    write_orders_csv(body, min(64 * MiB, max(sizes)))
    tile = body.read_bytes()[len(ORDERS_HEADER) :]
    body.unlink()
    points = []
    for size in sizes:
        needed = size + size // 2 + 256 * MiB  # the output is about half the input
        if shutil.disk_usage(folder).free < needed:
            raise PipelineError(
                f"--rss: the {size / 1e9:.1f} GB memory check needs {needed / 1e9:.1f} GB free in {folder}",
                hint="free some disk space or pass --workdir on a larger disk",
            )
        source = folder / f"orders-{size}.csv"
        _write_tiled(source, tile, size)
        out = folder / f"out-{size}"
        out.mkdir()
        log(f"rss: wasm-pipeline on a {size / 1e6:,.0f} MB csv ...")
        try:
            result, peak = run_child(find_tool("csv", REFERENCE), None, source, out)
        except ChildFailed as exc:
            raise PipelineError(f"--rss: wasm-pipeline on the {size / 1e6:,.0f} MB input failed: {exc}") from exc
        points.append(RssPoint(size, float(result["seconds"]), peak))  # type: ignore[arg-type]
        shutil.rmtree(out)
        source.unlink()
    return points


def _write_tiled(path: Path, tile: bytes, size: int) -> None:
    """The header, then ``tile`` over and over, whole rows only, up to ``size`` bytes.

    Ids repeat from tile to tile (this input measures memory, not rows); a 10 GB input is written
    at disk speed instead of the generator's ~25 MB/s.
    """
    with open(path, "wb") as out:
        out.write(ORDERS_HEADER.encode())
        remaining = size - len(ORDERS_HEADER)
        while remaining >= len(tile):
            out.write(tile)
            remaining -= len(tile)
        out.write(tile[: tile.rfind(b"\n", 0, remaining) + 1])


# -- the machine -----------------------------------------------------------------------------
def machine_info() -> dict[str, str]:
    """CPU, cores, RAM, OS, Python and library versions, and the date, for the report."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    info = {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "CPU": f"{cpu} ({platform.machine()})",
        "cores": str(os.cpu_count()),
        "RAM": f"{ram / 2**30:.1f} GiB",
        "OS": platform.platform(),
        "Python": f"{platform.python_version()} ({platform.python_implementation()})",
    }
    for name in _LIBRARIES:
        try:
            info[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            info[name] = "not installed"
    commit = _git_commit()
    if commit:
        info["wasm-pipeline"] += f" (git {commit})"
    return info


def _git_commit() -> str | None:
    """The commit of the pipeline being measured, when it runs from a git checkout."""
    home = Path(__file__).resolve().parent.parent
    try:
        done = subprocess.run(["git", "-C", str(home), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    except OSError:
        return None
    return done.stdout.strip() if done.returncode == 0 else None


__all__ = [
    "CHECKPOINT_OFF",
    "JOBS",
    "BenchOptions",
    "JobReport",
    "Pairs",
    "Report",
    "ToolRun",
    "compare_outputs",
    "count_rows",
    "normalised_rows",
    "run_benchmarks",
]
