"""Choosing a store backend by URL: a lazy built-in table plus ``pipeline.stores`` entry points."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline._fs import url_scheme
from pipeline.errors import SpecError

if TYPE_CHECKING:
    from pipeline.stores import SnapshotStore
    from pipeline.stores._retry import RetryPolicy

# scheme -> ("module:Class", extra to install when the import fails)
_BUILTIN: dict[str, tuple[str, str | None]] = {
    "memory": ("pipeline.stores.memory:MemoryStore", None),
    "file": ("pipeline.stores.directory:DirectoryStore", None),
    "s3": ("pipeline.stores.s3:S3Store", "s3"),
    "postgresql": ("pipeline.stores.postgres:PostgresStore", "postgres"),
    "postgres": ("pipeline.stores.postgres:PostgresStore", "postgres"),
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


def open_store(
    url: str,
    *,
    base_dir: Path | None = None,
    key: str | bytes | None = None,
    retry: RetryPolicy | None = None,
) -> SnapshotStore:
    """Open the store named by ``url``.

    A URL without a scheme is a directory path, relative to ``base_dir`` (the job file's folder)
    when it is not absolute.

    Values are encrypted at rest when a key is configured: ``key`` (32 raw bytes, or hex /
    base64 text), else ``PIPELINE_STORE_KEY`` / ``PIPELINE_STORE_KEY_FILE``. Without one, reading
    a value that was written encrypted is a clear ``StoreError``. ``retry`` overrides the retry
    policy of the built-in backends (default: ``RetryPolicy.from_env()``). See ``docs/stores.md``.
    """
    # Imported here: the wrapper module needs nothing optional until a key is really used.
    from pipeline.stores.encrypted import load_key, wrap

    store_key = load_key(key)  # before connecting: a bad key fails fast, with no side effects
    scheme = url_scheme(url).lower()  # URL schemes are case-insensitive (RFC 3986): S3:// is s3://
    if "://" in url:
        url = scheme + url[url.index("://") :]
    if scheme == "file":
        path = Path(url.removeprefix("file://")).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        url = str(path)
    store_class = _load_class(scheme)
    # Third-party backends take the URL alone; the retry policy goes only to those asked to.
    store = store_class(url) if retry is None else store_class(url, retry=retry)
    return wrap(store, store_key)
