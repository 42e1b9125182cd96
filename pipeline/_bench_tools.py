"""The tools :mod:`pipeline.bench` compares, and the child process that runs one of them.

Every tool does the same job on the same input; each runs in its own process
(``python -m pipeline._bench_tools JOB TOOL THREADS INPUT OUT``) so that its peak RSS is its
own, and writes ``OUT/result.json`` with its time. The peers' libraries are imported before the
clock starts: the figures compare processing, not import time.

The jobs:

- ``csv``: select id, name, amount, city; rename name to customer; upper-case customer; keep
  rows whose amount is a number > 100. A row with the wrong field count or a non-numeric amount
  is dropped (wasm-pipeline and the Python script also write it to a rejects file).
- ``jsonl``: keep events with type == "purchase" and a numeric amount >= 100; output id, ts,
  user.id as user, user.city as city, amount.
- ``small-files``: the jsonl job on every file of a folder, one output file per input file.
"""

from __future__ import annotations

import csv
import importlib
import json
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ToolRun = Callable[[Path, Path, "int | None"], Path]
"""``(input, output folder, threads or None for the tool's default) -> the output (file or folder)``."""

CHECKPOINT_OFF = "1TiB"
"""The checkpoint interval of the ``wasm-pipeline-no-ckpt`` variant: never within a run."""
NO_CHECKPOINTS = "wasm-pipeline-no-ckpt"
"""The csv tool whose runs, paired with wasm-pipeline's, measure the checkpoint overhead."""
CHECKPOINT_FINE = "8MiB"
"""The interval of the ``wasm-pipeline-8mib`` variant (the default before it became a time): ~60 a second here."""

_CSV_MAP = """\
  - guest: builtin:csv-map
    config:
      select: [id, name, amount, city]
      rename: {name: customer}
      upper: [customer]
      filter: {column: amount, op: ">", value: 100}
"""
_JSONL_MAP = """\
  - guest: builtin:jsonl-map
    config:
      filter: {all: [{field: type, op: "==", value: purchase}, {field: amount, op: ">=", value: 100}]}
      select: [id, ts, user.id, user.city, amount]
      rename: {user.id: user, user.city: city}
"""


def _sql_text(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


# -- wasm-pipeline -------------------------------------------------------------------------
def _wasm_job(out: Path, source: str, stage: str, sink: str, rejects: str, checkpoint: str | None = None) -> Path:
    """Write a job file as a user would: local directory store, default checkpoint interval."""
    job = out / "job.yaml"
    text = f"name: bench\nsource: {{url: {json.dumps(source)}}}\nstages:\n{stage}"
    text += f"sink: {{url: {json.dumps(sink)}}}\nrejects: {{url: {json.dumps(rejects)}}}\nstore: .pipeline\n"
    if checkpoint:
        text += f"checkpoint: {{every: {checkpoint}}}\n"
    job.write_text(text)
    return job


_CHECKPOINTS: list[int] = []
"""Checkpoints each wasm-pipeline session of this child took, for ``result.json``."""


def _run_wasm(job_file: Path) -> None:
    from pipeline.runner import run_session
    from pipeline.spec import load_job

    _CHECKPOINTS.append(run_session(load_job(job_file)).checkpoints)


def _wasm_csv(checkpoint: str | None, doc: str) -> ToolRun:
    def run(source: Path, out: Path, threads: int | None) -> Path:
        _run_wasm(_wasm_job(out, str(source), _CSV_MAP, "mapped.csv", "rejects.csv", checkpoint=checkpoint))
        return out / "mapped.csv"

    run.__doc__ = doc
    return run


wasm_csv = _wasm_csv(None, "builtin:csv-map, checkpoints at the default interval (every second).")
wasm_csv_no_checkpoints = _wasm_csv(
    CHECKPOINT_OFF, "The same job with a checkpoint interval larger than the input: the checkpoint overhead's baseline."
)
wasm_csv_checkpoint_every_8mib = _wasm_csv(
    CHECKPOINT_FINE, "The same job checkpointing every 8 MiB of input: what a fine-grained interval costs."
)


def wasm_jsonl(source: Path, out: Path, threads: int | None) -> Path:
    """builtin:jsonl-map, checkpoints at the default interval."""
    _run_wasm(_wasm_job(out, str(source), _JSONL_MAP, "out.jsonl", "rejects.csv"))
    return out / "out.jsonl"


def wasm_small_files(source: Path, out: Path, threads: int | None) -> Path:
    """A batch job over the folder: one durable session per file, ``threads`` files at once."""
    from pipeline.batch import run_batch
    from pipeline.spec import load_job

    job = _wasm_job(out, f"{source}/*.jsonl", _JSONL_MAP, "files/{stem}.jsonl", "rejects/{stem}.csv")
    parallel = threads or os.cpu_count() or 1
    failed = [o for o in run_batch(load_job(job), parallel=parallel) if o.error is not None]
    if failed:
        raise RuntimeError(f"{len(failed)} files failed, first: {failed[0].url}: {failed[0].error}")
    return out / "files"


# -- Python scripts ------------------------------------------------------------------------
def python_csv(source: Path, out: Path, threads: int | None) -> Path:
    """The csv job as a plain Python csv-module script."""
    target = out / "mapped.csv"
    select = ["id", "name", "amount", "city"]
    with (
        open(source, newline="", encoding="utf-8") as src,
        open(target, "w", newline="", encoding="utf-8") as dst,
        open(out / "rejects.csv", "w", newline="", encoding="utf-8") as rej,
    ):
        reader = csv.reader(src)
        writer = csv.writer(dst, lineterminator="\n")
        rejects = csv.writer(rej, lineterminator="\n")
        header = next(reader)
        index = [header.index(name) for name in select]
        amount = header.index("amount")
        writer.writerow(["id", "customer", "amount", "city"])
        for row in reader:
            if not row:
                continue
            if len(row) != len(header):
                rejects.writerow([reader.line_num, f"expected {len(header)} fields, got {len(row)}", ",".join(row)])
                continue
            try:
                value = float(row[amount])
            except ValueError:
                rejects.writerow([reader.line_num, "amount is not a number", ",".join(row)])
                continue
            if value > 100:
                picked = [row[i] for i in index]
                picked[1] = picked[1].upper()
                writer.writerow(picked)
    return target


def _python_jsonl_file(source: Path, target: Path, rejects_path: Path) -> None:
    with (
        open(source, encoding="utf-8") as src,
        open(target, "w", encoding="utf-8") as dst,
        open(rejects_path, "w", newline="", encoding="utf-8") as rej,
    ):
        rejects = csv.writer(rej, lineterminator="\n")
        for number, line in enumerate(src, 1):
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except ValueError as exc:
                rejects.writerow([number, f"invalid JSON: {exc}", line.rstrip("\n")])
                continue
            if not isinstance(event, dict):
                rejects.writerow([number, "not a JSON object", line.rstrip("\n")])
                continue
            amount = event.get("amount")
            numeric = isinstance(amount, int | float) and not isinstance(amount, bool)
            if event.get("type") == "purchase" and numeric and amount >= 100:
                user = event["user"]
                kept = {
                    "id": event["id"],
                    "ts": event["ts"],
                    "user": user["id"],
                    "city": user["city"],
                    "amount": amount,
                }
                dst.write(json.dumps(kept, ensure_ascii=False, separators=(",", ":")) + "\n")


def python_jsonl(source: Path, out: Path, threads: int | None) -> Path:
    """The jsonl job as a plain Python json-module script."""
    _python_jsonl_file(source, out / "out.jsonl", out / "rejects.csv")
    return out / "out.jsonl"


def python_small_files(source: Path, out: Path, threads: int | None) -> Path:
    """The jsonl script once per file (no durability: a reference point for the per-file cost)."""
    (out / "files").mkdir()
    (out / "rejects").mkdir()
    for path in sorted(source.glob("*.jsonl")):
        _python_jsonl_file(path, out / "files" / path.name, out / "rejects" / f"{path.stem}.csv")
    return out / "files"


def python_small_files_durable(source: Path, out: Path, threads: int | None) -> Path:
    """The script publishing each file's outputs durably, as wasm-pipeline's sinks do.

    Temp file, fsync, rename, directory fsync, and nothing else (no session state, no locks):
    the floor a durable per-file publish costs on this disk.
    """
    from pipeline._fs import fsync_dir

    files, rejects = out / "files", out / "rejects"
    files.mkdir()
    rejects.mkdir()
    for path in sorted(source.glob("*.jsonl")):
        targets = (files / path.name, rejects / f"{path.stem}.csv")
        temps = [target.with_name(f".{target.name}.part") for target in targets]
        _python_jsonl_file(path, *temps)
        for temp, target in zip(temps, targets, strict=True):
            fd = os.open(temp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, target)
        fsync_dir(files)
        fsync_dir(rejects)
    return files


# -- peers ---------------------------------------------------------------------------------
def pyarrow_csv(source: Path, out: Path, threads: int | None) -> Path:
    """pyarrow: read the whole CSV (all columns as text), compute the mask and columns, write."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pcsv

    names = ["id", "name", "amount", "city", "email", "notes"]
    table = pcsv.read_csv(
        source,
        parse_options=pcsv.ParseOptions(newlines_in_values=True, invalid_row_handler=lambda row: "skip"),
        convert_options=pcsv.ConvertOptions(column_types=dict.fromkeys(names, pa.string()), strings_can_be_null=False),
    )
    amount = table["amount"]
    # A cast of "n/a" to a number raises: only strings that look like numbers are cast.
    numeric = pc.match_substring_regex(amount, r"^\s*[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?\s*$")
    value = pc.cast(pc.if_else(numeric, amount, None), pa.float64())
    kept = table.filter(pc.fill_null(pc.greater(value, 100), False))
    result = pa.table(
        {"id": kept["id"], "customer": pc.utf8_upper(kept["name"]), "amount": kept["amount"], "city": kept["city"]}
    )
    target = out / "mapped.csv"
    pcsv.write_csv(result, target)
    return target


def _duckdb(threads: int | None):  # type: ignore[no-untyped-def]
    import duckdb

    con = duckdb.connect()
    if threads:
        con.execute(f"SET threads={int(threads)}")
    return con


def _duckdb_copy(threads: int | None, query: str, target: Path, options: str) -> Path:
    _duckdb(threads).execute(f"COPY ({query}) TO {_sql_text(target)} ({options})")
    return target


def duckdb_csv(source: Path, out: Path, threads: int | None) -> Path:
    """DuckDB: ``COPY (SELECT … FROM read_csv(…) WHERE …) TO …``, every column read as text."""
    query = (
        "SELECT id, upper(name) AS customer, amount, city "
        f"FROM read_csv({_sql_text(source)}, header=true, all_varchar=true, ignore_errors=true) "
        "WHERE TRY_CAST(amount AS DOUBLE) > 100"
    )
    return _duckdb_copy(threads, query, out / "mapped.csv", "HEADER, DELIMITER ','")


def duckdb_jsonl(source: Path, out: Path, threads: int | None) -> Path:
    """DuckDB: ``COPY (SELECT … FROM read_json(…) WHERE …) TO … (FORMAT json)`` with a declared schema.

    The schema keeps ``ts`` text: auto-detection would turn it into a timestamp and write it back
    in another format.
    """
    columns = (
        "{id: 'BIGINT', type: 'VARCHAR', ts: 'VARCHAR', \"user\": 'STRUCT(id BIGINT, city VARCHAR, plan VARCHAR)', "
        "amount: 'DOUBLE', tags: 'VARCHAR[]'}"
    )
    query = (
        'SELECT id, ts, "user".id AS "user", "user".city AS city, amount '
        f"FROM read_json({_sql_text(source)}, format='newline_delimited', ignore_errors=true, columns={columns}) "
        "WHERE type = 'purchase' AND amount >= 100"
    )
    return _duckdb_copy(threads, query, out / "out.jsonl", "FORMAT json")


def polars_csv(source: Path, out: Path, threads: int | None) -> Path:
    """polars, streaming: ``scan_csv(…).filter(…).select(…).sink_csv(…)``, every column read as text."""
    import polars as pl

    target = out / "mapped.csv"
    (
        pl.scan_csv(source, infer_schema=False)
        .filter(pl.col("amount").cast(pl.Float64, strict=False) > 100)
        .select("id", pl.col("name").str.to_uppercase().alias("customer"), "amount", "city")
        .sink_csv(target)
    )
    return target


def polars_jsonl(source: Path, out: Path, threads: int | None) -> Path:
    """polars, streaming: ``scan_ndjson(…).filter(…).select(…).sink_ndjson(…)``."""
    import polars as pl

    target = out / "out.jsonl"
    user = pl.col("user").struct
    (
        pl.scan_ndjson(source)
        .filter((pl.col("type") == "purchase") & (pl.col("amount") >= 100))
        .select("id", "ts", user.field("id").alias("user"), user.field("city").alias("city"), "amount")
        .sink_ndjson(target)
    )
    return target


@dataclass(frozen=True)
class Tool:
    """One way of doing one job."""

    name: str
    job: str
    run: ToolRun
    needs: tuple[str, ...] = ()
    """Modules imported before the clock starts; a missing one makes the tool "not installed"."""
    threaded: bool = False
    """Runs both with its default threads and pinned to one (``POLARS_MAX_THREADS``, ``SET threads``…)."""


TOOLS = [
    Tool("wasm-pipeline", "csv", wasm_csv, ("pipeline.runner",)),
    Tool(NO_CHECKPOINTS, "csv", wasm_csv_no_checkpoints, ("pipeline.runner",)),
    Tool("wasm-pipeline-8mib", "csv", wasm_csv_checkpoint_every_8mib, ("pipeline.runner",)),
    Tool("python-csv", "csv", python_csv),
    Tool("pyarrow", "csv", pyarrow_csv, ("pyarrow", "pyarrow.csv", "pyarrow.compute"), threaded=True),
    Tool("duckdb", "csv", duckdb_csv, ("duckdb",), threaded=True),
    Tool("polars", "csv", polars_csv, ("polars",), threaded=True),
    Tool("wasm-pipeline", "jsonl", wasm_jsonl, ("pipeline.runner",)),
    Tool("python-json", "jsonl", python_jsonl),
    Tool("duckdb", "jsonl", duckdb_jsonl, ("duckdb",), threaded=True),
    Tool("polars", "jsonl", polars_jsonl, ("polars",), threaded=True),
    Tool("wasm-pipeline", "small-files", wasm_small_files, ("pipeline.batch",), threaded=True),
    Tool("python-json", "small-files", python_small_files),
    Tool("python-json-durable", "small-files", python_small_files_durable),
]


def find_tool(job: str, name: str) -> Tool:
    """The tool ``name`` of ``job``."""
    return next(tool for tool in TOOLS if tool.job == job and tool.name == name)


def _pin(tool: Tool, threads: int | None) -> int:
    """Apply a thread setting that is process-wide; return the thread count the tool reports using.

    polars reads ``POLARS_MAX_THREADS`` (set by the parent) at import; DuckDB takes ``SET threads``
    per connection, in the tool itself.
    """
    if threads and "pyarrow" in tool.needs:
        pyarrow = importlib.import_module("pyarrow")
        pyarrow.set_cpu_count(threads)
        pyarrow.set_io_thread_count(threads)
    if "polars" in tool.needs:
        return int(importlib.import_module("polars").thread_pool_size())
    if "pyarrow" in tool.needs:
        return int(importlib.import_module("pyarrow").cpu_count())
    if "duckdb" in tool.needs:
        con = _duckdb(threads)
        return int(con.execute("SELECT current_setting('threads')").fetchone()[0])
    return threads or (os.cpu_count() or 1 if tool.threaded else 1)


def _peak_rss() -> int | None:
    """This process's own peak RSS (``VmHWM``), or None where there is no ``/proc``.

    Why not the parent's ``wait4``: a child's ``ru_maxrss`` starts at the parent's RSS at fork
    (measured: a 10 MiB child of a 311 MiB parent reports 311 MiB), so it would report the
    benchmark's own memory for every small tool.
    """
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
    return int(match.group(1)) * 1024 if match else None


def _cpu_wait() -> float | None:
    """Seconds this thread has spent ready to run but waiting for a CPU (``schedstat``), or None.

    Other work on the machine lengthens a run mostly through these waits; the checkpoint
    overhead's pairs also report their times without them.
    """
    try:
        return int(Path("/proc/thread-self/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


def main(argv: list[str]) -> None:
    """Child process: run one tool once and write ``OUT/result.json``."""
    job, name, threads_arg, source, out = argv
    tool = find_tool(job, name)
    threads = int(threads_arg) or None
    for module in tool.needs:
        importlib.import_module(module)
    effective = _pin(tool, threads)
    waited = _cpu_wait()
    started = time.perf_counter()
    output = tool.run(Path(source), Path(out), threads)
    seconds = time.perf_counter() - started
    result = {"seconds": seconds, "output": str(output), "threads": effective, "peak_rss": _peak_rss()}
    if waited is not None and (now := _cpu_wait()) is not None:
        result["cpu_wait"] = now - waited
    if _CHECKPOINTS:
        result["checkpoints"] = sum(_CHECKPOINTS)
    (Path(out) / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
