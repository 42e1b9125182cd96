"""Run a guest over bytes in memory: the quickest way to test a guest, at any chunk size."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.runtime import Guest, GuestLimits, GuestModule


@dataclass
class GuestRun:
    """What a guest emitted, per port, and its counters (if it exports ``pl_counters``)."""

    outputs: dict[int, bytes]
    counters: tuple[int, int, int] | None


def run_guest(
    guest: str | Path | bytes,
    config: dict[str, Any] | None = None,
    data: bytes = b"",
    *,
    chunk_size: int | None = None,
    limits: GuestLimits | None = None,
) -> GuestRun:
    """Feed ``data`` through one guest in chunks of ``chunk_size`` (default: its input capacity).

    ``guest`` is a builtin name (``"csv-map"``), a path to a ``.wasm`` or the module's bytes.
    Failures raise the same :class:`~pipeline.errors.GuestError` a pipeline run would.
    """
    if isinstance(guest, str) and not guest.endswith(".wasm") and "/" not in guest:
        guest = f"builtin:{guest}" if not guest.startswith("builtin:") else guest
    module = GuestModule.load(guest)
    emitted: dict[int, bytearray] = defaultdict(bytearray)

    def on_emit(port: int, view: memoryview) -> None:
        emitted[port] += view

    with Guest(module, stage=f"stage 1 ({module.name})", on_emit=on_emit, limits=limits) as instance:
        instance.start(json.dumps(config or {}).encode())
        step = min(chunk_size or instance.input_area[1], instance.input_area[1])
        view = memoryview(data)
        for start in range(0, len(view), step):
            instance.feed(view[start : start + step])
        instance.finish()
        counters = instance.counters()
    return GuestRun({port: bytes(out) for port, out in emitted.items()}, counters)
