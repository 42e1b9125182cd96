"""The one error tree of wasm-pipeline.

Every failure a user can cause or meet is a :class:`PipelineError`; the CLI prints it as one line
(plus a hint) and exits non-zero, never with a traceback::

    PipelineError
    ├── SpecError            the job file is wrong (names the file and the field)
    ├── SourceError          the input cannot be opened or read
    ├── SinkError            an output cannot be written, recovered or published
    ├── StoreError           the snapshot store failed
    │   ├── KeyNotFound      no object at that key
    │   ├── Conflict         a compare-and-swap lost; the session is held by another run
    │   └── SnapshotCorrupt  a blob or manifest fails its checksum, framing or codec check
    ├── ResumeMismatch       the input, the job or a guest changed since the last checkpoint
    └── GuestError           a guest reported an error
        ├── GuestTrap        the guest trapped (unreachable, out-of-bounds access, ...)
        ├── GuestTimeout     a guest call ran past its deadline
        ├── GuestMemoryLimit the guest needed more memory than its limit
        └── GuestABIError    the module breaks the guest ABI (exports, signatures, pointers)

Lower-level errors (OSError, botocore, psycopg, wasmtime) are translated where they are met,
with ``raise ... from exc``, so the cause stays in the chain for ``--debug``.
"""

from __future__ import annotations

__all__ = [
    "Conflict",
    "GuestABIError",
    "GuestError",
    "GuestMemoryLimit",
    "GuestTimeout",
    "GuestTrap",
    "KeyNotFound",
    "PipelineError",
    "ResumeMismatch",
    "SinkError",
    "SnapshotCorrupt",
    "SourceError",
    "SpecError",
    "StoreError",
]


class PipelineError(Exception):
    """Base of every error wasm-pipeline raises on purpose.

    ``hint`` is one short sentence telling the user what to do next; the CLI prints it after
    the message.
    """

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class SpecError(PipelineError):
    """The job specification is invalid."""


class SourceError(PipelineError):
    """The source cannot be opened, identified or read."""


class SinkError(PipelineError):
    """A sink cannot be written, persisted, recovered or committed."""


class SinkGone(SinkError):
    """On recovery, the in-progress output a handle names no longer exists (not a failure to look)."""


class StoreError(PipelineError):
    """The snapshot store failed."""


class KeyNotFound(StoreError):
    """No object is stored at the key."""


class Conflict(StoreError):
    """A compare-and-swap found another version: someone else holds the session."""


class SnapshotCorrupt(StoreError):
    """A stored blob or manifest is damaged, truncated or in an unknown encoding."""


class ResumeMismatch(PipelineError):
    """The input, the job or a guest module differs from the one the checkpoint was taken with."""


class GuestError(PipelineError):
    """A guest failed; the message names the stage and the input offset."""


class GuestTrap(GuestError):
    """The guest trapped."""


class GuestTimeout(GuestError):
    """A guest call ran past its deadline."""


class GuestMemoryLimit(GuestError):
    """The guest tried to grow its memory past the stage's limit."""


class GuestABIError(GuestError):
    """The guest module or one of its calls breaks the guest ABI."""
