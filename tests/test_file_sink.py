"""The exactly-once file sink: flush + sync, recover by truncation, atomic idempotent commit, fencing."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import persist

from pipeline.connectors import FileSink
from pipeline.errors import SinkError


def test_target_appears_only_on_commit_and_recover_drops_unpersisted_bytes(tmp_path: Path) -> None:
    target = tmp_path / "out" / "x.csv"
    sink = FileSink(str(target), "s1")
    sink.acquire()
    sink.start()
    sink.write(b"hello ")
    handle = persist(sink)
    sink.write(memoryview(b"lost after crash"))
    sink.close()  # the "crash": these bytes were never checkpointed
    assert not target.exists()

    resumed = FileSink(str(target), "s1")
    resumed.acquire()
    resumed.recover(handle)
    resumed.write(b"world")
    resumed.commit()
    resumed.close()
    assert target.read_bytes() == b"hello world"
    assert not resumed.part.exists()


def test_commit_already_published_before_a_crash_is_a_no_op(tmp_path: Path) -> None:
    target = tmp_path / "x.csv"
    sink = FileSink(str(target), "s1")
    sink.acquire()
    sink.start()
    sink.write(b"done")
    handle = persist(sink)
    sink.commit()
    sink.close()

    again = FileSink(str(target), "s1")
    again.acquire()
    again.recover(handle, finished=True)  # the handle of the run's last checkpoint
    again.commit()
    again.close()
    assert target.read_bytes() == b"done"
    assert not again.part.exists()


def test_a_missing_in_progress_file_is_refused_unless_the_run_had_finished(tmp_path: Path) -> None:
    target = tmp_path / "x.csv"
    target.write_bytes(b"done")  # an older run's output, of the same length by chance
    again = FileSink(str(target), "s1")
    again.acquire()
    with pytest.raises(SinkError, match=r"in-progress file .*\.x\.csv~s1\.part is missing"):
        again.recover({"length": 4})
    assert not again.part.exists()  # not created empty on the way
    again.close()


def test_in_progress_file_shorter_than_the_checkpoint_is_refused(tmp_path: Path) -> None:
    sink = FileSink(str(tmp_path / "x.csv"), "s1")
    sink.acquire()
    sink.start()
    sink.write(b"0123456789")
    handle = persist(sink)
    sink.close()
    sink.part.write_bytes(b"0123")
    again = FileSink(str(tmp_path / "x.csv"), "s1")
    again.acquire()
    with pytest.raises(SinkError, match="has 4 bytes, fewer than the 10 the checkpoint committed"):
        again.recover(handle)
    again.close()


def test_a_second_process_cannot_write_a_held_sink(tmp_path: Path) -> None:
    sink = FileSink(str(tmp_path / "x.csv"), "s1")
    sink.acquire()
    code = (
        "from pipeline.connectors import FileSink\n"
        "from pipeline.errors import SinkError\n"
        f"s = FileSink({str(tmp_path / 'x.csv')!r}, 's1')\n"
        "try:\n    s.acquire()\nexcept SinkError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert "session 's1' is held by another run (it is writing " in out.stdout
    sink.close()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout == ""


def test_writeback_starts_behind_the_writes_and_never_past_them(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    advised: list[tuple[int, int]] = []
    real = os.posix_fadvise

    def fadvise(fd: int, offset: int, length: int, advice: int) -> None:
        advised.append((offset, length))
        real(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", fadvise)
    target = tmp_path / "x.bin"
    sink = FileSink(str(target), "s1")
    sink.acquire()
    sink.start()
    block = bytes(range(256)) * 4096  # 1 MiB
    for _ in range(20):
        sink.write(block)
        # Never the last 64 KiB: those may still be in the sink's buffer, not the kernel's hands.
        assert sum(length for _, length in advised) <= sink.length - 64 * 1024
    assert [offset for offset, _ in advised] == [0, *itertools.accumulate(length for _, length in advised[:-1])]
    assert len(advised) == 2  # every 8 MiB
    handle = persist(sink)
    sink.close()
    resumed = FileSink(str(target), "s1")
    resumed.acquire()
    resumed.recover(handle)
    for _ in range(9):
        resumed.write(block)
    assert advised[-1][0] == 20 * 2**20  # resumed from the checkpoint's length, not from 0
    resumed.commit()
    resumed.close()
    assert target.read_bytes() == block * 29
