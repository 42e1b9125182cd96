"""Reading a payload from any fsspec URL, in chunks, straight into a buffer the caller owns.

A source has an *identity* (ETag when the backend has one, else size + mtime) recorded in
every checkpoint: resuming onto bytes that changed would silently produce wrong output, so a
changed identity refuses the resume instead.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import fsspec

from pipeline.errors import SourceError


class Source:
    """One input file, seekable and read with ``readinto``.

    Credentials in ``options`` are handed to fsspec and never stored or printed.
    """

    def __init__(self, url: str, options: dict[str, Any] | None = None) -> None:
        self.url = url
        try:
            self._fs, self._path = fsspec.core.url_to_fs(url, **(options or {}))
            info = self._fs.info(self._path)
        except FileNotFoundError:
            raise SourceError(f"source {url}: no such file", hint="check source.url in the job file") from None
        except (OSError, ValueError, ImportError) as exc:
            raise SourceError(f"source {url}: cannot open: {exc}") from exc
        if info.get("type") == "directory":
            raise SourceError(f"source {url}: is a directory, not a file")
        self.size: int | None = info.get("size")
        self.identity = _identity(info)
        self._file: Any = None

    def open(self, offset: int = 0) -> None:
        """Open the file positioned at ``offset`` (a resume seeks straight to its checkpoint)."""
        try:
            self._file = self._fs.open(self._path, "rb")
            if offset:
                self._file.seek(offset)
        except OSError as exc:
            raise SourceError(f"source {self.url}: cannot open at byte {offset}: {exc}") from exc

    def readinto(self, view: memoryview) -> int:
        """Fill ``view`` with the next bytes; 0 means end of input."""
        try:
            return self._file.readinto(view) or 0
        except OSError as exc:
            raise SourceError(f"source {self.url}: read failed: {exc}") from exc

    def close(self) -> None:
        """Close the file; safe to call twice."""
        if self._file is not None:
            self._file.close()
            self._file = None


def _identity(info: dict[str, Any]) -> dict[str, Any]:
    """ETag if the backend reports one, else size and modification time."""
    for key in ("ETag", "etag", "e_tag"):
        if info.get(key):
            return {"etag": str(info[key]).strip('"'), "size": info.get("size")}
    mtime = info.get("mtime", info.get("LastModified", info.get("last_modified")))
    return {"size": info.get("size"), "mtime": mtime if isinstance(mtime, int | float) else str(mtime)}


def describe_change(old: dict[str, Any], new: dict[str, Any]) -> str:
    """Say which part of a source identity changed, for the resume-mismatch message."""
    return ", ".join(
        f"{key} {_show(key, old.get(key))} -> {_show(key, new.get(key))}"
        for key in sorted(old | new)
        if old.get(key) != new.get(key)
    )


def _show(key: str, value: Any) -> str:
    if key == "mtime" and isinstance(value, int | float):
        return datetime.fromtimestamp(value, tz=UTC).isoformat(timespec="microseconds")
    return repr(value)
