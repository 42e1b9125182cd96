"""The one retry helper every store backend goes through, and its fault-injection seam.

Remote stores meet transient faults: S3 throttling and 5xx answers, dropped connections, a
PostgreSQL server restart. :class:`Retry` runs one store operation, retries it on a transient
fault with exponential backoff and full jitter, and gives up after a bounded number of tries or
seconds with a :class:`~pipeline.errors.StoreError` that names the backend and the key.
``Conflict`` and ``KeyNotFound`` are answers, not faults: they are never retried.

A retried compare-and-swap is ambiguous: the first try may have landed with only its answer
lost, so the retry meets its own write and sees ``Conflict``. :meth:`Retry.cas` settles that
case by reading the key back: if it holds exactly the bytes this call wrote, the swap is ours.

The S3 sink retries its requests with the same policy, through a subclass raising sink errors.

Fault injection: :func:`inject_faults` makes a store's ``Retry`` raise :class:`TransientError`
before or after the real operation (a request lost on the way out, or an answer lost on the
way back), so the conformance suite can prove that retries absorb faults on any backend that
uses this helper, without mocking the server.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from pipeline.errors import Conflict, KeyNotFound, PipelineError, StoreError

__all__ = ["FaultLog", "Retry", "RetryPolicy", "TransientError", "inject_faults"]

T = TypeVar("T")
logger = logging.getLogger("pipeline.stores")

RETRIES_ENV = "PIPELINE_STORE_RETRIES"
DEADLINE_ENV = "PIPELINE_STORE_RETRY_DEADLINE"
RETRY_SETTINGS = f"retries are set by {RETRIES_ENV} and {DEADLINE_ENV}"


class TransientError(Exception):
    """A fault worth retrying; raised by injected faults and usable by third-party backends."""


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to retry: ``tries`` attempts at most, none started ``deadline`` seconds after the
    first failure (counted from then, so a long request — an S3 part of 128 MiB — still gets
    its retries).

    The delay before try ``n + 1`` is drawn uniformly from ``[0, min(max_delay, base_delay *
    2**(n - 1))]`` ("full jitter"), so many clients hit by one outage do not retry in step.
    The defaults wait at most 0.2 + 0.4 + 0.8 + 1.6 = 3 s over 5 tries.
    """

    tries: int = 5
    base_delay: float = 0.2
    max_delay: float = 2.0
    deadline: float = 10.0

    def __post_init__(self) -> None:
        if self.tries < 1 or self.base_delay < 0 or self.max_delay < 0 or self.deadline <= 0:
            raise StoreError(f"invalid store retry policy {self}: tries must be >= 1, times >= 0")

    @classmethod
    def from_env(cls) -> RetryPolicy:
        """The default policy, with ``PIPELINE_STORE_RETRIES`` / ``..._RETRY_DEADLINE`` applied."""
        tries = os.environ.get(RETRIES_ENV, "").strip()
        deadline = os.environ.get(DEADLINE_ENV, "").strip()
        try:
            return cls(
                tries=int(tries) if tries else cls.tries,
                deadline=float(deadline) if deadline else cls.deadline,
            )
        except ValueError:
            raise StoreError(
                f"{RETRIES_ENV} must be an integer and {DEADLINE_ENV} a number of seconds "
                f"(got {tries!r} and {deadline!r})"
            ) from None

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """The jittered delay after failed try number ``attempt`` (1-based)."""
        cap = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return (rng or random).uniform(0.0, cap)


FaultHook = Callable[[str, str, str], None]
"""Called as ``hook(op, key, phase)`` with phase ``"before"`` or ``"after"`` the real call."""


@dataclass
class Retry:
    """Runs store operations with bounded retries; one instance per store.

    ``is_transient`` decides which exceptions are worth another try (:class:`TransientError`
    always is); ``describe`` turns a low-level exception into the tail of the final message.
    Any other exception that is not already a :class:`PipelineError` becomes a ``StoreError``.
    """

    url: str
    policy: RetryPolicy = field(default_factory=RetryPolicy.from_env)
    is_transient: Callable[[BaseException], bool] = lambda exc: False
    describe: Callable[[BaseException], str] = lambda exc: str(exc) or type(exc).__name__
    sleep: Callable[[float], None] = time.sleep
    fault_hook: FaultHook | None = None

    def __call__(self, op: str, key: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` (operation ``op`` on ``key``), retrying transient faults."""
        return self._run(op, key, fn, settle=None)

    def cas(
        self,
        key: str,
        data: bytes,
        fn: Callable[[], str],
        head: Callable[[str], tuple[bytes, str]],
    ) -> str:
        """Run a compare-and-swap ``fn`` that writes ``data``; ``head`` reads a key back.

        If a try failed transiently and a later one meets ``Conflict``, the earlier try may
        have landed: when the key now holds exactly ``data``, its version is returned.
        """

        def settle() -> str | None:
            try:
                current, version = head(key)
            except KeyNotFound:
                return None
            return version if current == data else None

        return self._run("cas", key, fn, settle=settle)

    def _run(self, op: str, key: str, fn: Callable[[], T], settle: Callable[[], T | None] | None) -> T:
        start = time.monotonic()
        first_fault: float | None = None
        faulted = False
        attempt = 0
        while True:  # bounded: each pass returns, raises, or sleeps once of at most policy.tries
            attempt += 1
            try:
                self._hook(op, key, "before")
                result = fn()
                self._hook(op, key, "after")
                return result
            except Conflict:
                if faulted and settle is not None:
                    settled = settle()
                    if settled is not None:
                        logger.info("%s: %s %r landed before a lost answer", self.url, op, key)
                        return settled
                raise
            except PipelineError:
                raise
            except Exception as exc:
                if not (isinstance(exc, TransientError) or self.is_transient(exc)):
                    raise self.error(op, key, f": {self.describe(exc)}", exhausted=False) from exc
                faulted = True
                delay = self.policy.backoff(attempt)
                now = time.monotonic()
                first_fault = now if first_fault is None else first_fault
                elapsed = now - start
                if attempt >= self.policy.tries or now - first_fault + delay > self.policy.deadline:
                    detail = f" after {attempt} tries in {elapsed:.1f}s: {self.describe(exc)}"
                    raise self.error(op, key, detail, exhausted=True) from exc
                logger.warning(
                    "%s: %s %r failed (try %d of %d), retrying in %.2fs: %s",
                    self.url,
                    op,
                    key,
                    attempt,
                    self.policy.tries,
                    delay,
                    self.describe(exc),
                )
                self.sleep(delay)

    def error(self, op: str, key: str, detail: str, *, exhausted: bool) -> PipelineError:
        """The error ending ``op`` on ``key``: ``detail`` says why (``exhausted``: every try was
        transient). A ``StoreError``; a subclass retrying something else raises its own kind."""
        hint = f"the store looks unavailable; {RETRY_SETTINGS}" if exhausted else None
        return StoreError(f"{self.url}: {op} {key!r} failed{detail}", hint=hint)

    def _hook(self, op: str, key: str, phase: str) -> None:
        if self.fault_hook is not None:
            self.fault_hook(op, key, phase)


@dataclass
class FaultLog:
    """What :func:`inject_faults` saw: every try as ``(op, key, phase)``, faults, and sleeps."""

    calls: list[tuple[str, str, str]] = field(default_factory=list)
    injected: int = 0
    sleeps: list[float] = field(default_factory=list)


@contextlib.contextmanager
def inject_faults(
    retry: Retry,
    *,
    count: int,
    phase: str = "before",
    ops: frozenset[str] | None = None,
    real_sleep: bool = False,
) -> Iterator[FaultLog]:
    """Make ``retry`` raise ``count`` :class:`TransientError` faults, then behave again.

    ``phase="before"`` loses the request (the operation does not run); ``"after"`` loses the
    answer (the operation ran). ``ops`` limits faults to some operations ("get", "cas"...).
    Sleeps are recorded and skipped unless ``real_sleep``, so tests stay fast.
    """
    if phase not in ("before", "after"):
        raise ValueError(f"phase must be 'before' or 'after', not {phase!r}")
    log = FaultLog()
    saved = retry.fault_hook, retry.sleep

    def hook(op: str, key: str, where: str) -> None:
        log.calls.append((op, key, where))
        if where == phase and log.injected < count and (ops is None or op in ops):
            log.injected += 1
            raise TransientError(f"injected fault {log.injected} of {count} ({phase} {op})")

    def sleep(seconds: float) -> None:
        log.sleeps.append(seconds)
        if real_sleep:
            saved[1](seconds)

    retry.fault_hook, retry.sleep = hook, sleep
    try:
        yield log
    finally:
        retry.fault_hook, retry.sleep = saved
