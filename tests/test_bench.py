"""``pipeline bench``: every tool at a tiny size, the row check, the report, the generators."""

from __future__ import annotations

import copy
import json
import math
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from pipeline import _bench_report, bench
from pipeline._bench_stats import _interval_rank, paired_overhead, signed_rank_counts
from pipeline.bench import BenchOptions, compare_outputs, count_rows, run_benchmarks
from pipeline.cli import cli
from pipeline.testing.data import write_events_jsonl, write_small_files


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> bench.Report:
    options = BenchOptions(
        size=1_000_000, files=40, threads="both", pairs=6, pair_seconds=0.2, workdir=tmp_path_factory.mktemp("bench")
    )
    return run_benchmarks(options, command="pipeline bench --size 1MB --files 40", log=lambda line: None)


def test_every_tool_gives_the_same_rows(report: bench.Report) -> None:
    assert [job.job for job in report.jobs] == ["csv", "jsonl", "small-files"]
    for job in report.jobs:
        assert job.rows_out and 0 < job.rows_out < job.rows_in
        for run in job.runs:
            assert run.status == "ok", (job.job, run.tool.name, run.detail)
            assert len(run.seconds) == 1 and run.seconds[0] > 0 and run.peak_rss > 10 * 2**20
    assert report.ok
    names = {(job.job, run.tool.name) for job in report.jobs for run in job.runs}
    for peer in ("python-csv", "pyarrow", "duckdb", "polars", "wasm-pipeline-no-ckpt", "wasm-pipeline-8mib"):
        assert ("csv", peer) in names
    assert {("jsonl", "python-json"), ("jsonl", "duckdb"), ("jsonl", "polars")} <= names
    assert {("small-files", "python-json"), ("small-files", "python-json-durable")} <= names


def test_pinned_peers_really_run_on_one_thread(report: bench.Report) -> None:
    pinned = [run for job in report.jobs for run in job.runs if run.tool.threaded and run.threads == 1]
    assert {run.tool.name for run in pinned} == {"pyarrow", "duckdb", "polars", "wasm-pipeline"}
    assert all(run.effective_threads == 1 for run in pinned)


def test_the_report_is_well_formed(report: bench.Report) -> None:
    text = report.markdown()
    assert text.startswith("# Benchmark results\n\n`pipeline bench --size 1MB --files 40`")
    for key in ("CPU", "cores", "RAM", "OS", "Python", "wasmtime", "duckdb", "polars", "pyarrow"):
        assert re.search(rf"^\| {key} \| \S", text, re.M), key
    for job in ("csv", "jsonl", "small-files"):
        assert f"\n## {job}: " in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and line.endswith(" | equal |")]
    assert len(rows) == sum(len(job.runs) for job in report.jobs)
    for line in rows:  # tool, threads, seconds, [files/s,] MB/s, rows/s, peak RSS, ratio, rows
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        # Seconds have two decimals: a fast tool on the 1 MB input can show 0.00.
        assert len(cells) in (8, 9) and float(cells[2]) >= 0 and cells[-3].endswith(" MiB")
    targets = text.split("## Targets (issue 7)")[1].split("## How it is measured")[0]
    assert len(re.findall(r"^\| (csv|jsonl|peak RSS|small files)", targets, re.M)) == 8
    assert "not measured in this run" in targets  # no --rss here


def test_the_checkpoint_overhead_comes_from_interleaved_pairs(report: bench.Report) -> None:
    csv, *others = report.jobs
    assert csv.pairs is not None and all(job.pairs is None for job in others)
    assert len(csv.pairs.on) == len(csv.pairs.off) == len(csv.pairs.checkpoints) == 6
    assert all(seconds > 0 for seconds in csv.pairs.on + csv.pairs.off)
    assert all(count >= 0 for count in csv.pairs.checkpoints)  # a 1 MB run ends before the first interval
    # A run over the 1 MB input is shorter than pair_seconds: the pairs ran on its rows repeated.
    assert csv.pairs.input_bytes > 2_000_000
    row = next(line for line in report.markdown().splitlines() if line.startswith("| csv: checkpoint overhead"))
    interval = r"\(95% interval -?\d+\.\d% to -?\d+\.\d%; 6 interleaved pairs on a \d+\.\d GB input, medians "
    assert re.search(r" \| -?\d+\.\d% " + interval, row), row
    assert "the table's medians: " in row and "every 8 MiB, table medians: " in row
    assert row.endswith(" | — (no checkpoint within the runs: the input is too small) |")
    if Path("/proc/thread-self/schedstat").exists():
        assert len(csv.pairs.on_wait) == len(csv.pairs.off_wait) == 6
        assert all(0 <= wait < seconds for wait, seconds in zip(csv.pairs.on_wait, csv.pairs.on, strict=True))
        assert re.search(r"; less the waits for a CPU: -?\d+\.\d% \(95% interval ", row), row


def _with_pairs(
    report: bench.Report, on: list[float], off: list[float], waits: tuple[list[float], list[float]] = ([], [])
) -> tuple[str, str, str]:
    csv = copy.copy(report.jobs[0])
    csv.pairs = bench.Pairs(on, off, [2] * len(on), *waits)
    return _bench_report._checkpoint_target(csv)


def test_the_overhead_verdict_needs_the_whole_interval_on_one_side(report: bench.Report) -> None:
    off = [1.5 + 0.01 * (i % 7) for i in range(20)]
    noise = [1 + 0.004 * ((i * 5) % 9 - 4) for i in range(20)]  # symmetric: -1.6% .. +1.6%
    assert _with_pairs(report, [t * 1.01 * e for t, e in zip(off, noise, strict=True)], off)[2] == "met"
    assert _with_pairs(report, [t * 1.06 * e for t, e in zip(off, noise, strict=True)], off)[2] == "**not met**"
    assert _with_pairs(report, [t * 1.03 * e for t, e in zip(off, noise, strict=True)], off)[2].startswith("unresolved")
    # Wall times too noisy to decide; without the waits for a CPU the same pairs decide.
    burst = [0.3 * (i % 2) for i in range(20)]
    on = [t * 1.01 * e + w for t, e, w in zip(off, noise, burst, strict=True)]
    verdict = _with_pairs(report, on, off, (burst, [0.0] * 20))[2]
    assert verdict == "met less the waits for a CPU (wall time unresolved)"
    assert _with_pairs(report, on, off)[2].startswith("unresolved")
    _, measured, verdict = _with_pairs(report, [1.6, 1.5, 1.7], [1.5, 1.5, 1.5])
    assert "too few pairs for an interval; 3 interleaved pairs" in measured and verdict.startswith("unresolved")
    no_pairs = copy.copy(report.jobs[0])
    no_pairs.pairs = None
    _, measured, verdict = _bench_report._checkpoint_target(no_pairs)
    assert measured.endswith(" from the table's medians of 1 round, too noisy to judge (run with `--pairs`)")
    assert verdict == "—"


def test_the_signed_rank_interval_is_the_published_one() -> None:
    # Two-sided 5% critical values of Wilcoxon's signed-rank statistic (reject when T <= value).
    published = {6: 0, 7: 2, 8: 3, 9: 5, 10: 8, 11: 10, 12: 13, 15: 25, 20: 52, 25: 89, 30: 137}
    assert all(_interval_rank(n, 0.95) == value + 1 for n, value in published.items())
    assert [_interval_rank(n, 0.95) for n in range(1, 6)] == [0] * 5  # no 95% interval from 5 pairs
    assert signed_rank_counts(3) == [1, 1, 1, 2, 1, 1, 1] and sum(signed_rank_counts(12)) == 2**12


def test_paired_overhead_finds_a_known_shift_through_noise() -> None:
    off = [1.4 * (1 + 0.1 * math.sin(i)) for i in range(40)]  # the machine drifts by ±10%
    noise = [1 + 0.02 * math.sin(3.7 * i + 1) for i in range(40)]  # the pair's own noise
    on = [t * 1.02 * e for t, e in zip(off, noise, strict=True)]
    overhead = paired_overhead(on, off)
    assert overhead.pairs == 40 and overhead.confidence == 0.95
    assert overhead.low is not None and overhead.high is not None
    assert overhead.low < 1 - 1 / 1.02 < overhead.high and overhead.high - overhead.low < 0.01
    same = paired_overhead(off[:6], off[:6])
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0)
    assert paired_overhead([2.0], [1.0]).low is None
    with pytest.raises(ValueError):
        paired_overhead([1.0, 2.0], [1.0])


def _csv(path: Path, rows: list[str]) -> Path:
    path.write_text("id,customer,amount,city\n" + "".join(row + "\n" for row in rows))
    return path


def test_a_wrong_output_is_caught_and_located(tmp_path: Path) -> None:
    good = _csv(tmp_path / "good.csv", ["1,ALICE,284.20,Oslo", '2,BOB,150.00,"New York, NY"', "3,ZOË,101.5,Paris"])
    same = _csv(
        tmp_path / "same.csv", ['"1","ALICE","284.2","Oslo"', '2,BOB,150,"New York, NY"', "3,ZOË,1.015e2,Paris"]
    )
    assert compare_outputs(good, same, "csv") is None
    changed = _csv(
        tmp_path / "changed.csv", ["1,ALICE,284.20,Oslo", '2,BOB,150.01,"New York, NY"', "3,ZOË,101.5,Paris"]
    )
    assert compare_outputs(good, changed, "csv") == (
        "row 3: expected ['2', 'BOB', '150', 'New York, NY'], got ['2', 'BOB', '150.01', 'New York, NY']"
    )
    short = _csv(tmp_path / "short.csv", ["1,ALICE,284.20,Oslo", '2,BOB,150.00,"New York, NY"'])
    assert (
        compare_outputs(good, short, "csv") == "row 4: expected ['3', 'ZOË', '101.5', 'Paris'], got ['<end of output>']"
    )
    lower = _csv(tmp_path / "lower.csv", ["1,alice,284.20,Oslo", '2,BOB,150.00,"New York, NY"', "3,ZOË,101.5,Paris"])
    assert compare_outputs(good, lower, "csv") is not None


def test_jsonl_rows_compare_keys_in_order_and_numbers_as_decimals(tmp_path: Path) -> None:
    reference = tmp_path / "a.jsonl"
    reference.write_text('{"id":1,"city":"São Paulo","amount":120.50}\n{"id":2,"city":"Oslo","amount":100}\n')
    spelled = tmp_path / "b.jsonl"
    spelled.write_text('{"id": 1, "city": "S\\u00e3o Paulo", "amount": 120.5}\n\n{"id":2,"city":"Oslo","amount":1e2}\n')
    assert compare_outputs(reference, spelled, "jsonl") is None
    reordered = tmp_path / "c.jsonl"
    reordered.write_text('{"city":"São Paulo","id":1,"amount":120.5}\n{"id":2,"city":"Oslo","amount":100}\n')
    assert compare_outputs(
        reference,
        reordered,
        "jsonl",
    ).startswith("row 1: expected ['id=1'")
    assert count_rows(reference, "jsonl") == 2


def test_a_tool_with_different_rows_fails_the_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench, "compare_outputs", lambda reference, other, fmt: "row 2: expected ['1'], got ['2']")
    out = tmp_path / "RESULTS.md"
    args = ["bench", "--size", "100KB", "--jobs", "csv", "--tools", "wasm-pipeline,python-csv", "--out", str(out)]
    result = CliRunner().invoke(cli, [*args, "--workdir", str(tmp_path)])
    assert result.exit_code == 1, result.output
    assert "| python-csv | 1 |" in out.read_text()
    assert "FAIL: row 2: expected ['1'], got ['2'] |" in out.read_text()


def test_a_missing_peer_is_reported_not_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = bench.util.find_spec
    monkeypatch.setattr(bench.util, "find_spec", lambda name: None if name == "polars" else real(name))
    options = BenchOptions(
        size=100_000, jobs=("csv",), threads="1", tools=("wasm-pipeline", "polars"), workdir=tmp_path
    )
    report = run_benchmarks(options, log=lambda line: None)
    polars = report.jobs[0].runs[-1]
    assert (polars.tool.name, polars.status, polars.detail) == ("polars", "not installed", "pip install polars")
    assert report.ok and "| polars |  |" in report.markdown()


def test_unknown_jobs_are_refused() -> None:
    result = CliRunner().invoke(cli, ["bench", "--jobs", "csv,parquet", "--out", "-"])
    assert result.exit_code == 1
    assert "error: --jobs: unknown job 'parquet'" in result.output


def test_the_generators_are_deterministic_and_hold_rows_to_reject(tmp_path: Path) -> None:
    lines = write_events_jsonl(tmp_path / "a.jsonl", 2_000_000)
    assert write_events_jsonl(tmp_path / "b.jsonl", 2_000_000) == lines
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    bad = 0
    for line in (tmp_path / "a.jsonl").read_text().splitlines():
        try:
            bad += not isinstance(json.loads(line), dict)
        except ValueError:
            bad += 1
    assert 0 < bad < lines / 1000
    write_events_jsonl(tmp_path / "clean.jsonl", 2_000_000, invalid=False)
    assert all(isinstance(json.loads(line), dict) for line in (tmp_path / "clean.jsonl").read_text().splitlines())
    rows = write_small_files(tmp_path / "small", 12, size=1_000)
    files = sorted((tmp_path / "small").iterdir())
    assert [f.name for f in files][:2] == ["events-00.jsonl", "events-01.jsonl"] and len(files) == 12
    assert all(1_000 <= f.stat().st_size < 1_400 for f in files)
    assert sum(len(f.read_text().splitlines()) for f in files) == rows


def test_bench_needs_no_pytest() -> None:
    """`pip install 'wasm-pipeline[bench]'` brings no pytest; `pipeline bench` must still import."""
    code = "import sys; sys.modules['pytest'] = None; import pipeline.bench, pipeline.testing.data"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_an_unwritable_report_is_one_error_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    result = CliRunner().invoke(cli, ["bench", "--jobs", "none", "--out", str(tmp_path / "file" / "r.md")])
    assert result.exit_code == 1
    assert "error: --out: cannot write" in result.output and "Traceback" not in result.output


def test_a_missing_workdir_is_created_and_one_that_cannot_be_is_one_error_line(tmp_path: Path) -> None:
    args = ["bench", "--jobs", "none", "--rss", "1MB", "--out", "-", "--workdir"]
    result = CliRunner().invoke(cli, [*args, str(tmp_path / "new" / "scratch")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "new" / "scratch").is_dir()
    (tmp_path / "file").write_text("not a folder")
    result = CliRunner().invoke(cli, [*args, str(tmp_path / "file" / "scratch")])
    assert result.exit_code == 1
    assert "error: --workdir" in result.output and "cannot create it: Not a directory" in result.output
    assert "Traceback" not in result.output


def test_a_memory_check_without_room_is_one_error_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench.shutil, "disk_usage", lambda path: SimpleNamespace(free=0))
    args = ["bench", "--jobs", "none", "--rss", "1MB", "--workdir", str(tmp_path), "--out", "-"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1
    assert "error: --rss: the 0.0 GB memory check needs" in result.output and "hint: free some disk" in result.output
