"""Constant memory: peak RSS of a 500 MB run stays within 16 MiB of a 50 MB run."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import peak_rss

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


def _peak_rss(tmp_path: Path, size: int) -> int:
    write_orders_csv(tmp_path / "orders.csv", size)
    (tmp_path / "job.yaml").write_text(JOB)
    try:
        return peak_rss(tmp_path / "job.yaml")
    finally:
        (tmp_path / "orders.csv").unlink()


def test_peak_rss_is_flat_from_50mb_to_500mb(tmp_path_factory: pytest.TempPathFactory) -> None:
    small = _peak_rss(tmp_path_factory.mktemp("small"), 50_000_000)
    large = _peak_rss(tmp_path_factory.mktemp("large"), 500_000_000)
    assert large - small < 16 * 1024 * 1024, f"peak RSS {small / 2**20:.1f} MiB -> {large / 2**20:.1f} MiB"
