"""Test helpers shipped with wasm-pipeline, for its own tests and for third-party guests and stores.

The names below load on first use: ``pipeline bench`` imports ``pipeline.testing.data`` and must
not need pytest, which the store conformance suite imports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.testing.guests import GuestRun, run_guest
    from pipeline.testing.stores import StoreConformance

__all__ = ["GuestRun", "StoreConformance", "run_guest"]

_HOMES = {"GuestRun": "guests", "run_guest": "guests", "StoreConformance": "stores"}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
