"""Small filesystem helpers shared by stores and sinks: URL schemes, directory fsyncs."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable (POSIX needs the directory fsynced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def url_scheme(url: str) -> str:
    """``s3`` for ``s3://b/k``; ``file`` for a plain path. Case kept, as fsspec keeps it."""
    return url.split("://", 1)[0] if "://" in url else "file"
