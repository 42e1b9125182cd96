"""A test-only hook that kills the process at a named step of the commit protocol.

``PIPELINE_TEST_KILL_AT=blobs-written:2`` SIGKILLs the process the second time a checkpoint has
written its page blobs (before its manifest is committed). Steps, in commit order:

``sinks-persisted``, ``blobs-written``, ``manifest-committed``, ``released``, ``published``.

Crash tests use it to land a kill exactly between two steps, which random timing cannot.
Unset (always, outside tests) it costs one dictionary lookup per checkpoint.
"""

from __future__ import annotations

import os
import signal

from pipeline.errors import SpecError

ENV = "PIPELINE_TEST_KILL_AT"
STEPS = ("sinks-persisted", "blobs-written", "manifest-committed", "released", "published")


class FaultPoints:
    """Counts the steps a run passes and kills the process at the configured one."""

    def __init__(self, spec: str | None = None) -> None:
        spec = os.environ.get(ENV) if spec is None else spec
        self._step, self._remaining = None, 0
        if spec:
            step, _, nth = spec.partition(":")
            if step not in STEPS or not (nth or "1").isdigit():
                raise SpecError(f"{ENV}={spec!r}: expected STEP[:N] with STEP one of {', '.join(STEPS)}")
            self._step, self._remaining = step, int(nth or 1)

    def reached(self, step: str) -> None:
        """Mark ``step`` as done; die here if this is the configured occurrence."""
        if step == self._step:
            self._remaining -= 1
            if self._remaining == 0:
                os.kill(os.getpid(), signal.SIGKILL)
