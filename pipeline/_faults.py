"""A test-only hook that kills the process at a named step of the commit protocol.

``PIPELINE_TEST_KILL_AT=blobs-written:2`` SIGKILLs the process the second time a checkpoint has
written its page blobs (before its manifest is committed). Occurrences are counted across the
whole process, so in a batch running several sessions on threads the kill lands in whichever
session reaches the Nth one; with ``--parallel`` each worker process counts its own, and the
kill lands in a worker. Steps, in commit order:

``sinks-persisted``, ``blobs-written``, ``manifest-committed``, ``released``, ``published``.

Crash tests use it to land a kill exactly between two steps, which random timing cannot.
Unset (always, outside tests) it costs one dictionary lookup per checkpoint.
"""

from __future__ import annotations

import os
import signal
import threading

from pipeline.errors import SpecError

ENV = "PIPELINE_TEST_KILL_AT"
STEPS = ("sinks-persisted", "blobs-written", "manifest-committed", "released", "published")

_passed: dict[str, int] = {}  # step -> times any run of this process passed it
_passed_lock = threading.Lock()


class FaultPoints:
    """Counts the steps a run passes and kills the process at the configured one."""

    def __init__(self, spec: str | None = None) -> None:
        spec = os.environ.get(ENV) if spec is None else spec
        self._step, self._nth = None, 0
        if spec:
            step, _, nth = spec.partition(":")
            if step not in STEPS or not (nth or "1").isdigit():
                raise SpecError(f"{ENV}={spec!r}: expected STEP[:N] with STEP one of {', '.join(STEPS)}")
            self._step, self._nth = step, int(nth or 1)

    def reached(self, step: str) -> None:
        """Mark ``step`` as done; die here if this is the configured occurrence in the process."""
        if step == self._step:
            with _passed_lock:
                _passed[step] = count = _passed.get(step, 0) + 1
            if count == self._nth:
                os.kill(os.getpid(), signal.SIGKILL)
