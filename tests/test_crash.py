"""SIGKILL at random moments and at every commit step; the resumed output is byte-identical.

The job runs in a real subprocess on a generated 100 MB orders CSV. Each scenario kills it one or
more times, reruns the same command until it finishes, and compares the sha256 of the output
and the rejects with those of one uninterrupted run.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline._faults import ENV as KILL_ENV
from pipeline._faults import STEPS
from pipeline.testing.data import write_orders_csv

pytestmark = pytest.mark.slow

JOB = """\
name: orders
source: {url: orders.csv}
stages:
  - guest: builtin:csv-map
    config:
      select: [id, name, amount, city, notes]
      rename: {name: customer}
      upper: [customer]
      filter: {column: amount, op: ">", value: 100}
sink: {url: out/mapped.csv}
rejects: {url: out/rejects.csv}
checkpoint: {every: 8MiB}
"""
RUN_TIMEOUT = 300
MAX_ATTEMPTS = 12


@pytest.fixture(scope="module")
def orders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("input") / "orders.csv"
    write_orders_csv(path, 100_000_000, seed=11)
    return path


def _job_dir(tmp_path: Path, orders: Path) -> Path:
    os.link(orders, tmp_path / "orders.csv")  # same inode: same mtime and size, no copy
    (tmp_path / "job.yaml").write_text(JOB)
    return tmp_path


def _start(job_dir: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", str(job_dir / "job.yaml"), "--quiet"],
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _finish(job_dir: Path) -> None:
    proc = _start(job_dir)
    _, err = proc.communicate(timeout=RUN_TIMEOUT)
    assert proc.returncode == 0, err.decode()


def _digest(job_dir: Path) -> tuple[str, str]:
    out = job_dir / "out"
    assert sorted(os.listdir(out)) == ["mapped.csv", "rejects.csv"], "in-progress files left behind"
    return tuple(hashlib.sha256((out / name).read_bytes()).hexdigest() for name in ("mapped.csv", "rejects.csv"))  # type: ignore[return-value]


@pytest.fixture(scope="module")
def golden(orders: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[tuple[str, str], float]:
    job_dir = _job_dir(tmp_path_factory.mktemp("golden"), orders)
    started = time.monotonic()
    _finish(job_dir)
    return _digest(job_dir), time.monotonic() - started


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sigkill_at_random_moments(seed: int, orders: Path, golden, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    expected, duration = golden
    job_dir = _job_dir(tmp_path, orders)
    rng = random.Random(seed)
    # The first kill lands early (before the first checkpoint can commit), the rest anywhere.
    delays = [rng.uniform(0.0, 0.3)] + [rng.uniform(0.0, duration * 1.2) for _ in range(3)]
    for delay in delays:
        proc = _start(job_dir)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=RUN_TIMEOUT)
        published = job_dir / "out" / "mapped.csv"
        if published.exists():  # only ever complete output at the final path
            assert hashlib.sha256(published.read_bytes()).hexdigest() == expected[0]
    _finish(job_dir)
    assert _digest(job_dir) == expected


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("occurrence", [1, 3])
def test_sigkill_at_each_commit_step(step: str, occurrence: int, orders: Path, golden, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    expected, _ = golden
    job_dir = _job_dir(tmp_path, orders)
    proc = _start(job_dir, {KILL_ENV: f"{step}:{occurrence}"})
    _, err = proc.communicate(timeout=RUN_TIMEOUT)
    if step == "published" and occurrence > 1:
        assert proc.returncode == 0, err.decode()  # published only once: never reached
    else:
        assert proc.returncode == -signal.SIGKILL, err.decode()
    _finish(job_dir)
    assert _digest(job_dir) == expected


def test_rerun_after_finish_does_nothing(orders: Path, golden, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    expected, _ = golden
    job_dir = _job_dir(tmp_path, orders)
    _finish(job_dir)
    before = (job_dir / "out" / "mapped.csv").stat().st_mtime_ns
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", str(job_dir / "job.yaml")],
        capture_output=True, text=True, timeout=RUN_TIMEOUT, check=True,
    )  # fmt: skip
    assert "already complete" in proc.stdout
    assert (job_dir / "out" / "mapped.csv").stat().st_mtime_ns == before
    assert _digest(job_dir) == expected
    shutil.rmtree(job_dir / ".pipeline")
