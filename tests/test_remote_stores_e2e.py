"""The csv-map job with its snapshots on S3 (moto) and on PostgreSQL, killed with SIGKILL and rerun."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline._faults import ENV as KILL_ENV
from pipeline.testing.data import write_orders_csv

EXAMPLE = Path(__file__).parent.parent / "examples" / "csv-map.yaml"
TIMEOUT = 300


@pytest.fixture(scope="module")
def orders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("orders") / "orders.csv"
    write_orders_csv(path, 20_000_000, seed=5)
    return path


def _job(directory: Path, orders: Path) -> Path:
    text = EXAMPLE.read_text().replace("data/orders.csv", str(orders)).replace("{every: 1s}", "{every: 1MiB}")
    path = directory / "csv-map.yaml"
    path.write_text(text)
    return path


def _run(job: Path, store: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "run", str(job), "--store", store],
        env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip


def _digests(directory: Path) -> list[str]:
    out = directory / "out"
    assert sorted(os.listdir(out)) == ["orders-mapped.csv", "orders-rejects.csv"]
    return [hashlib.sha256((out / name).read_bytes()).hexdigest() for name in sorted(os.listdir(out))]


@pytest.fixture(scope="module")
def golden(orders: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    directory = tmp_path_factory.mktemp("golden")
    result = _run(_job(directory, orders), str(directory / "store"))
    assert result.returncode == 0, result.stderr
    return _digests(directory)


@pytest.mark.parametrize(
    "backend", [pytest.param("s3_url", marks=pytest.mark.s3), pytest.param("postgres_url", marks=pytest.mark.postgres)]
)
@pytest.mark.parametrize("kill_at", ["blobs-written:3", "manifest-committed:6", "published:1"])
def test_sigkill_and_rerun_gives_the_golden_output(
    backend: str, kill_at: str, orders: Path, golden: list[str], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    store = request.getfixturevalue(backend)
    job = _job(tmp_path, orders)
    killed = _run(job, store, {KILL_ENV: kill_at})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = _run(job, store)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed at byte" in resumed.stdout or kill_at.startswith("published")
    assert _digests(tmp_path) == golden
    again = _run(job, store)
    assert "already complete" in again.stdout
