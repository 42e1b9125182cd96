"""Second review of the group commit (helper-30): each test failed before its fix."""

from __future__ import annotations

from pathlib import Path

from test_batch import JOB

from pipeline.batch import run_batch
from pipeline.runner import SessionGroup
from pipeline.spec import load_job
from pipeline.testing.data import write_orders_csv


def test_wait_keeps_group_commit(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """With ``wait=True`` every run calls long_run_ahead before taking its locks, contended or
    not: each small file is committed (two barriers) and settled on its own, synchronously, so
    ``--wait`` turns the group commit into one group per file."""
    (tmp_path / "incoming").mkdir()
    for i in range(8):
        write_orders_csv(tmp_path / "incoming" / f"day{i}.csv", 20_000, seed=i)
    (tmp_path / "nightly.yaml").write_text(JOB)
    sizes: list[int] = []
    real_commit = SessionGroup.commit

    def commit(self):  # type: ignore[no-untyped-def]
        sizes.append(len(self._published))
        return real_commit(self)

    monkeypatch.setattr(SessionGroup, "commit", commit)
    outcomes = run_batch(load_job(tmp_path / "nightly.yaml"), wait=True)
    assert all(o.error is None for o in outcomes)
    assert len([s for s in sizes if s]) < 8, sizes


def test_barrier_covers_refuses_cifs_where_long_is_32_bits(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """barrier_covers reads statfs's f_type as a signed ``c_long``: on a 32-bit ABI (armhf,
    i386; f_type is a 32-bit ``__fsword_t``) CIFS's 0xFF534D42 and SMB2's 0xFE534D42 read as
    negative numbers, match no entry of _SYNCFS_UNTRUSTED, and an SMB share is trusted."""
    import ctypes
    import struct

    from pipeline import _fs

    def fake_statfs(path: bytes, buffer) -> int:  # type: ignore[no-untyped-def]
        ctypes.memmove(buffer, struct.pack("=I", 0xFF534D42), 4)  # f_type, as the kernel fills it
        return 0

    monkeypatch.setattr(_fs, "_statfs", fake_statfs)
    monkeypatch.setattr(_fs, "_kernel", lambda: (6, 1))
    monkeypatch.setattr(ctypes, "c_long", ctypes.c_int32)  # the 32-bit ABI's long
    assert not _fs.barrier_covers(tmp_path)
