"""Choosing a store backend by URL: a lazy built-in table plus the ``pipeline.stores`` entry points."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pipeline.errors import SpecError

if TYPE_CHECKING:
    from pipeline.stores import SnapshotStore

# scheme -> ("module:Class", extra to install when the import fails)
_BUILTIN: dict[str, tuple[str, str | None]] = {
    "memory": ("pipeline.stores.memory:MemoryStore", None),
    "file": ("pipeline.stores.directory:DirectoryStore", None),
}


def registered_stores() -> dict[str, str]:
    """Return ``{scheme: "module:Class"}`` for built-in and entry-point backends."""
    found = {scheme: target for scheme, (target, _extra) in _BUILTIN.items()}
    for ep in entry_points(group="pipeline.stores"):
        found.setdefault(ep.name, ep.value)
    return found


def _load_class(scheme: str) -> Any:
    if scheme in _BUILTIN:
        target, extra = _BUILTIN[scheme]
        module_name, _, class_name = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise SpecError(
                f"the {scheme}:// store needs an optional dependency ({exc.name} is missing)",
                hint=f"pip install 'wasm-pipeline[{extra}]'" if extra else None,
            ) from exc
        return getattr(module, class_name)
    for ep in entry_points(group="pipeline.stores", name=scheme):
        return ep.load()
    known = ", ".join(sorted(registered_stores()))
    raise SpecError(f"no snapshot store is registered for {scheme}:// (known: {known})")


def open_store(url: str, *, base_dir: Path | None = None) -> SnapshotStore:
    """Open the store named by ``url``.

    A URL without a scheme is a directory path, relative to ``base_dir`` (the job file's folder)
    when it is not absolute.
    """
    scheme = urlsplit(url).scheme if "://" in url else "file"
    if scheme == "file":
        path = Path(url.removeprefix("file://")).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        url = str(path)
    store_class = _load_class(scheme)
    return store_class(url)
