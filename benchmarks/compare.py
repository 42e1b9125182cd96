"""Side by side: one CSV mapping job, run by wasm-pipeline and by its peers, in one process run.

    python benchmarks/compare.py --size 200MB

Generates one orders CSV, runs every tool on it in its own child process (so each peak RSS is
its own), checks that all outputs hold the same rows, and prints MB/s, rows/s, peak RSS and the
ratio of each tool's time to wasm-pipeline's. The job: select id, name, amount, city; rename name
to customer; upper-case customer; keep rows with amount > 100; rows with the wrong field count or
a non-numeric amount go to rejects.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

SELECT = ["id", "name", "amount", "city"]
JOB = """\
name: bench
source: {{url: {input}}}
stages:
  - guest: builtin:csv-map
    config:
      select: [id, name, amount, city]
      rename: {{name: customer}}
      upper: [customer]
      filter: {{column: amount, op: ">", value: 100}}
sink: {{url: {out}/mapped.csv}}
rejects: {{url: {out}/rejects.csv}}
store: {out}/.pipeline
"""


def run_wasm_pipeline(source: Path, out: Path) -> Path:
    """wasm-pipeline with checkpoints on at the default interval (8 MiB)."""
    from pipeline.runner import run_session
    from pipeline.spec import load_job

    job_file = out / "job.yaml"
    job_file.write_text(JOB.format(input=source, out=out))
    run_session(load_job(job_file))
    return out / "mapped.csv"


def run_python_csv(source: Path, out: Path) -> Path:
    """The same mapping as a plain Python csv-module script (no checkpoints)."""
    target = out / "mapped.csv"
    with (
        open(source, newline="", encoding="utf-8") as src,
        open(target, "w", newline="", encoding="utf-8") as dst,
        open(out / "rejects.csv", "w", newline="", encoding="utf-8") as rej,
    ):
        reader = csv.reader(src)
        writer = csv.writer(dst, lineterminator="\n")
        rejects = csv.writer(rej, lineterminator="\n")
        header = next(reader)
        index = [header.index(name) for name in SELECT]
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


TOOLS: dict[str, Callable[[Path, Path], Path]] = {
    "wasm-pipeline": run_wasm_pipeline,
    "python-csv": run_python_csv,
}


def _run_one(tool: str, source: Path, out: Path) -> None:
    started = time.perf_counter()
    output = TOOLS[tool](source, out)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": seconds, "peak_rss": peak, "output": str(output)}))


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="200MB", help="input size (default 200MB)")
    parser.add_argument("--tools", default=",".join(TOOLS), help="comma-separated subset of: " + ", ".join(TOOLS))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        _run_one(args.one, args.input, args.out)
        return

    from pipeline.spec import parse_size
    from pipeline.testing.data import write_orders_csv

    with tempfile.TemporaryDirectory(prefix="pipeline-bench-") as tmp:
        source = Path(tmp) / "orders.csv"
        rows_in = write_orders_csv(source, parse_size(args.size, "--size"))
        size = source.stat().st_size
        results = {}
        for tool in args.tools.split(","):
            out = Path(tmp) / tool
            out.mkdir()
            child = subprocess.run(
                [sys.executable, __file__, "--one", tool, "--input", str(source), "--out", str(out)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            results[tool] = json.loads(child.stdout.splitlines()[-1])
        outputs = {tool: _rows(Path(r["output"])) for tool, r in results.items()}
        reference = next(iter(outputs.values()))
        for tool, rows in outputs.items():
            if rows != reference:
                raise SystemExit(f"{tool}: output rows differ from {next(iter(outputs))}'s")

    base = results.get("wasm-pipeline", next(iter(results.values())))["seconds"]
    print(
        f"# {size / 1e6:.0f} MB orders CSV, {rows_in:,} rows; {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}; outputs identical ({len(reference) - 1:,} rows)"
    )
    print(f"{'tool':<16}{'seconds':>9}{'MB/s':>9}{'rows/s':>12}{'peak RSS':>11}{'time vs wasm-pipeline':>24}")
    for tool, r in results.items():
        print(
            f"{tool:<16}{r['seconds']:>9.2f}{size / 1e6 / r['seconds']:>9.1f}{rows_in / r['seconds']:>12,.0f}"
            f"{r['peak_rss'] / 2**20:>8.0f} MiB{r['seconds'] / base:>23.2f}x"
        )


if __name__ == "__main__":
    main()
