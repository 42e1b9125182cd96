"""The default store: a directory on the local filesystem (``.pipeline/`` next to the job file).

Each key is a file below the root. Writes go to a temporary file that is fsynced and renamed
into place, so a reader never sees half a value and a crash leaves either the old or the new
value. ``cas`` serialises writers of one key with an ``flock`` on a sidecar lock file, which works
across threads and processes on one machine; versions are content hashes.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import xxhash

from pipeline.errors import Conflict, KeyNotFound, StoreError
from pipeline.stores._keys import validate_key

_PRIVATE = ".~"  # prefix of the store's own temporary and lock files; never a key segment


def _version(data: bytes) -> str:
    return xxhash.xxh3_128_hexdigest(data)


class DirectoryStore:
    """A snapshot store in a local directory."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.root = Path(url)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create store directory {self.root}: {exc.strerror}") from exc

    def _path(self, key: str) -> Path:
        validate_key(key)
        if any(seg.startswith(_PRIVATE) for seg in key.split("/")):
            raise StoreError(f"invalid store key {key!r}: segments may not start with {_PRIVATE!r}")
        return self.root / key

    def get(self, key: str) -> bytes:
        return self.head(key)[0]

    def head(self, key: str) -> tuple[bytes, str]:
        path = self._path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise KeyNotFound(f"{self.url}: no object at {key!r}") from None
        except OSError as exc:
            raise StoreError(f"{self.url}: cannot read {key!r}: {exc.strerror}") from exc
        return data, _version(data)

    def _write_atomically(self, path: Path, data: bytes) -> None:
        tmp = path.with_name(f"{_PRIVATE}{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            _fsync_dir(path.parent)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise StoreError(f"{self.url}: cannot write {path.relative_to(self.root)}: {exc.strerror}") from exc

    def put(self, key: str, data: bytes) -> None:
        self._write_atomically(self._path(key), data)

    def cas(self, key: str, data: bytes, expected: str | None) -> str:
        path = self._path(key)
        lock_path = path.with_name(f"{_PRIVATE}{path.name}.lock")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(f"{self.url}: cannot lock {key!r}: {exc.strerror}") from exc
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            try:
                current: str | None = _version(path.read_bytes())
            except FileNotFoundError:
                current = None
            if current != expected:
                raise Conflict(f"{self.url}: {key!r} changed underneath (compare-and-swap lost)")
            self._write_atomically(path, data)
        finally:
            os.close(lock_fd)  # closing releases the flock
        return _version(data)

    def list(self, prefix: str) -> Iterator[str]:
        # Walk only the deepest directory the prefix names in full, not the whole store.
        head, _, _ = prefix.rpartition("/")
        start = self.root / head if head else self.root
        if not start.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames[:] = [d for d in dirnames if not d.startswith(_PRIVATE)]
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                if name.startswith(_PRIVATE):
                    continue
                key = name if rel_dir == "." else f"{rel_dir}/{name}"
                if key.startswith(prefix):
                    yield key

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StoreError(f"{self.url}: cannot delete {key!r}: {exc.strerror}") from exc

    def close(self) -> None:
        pass


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
