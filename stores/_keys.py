"""Key validation shared by every backend: no key or prefix may escape the store's prefix."""

from __future__ import annotations

import re

from pipeline.errors import StoreError

_SEGMENT_FORBIDDEN = {"", ".", ".."}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _problem(key: object) -> str | None:
    """Say what is wrong with ``key``, or return None when it is a safe relative key."""
    if not isinstance(key, str) or not key:
        return "must be a non-empty string"
    if _CONTROL.search(key) or "\\" in key:
        return "control characters and backslashes are not allowed"
    if key.startswith("/") or any(seg in _SEGMENT_FORBIDDEN for seg in key.split("/")):
        return "must be relative, without empty, '.' or '..' segments"
    return None


def _where(url: str | None) -> str:
    return f"{url}: " if url else ""


def validate_key(key: str, url: str | None = None) -> str:
    """Return ``key`` if it is a safe relative key, else raise ``StoreError``.

    A key is ``/``-separated segments; none may be empty, ``.`` or ``..``, the key may not be
    absolute, and no character may be a control character or a backslash. Everything else is
    legal (spaces, unicode, ``=``, ``+``, ``%``, ``@``...). ``url`` names the store in the message.
    """
    problem = _problem(key)
    if problem:
        raise StoreError(f"{_where(url)}invalid store key {key!r}: {problem}")
    return key


def validate_prefix(prefix: str, url: str | None = None) -> str:
    """Return ``prefix`` if it is a safe listing prefix, else raise ``StoreError``.

    A prefix is a plain string prefix of keys (``"sess"`` matches ``"session/x"``). It may be
    empty or end with ``/``; otherwise it follows the rules of :func:`validate_key`, so a
    prefix such as ``"../"`` can never make a backend look outside its root.
    """
    problem = None
    if not isinstance(prefix, str):
        problem = "must be a string"
    elif prefix:
        problem = _problem(prefix.removesuffix("/"))
    if problem:
        raise StoreError(f"{_where(url)}invalid store prefix {prefix!r}: {problem}")
    return prefix
