"""Key validation shared by every backend: no key may escape the store's prefix."""

from __future__ import annotations

import re

from pipeline.errors import StoreError

_SEGMENT_FORBIDDEN = {"", ".", ".."}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def validate_key(key: str) -> str:
    """Return ``key`` if it is a safe relative key, else raise ``StoreError``.

    A key is ``/``-separated segments; none may be empty, ``.`` or ``..``, the key may not be
    absolute, and no character may be a control character or a backslash.
    """
    if not isinstance(key, str) or not key:
        raise StoreError(f"invalid store key {key!r}: must be a non-empty string")
    if _CONTROL.search(key) or "\\" in key:
        raise StoreError(f"invalid store key {key!r}: control characters and backslashes are not allowed")
    if key.startswith("/") or any(seg in _SEGMENT_FORBIDDEN for seg in key.split("/")):
        raise StoreError(f"invalid store key {key!r}: must be relative, without empty, '.' or '..' segments")
    return key
