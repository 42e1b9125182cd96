"""The builtin guests: WebAssembly modules built from the C sources in this folder.

A job names one as ``guest: builtin:NAME``; :func:`builtin_path` finds its module. The sources,
the C SDK (``sdk/pipeline_guest.h``) and the build script (``build.py``) ship alongside.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import SpecError

__all__ = ["BUILTIN_DIR", "builtin_names", "builtin_path"]

BUILTIN_DIR = Path(__file__).resolve().parent
"""The folder holding the builtin guests' modules (``NAME.wasm``)."""


def builtin_names() -> list[str]:
    """The names of the builtin guests (the stems of the packaged ``.wasm`` files), sorted."""
    return sorted(path.stem for path in BUILTIN_DIR.glob("*.wasm"))


def builtin_path(name: str) -> Path:
    """The module of the builtin guest ``name``; a SpecError listing the known names otherwise."""
    path = BUILTIN_DIR / f"{name}.wasm"
    if "/" in name or not path.is_file():  # one stat: a batch resolves its guest once per file
        names = builtin_names()
        raise SpecError(
            f"unknown builtin guest {name!r} (known: {', '.join(names) or 'none'})",
            hint="use one of the known names, or the path to a .wasm file",
        )
    return path
