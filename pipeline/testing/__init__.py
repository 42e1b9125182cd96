"""Test helpers shipped with wasm-pipeline, for its own tests and for third-party guests and stores."""

from pipeline.testing.guests import GuestRun, run_guest
from pipeline.testing.stores import StoreConformance

__all__ = ["GuestRun", "StoreConformance", "run_guest"]
