"""The store conformance suite (pipeline.testing.StoreConformance) against every backend."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.stores import SnapshotStore, open_store
from pipeline.stores.directory import DirectoryStore
from pipeline.stores.memory import MemoryStore
from pipeline.stores.postgres import PostgresStore
from pipeline.stores.s3 import S3Store
from pipeline.testing import StoreConformance

TEST_KEY = "00" * 32  # hex: a well-formed 32-byte key, for tests only


def closed_after(store: SnapshotStore) -> Iterator[SnapshotStore]:
    """Hand ``store`` to one test, then close it."""
    try:
        yield store
    finally:
        store.close()


class TestMemoryStore(StoreConformance):
    supports_processes = False

    @pytest.fixture
    def store(self) -> Iterator[SnapshotStore]:
        yield from closed_after(MemoryStore(f"memory://conformance-{uuid.uuid4().hex}"))


class TestDirectoryStore(StoreConformance):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[SnapshotStore]:
        yield from closed_after(DirectoryStore(str(tmp_path / "store")))


@pytest.mark.s3
class TestS3Store(StoreConformance):
    @pytest.fixture
    def store(self, s3_url: str) -> Iterator[SnapshotStore]:
        yield from closed_after(S3Store(s3_url))


@pytest.mark.postgres
class TestPostgresStore(StoreConformance):
    @pytest.fixture
    def store(self, postgres_url: str) -> Iterator[SnapshotStore]:
        yield from closed_after(PostgresStore(postgres_url))


class TestEncryptedMemoryStore(StoreConformance):
    supports_processes = False

    @pytest.fixture
    def store(self) -> Iterator[SnapshotStore]:
        yield from closed_after(open_store(f"memory://conformance-{uuid.uuid4().hex}", key=TEST_KEY))


class TestEncryptedDirectoryStore(StoreConformance):
    @pytest.fixture
    def store(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SnapshotStore]:
        # Through the environment, so the spawned children of the process race get the key too.
        monkeypatch.setenv("PIPELINE_STORE_KEY", TEST_KEY)
        yield from closed_after(open_store(str(tmp_path / "store")))
