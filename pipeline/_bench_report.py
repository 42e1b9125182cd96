"""The Markdown report of :mod:`pipeline.bench`: machine, one table per job, targets, method."""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline._bench_stats import Overhead
    from pipeline.bench import JobReport, Report, ToolRun

MiB = 1024 * 1024
CHECKPOINT_TARGET = 0.03

_TITLES = {
    "csv": "CSV → select, rename, upper, numeric filter → CSV",
    "jsonl": "JSONL → filter (type, numeric amount) + project (nested fields) → JSONL",
    "small-files": "many 1 KB JSONL files, the jsonl job on each, one durable session per file",
}

METHOD = """\
- Every tool runs in its own child process on the same generated input; the time is the wall
  time of the job inside that process, after its libraries are imported (wasm-pipeline's guest
  comes from wasmtime's on-disk compile cache, as on any second run). Peak RSS is the child's
  own `VmHWM` (interpreter and libraries included; not `ru_maxrss`, which counts the parent's
  RSS at fork). Rounds are interleaved (every tool once per round); the table shows medians.
- Outputs are compared row by row with wasm-pipeline's, in order, after parsing: CSV fields and
  JSON values compared as text, numbers as decimals (`284.20` = `284.2`). A tool whose rows
  differ is marked FAIL.
- wasm-pipeline runs as a user would run it: a job file, the local directory store
  (`.pipeline` next to the job), checkpoints every second (the default), exactly-once file sinks
  (fsync at every checkpoint, atomic publish), and a rejects output. `wasm-pipeline-no-ckpt` is the
  same job with `checkpoint: {every: 1TiB}`: its difference to wasm-pipeline is the checkpoint
  overhead; `wasm-pipeline-8mib` checkpoints every 8 MiB of input (the default before it became
  a time), to show what a fine-grained interval costs. wasm-pipeline and the Python scripts
  also write rejected rows to a rejects file; the peers drop them (DuckDB `ignore_errors`,
  polars/pyarrow casts that give null).
- The checkpoint overhead in the targets comes from `--pairs` pairs of child processes apart from
  the rounds: wasm-pipeline and `wasm-pipeline-no-ckpt` on the csv input, back to back, the
  order alternating from pair to pair, so both runs of a pair see about the same machine. Where
  a run over the csv input takes less than 5 s, the pairs run on its rows repeated until one
  takes that long: several checkpoints a run at the default interval, not a run too short for one. The
  estimate is the Hodges-Lehmann median of the pairs' log time ratios, shown as a share of the
  checkpointing run's time; its interval comes from the exact distribution of Wilcoxon's
  signed-rank statistic. Its one assumption, that a pair's noise is symmetric, holds because the
  two runs of a pair are exchangeable but for the checkpoints. The target counts as met when
  the whole interval lies below it. The same figure "less the waits for a CPU" takes out of each
  run's time what its thread spent ready to run while other work held the CPUs (Linux
  `schedstat`): most of the noise, and also any wait the checkpoint thread itself caused, which
  a machine with a free core does not have. It decides the verdict only when the wall time's
  interval holds the target, and the verdict says so.
- Peers run with their default threads and pinned to one (DuckDB `SET threads=1`, polars
  `POLARS_MAX_THREADS=1`, pyarrow `set_cpu_count(1)` + `set_io_thread_count(1)`); the threads
  column shows what the tool reports. wasm-pipeline runs one session on one thread; on small
  files its threads are `--parallel N` worker processes, and its peak RSS is the batch
  process's own (each worker, and the forkserver they fork from, peak at about as much).
- The JSONL input holds no invalid lines: polars' `scan_ndjson` stops at the first one and has no
  option to skip it. The small-files input does hold some (only wasm-pipeline and Python run it).
- Small files: `python-json` writes each file's two outputs and nothing else; `python-json-durable`
  also publishes them as a durable sink must (temp file, fsync, rename, directory fsync), with no
  session state: the floor of a durable per-file publish on this disk.
- The machine is shared with other work: figures are noisy; compare the ratios more than the
  absolute numbers."""


def _size(n: int) -> str:
    return f"{n / MiB:,.0f} MiB"


def _threads(run: ToolRun) -> str:
    shown = str(run.effective_threads) if run.effective_threads is not None else "?"
    if run.tool.threaded and run.threads is None:
        return f"{shown} (default)"
    return shown


def _rows_cell(run: ToolRun) -> str:
    if run.status == "ok":
        return "equal"
    return f"{run.status}: {run.detail}".replace("|", "\\|")


def _job_section(job: JobReport, repeat: int) -> list[str]:
    reference = job.reference
    rows_out = f"{job.rows_out:,}" if job.rows_out is not None else "?"
    files = f" in {job.files:,} files" if job.job == "small-files" else ""
    lines = [
        f"## {job.job}: {_TITLES[job.job]}",
        "",
        f"Input {job.input_bytes / 1e6:,.1f} MB{files}, {job.rows_in:,} rows; {rows_out} rows out. "
        f"Seconds: median of {repeat} round{'s' if repeat != 1 else ''}.",
        "",
    ]
    per_file = job.job == "small-files"
    head = ["tool", "threads", "seconds", *(["files/s"] if per_file else []), "MB/s", "rows/s", "peak RSS"]
    head += ["time ÷ wasm-pipeline's", "rows"]
    lines += ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 2) + "---|"]
    for run in job.runs:
        if not run.measured:
            cells = [run.tool.name, _threads(run) if run.effective_threads else "", *[""] * (len(head) - 3)]
            lines.append("| " + " | ".join([*cells, _rows_cell(run)]) + " |")
            continue
        seconds = run.median
        cells = [run.tool.name, _threads(run), f"{seconds:.2f}"]
        if per_file:
            cells.append(f"{job.files / seconds:,.0f}")
        cells += [f"{job.input_bytes / 1e6 / seconds:,.1f}", f"{job.rows_in / seconds:,.0f}", _size(run.peak_rss)]
        cells.append(f"{seconds / reference.median:.2f}" if reference else "")
        lines.append("| " + " | ".join([*cells, _rows_cell(run)]) + " |")
    return [*lines, ""]


def _ratio_target(name: str, job: JobReport | None, peer: str, want: float) -> tuple[str, str, str]:
    text = f"{name}: ≥ {want:g}x {peer} pinned to one thread"
    if job is None or job.reference is None or (other := job.find(peer, 1)) is None:
        return text, "not measured", "—"
    ratio = other.median / job.reference.median
    return text, f"{ratio:.2f}x ({other.median:.2f} s vs {job.reference.median:.2f} s)", _verdict(ratio >= want)


def _verdict(met: bool) -> str:
    return "met" if met else "**not met**"


def _interval(overhead: Overhead) -> str:
    if overhead.low is None or overhead.high is None:
        return "too few pairs for an interval"
    return f"{overhead.confidence:.0%} interval {overhead.low:.1%} to {overhead.high:.1%}"


def _checkpoint_target(csv: JobReport | None) -> tuple[str, str, str]:
    """The overhead from the interleaved pairs; the table's medians only as a hint when there are none."""
    text = f"csv: checkpoint overhead < {CHECKPOINT_TARGET:.0%} of run time at the default interval"
    off = csv.find("wasm-pipeline-no-ckpt") if csv else None
    if csv is None or csv.reference is None or off is None:
        return text, "not measured", "—"
    fine = csv.find("wasm-pipeline-8mib")
    table = (csv.reference.median - off.median) / csv.reference.median
    rounds = f"{len(off.seconds)} round{'s' if len(off.seconds) != 1 else ''}"
    if csv.pairs is None:
        measured = f"{table:.1%} from the table's medians of {rounds}, too noisy to judge (run with `--pairs`)"
        return text, measured, "—"
    overhead = csv.pairs.overhead
    measured = (
        f"{overhead.estimate:.1%} ({_interval(overhead)}; {overhead.pairs} interleaved pairs on a "
        f"{csv.pairs.input_bytes / 1e9:.1f} GB input, medians "
        f"{statistics.median(csv.pairs.on):.2f} s vs {statistics.median(csv.pairs.off):.2f} s, "
        f"{statistics.median(csv.pairs.checkpoints):g} checkpoints a run)"
    )
    if less_waits := csv.pairs.overhead_less_waits:
        measured += f"; less the waits for a CPU: {less_waits.estimate:.1%} ({_interval(less_waits)})"
    measured += f"; the table's medians: {table:.1%}"
    if fine:
        measured += f"; every 8 MiB, table medians: {(fine.median - off.median) / fine.median:.1%}"
    if not any(csv.pairs.checkpoints):  # done within one interval: the runs with checkpoints took none
        return text, measured, "— (no checkpoint within the runs: the input is too small)"
    verdict = _side(overhead)
    if verdict is None and less_waits and (verdict := _side(less_waits)):
        verdict += " less the waits for a CPU (wall time unresolved)"
    return text, measured, verdict or f"unresolved (the interval holds {CHECKPOINT_TARGET:.0%}: more `--pairs`)"


def _side(overhead: Overhead) -> str | None:
    """The verdict when the whole interval lies on one side of the target, else None."""
    if overhead.high is not None and overhead.high < CHECKPOINT_TARGET:
        return "met"
    if overhead.low is not None and overhead.low >= CHECKPOINT_TARGET:
        return "**not met**"
    return None


def targets(report: Report) -> list[tuple[str, str, str]]:
    """Issue 7's targets: (target, measured, verdict)."""
    jobs = {job.job: job for job in report.jobs}
    csv, jsonl, small = jobs.get("csv"), jobs.get("jsonl"), jobs.get("small-files")
    rows: list[tuple[str, str, str]] = []
    text = "csv: wasm-pipeline ≥ 500 MB/s on one core, checkpoints on"
    if csv and csv.reference:
        speed = csv.input_bytes / 1e6 / csv.reference.median
        rows.append((text, f"{speed:,.1f} MB/s", _verdict(speed >= 500)))
    else:
        rows.append((text, "not measured", "—"))
    rows += [_ratio_target("csv", csv, "duckdb", 3), _ratio_target("csv", csv, "polars", 3)]
    rows += [_ratio_target("jsonl", jsonl, "duckdb", 2), _ratio_target("jsonl", jsonl, "polars", 2)]
    rows.append(_checkpoint_target(csv))
    text = "peak RSS of a 10 GB input within 16 MiB of a 100 MB input"
    if len(report.rss) >= 2:
        low, high = min(report.rss, key=lambda p: p.size), max(report.rss, key=lambda p: p.size)
        grew = high.peak_rss - low.peak_rss
        measured = (
            f"{_size(high.peak_rss)} at {high.size / 1e9:,.1f} GB vs {_size(low.peak_rss)} at "
            f"{low.size / 1e6:,.0f} MB: {grew / MiB:+.1f} MiB"
        )
        rows.append((text, measured, _verdict(grew <= 16 * MiB)))
    else:
        rows.append((text, "not measured in this run (`pipeline bench --jobs none --rss 100MB,10GB`)", "—"))
    text = "small files: ≥ 1,000 files per second, a durable session each"
    runs = [run for run in (small.runs if small else []) if run.tool.name == "wasm-pipeline" and run.measured]
    if small and runs:
        best = min(runs, key=lambda run: run.median)
        speed = small.files / best.median
        rows.append((text, f"{speed:,.0f} files/s (--parallel {best.effective_threads})", _verdict(speed >= 1000)))
    else:
        rows.append((text, "not measured", "—"))
    return rows


def render(report: Report) -> str:
    """The whole report as Markdown."""
    lines = [
        "# Benchmark results",
        "",
        f"`{report.command}`, {report.machine.get('date', '')}. Reproduce with the same command; "
        "`pytest benchmarks/` runs the micro-benchmarks.",
        "",
        "| machine | |",
        "|---|---|",
        *[f"| {key} | {value} |" for key, value in report.machine.items() if key != "date"],
        "",
    ]
    for job in report.jobs:
        lines += _job_section(job, report.options.repeat)
    if report.rss:
        lines += ["## Memory: the csv job's peak RSS by input size", ""]
        lines += ["| input | seconds | MB/s | peak RSS |", "|---:|---:|---:|---:|"]
        for point in report.rss:
            speed = f"{point.size / 1e6 / point.seconds:,.1f}"
            lines.append(f"| {point.size / 1e6:,.0f} MB | {point.seconds:.2f} | {speed} | {_size(point.peak_rss)} |")
        lines += ["", "Inputs: one generated 64 MiB block of rows repeated to the size (ids repeat).", ""]
    lines += ["## Targets (issue 7)", "", "| target | measured | verdict |", "|---|---|---|"]
    lines += [f"| {text} | {measured} | {verdict} |" for text, measured, verdict in targets(report)]
    lines += ["", "## How it is measured", "", METHOD, ""]
    return "\n".join(lines)
