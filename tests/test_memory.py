"""Constant memory: peak RSS of a 500 MB run stays within 16 MiB of a 50 MB run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.testing.data import write_orders_csv

pytestmark = pytest.mark.slow

JOB = """\
name: rss
source: {url: orders.csv}
stages:
  - guest: builtin:csv-map
    config: {select: [id, name, amount], upper: [name], filter: {column: amount, op: ">", value: 100}}
sink: {url: out/mapped.csv}
rejects: {url: out/rejects.csv}
"""
PEAK_RSS = """
import resource, sys
from pipeline.runner import run_session
from pipeline.spec import load_job
run_session(load_job(sys.argv[1]))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux
"""


def _peak_rss(tmp_path: Path, size: int) -> int:
    write_orders_csv(tmp_path / "orders.csv", size)
    (tmp_path / "job.yaml").write_text(JOB)
    out = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, str(tmp_path / "job.yaml")],
        capture_output=True, text=True, timeout=600, check=True,
    )  # fmt: skip
    (tmp_path / "orders.csv").unlink()
    return int(out.stdout.split()[-1]) * 1024


def test_peak_rss_is_flat_from_50mb_to_500mb(tmp_path_factory: pytest.TempPathFactory) -> None:
    small = _peak_rss(tmp_path_factory.mktemp("small"), 50_000_000)
    large = _peak_rss(tmp_path_factory.mktemp("large"), 500_000_000)
    assert large - small < 16 * 1024 * 1024, f"peak RSS {small / 2**20:.1f} MiB -> {large / 2**20:.1f} MiB"
