"""``pipeline._fs.DeferredSyncs``: a group commit's staged steps, their owners and their order."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline._fs import DeferredSyncs


def _noting(tmp_path: Path) -> DeferredSyncs:
    syncs = DeferredSyncs()
    syncs.note_directory(tmp_path)  # something to sync: the barrier needs a filesystem
    return syncs


def test_an_owners_steps_after_its_failure_are_discarded_and_the_others_go_on(tmp_path: Path) -> None:
    syncs = _noting(tmp_path)
    done: list[str] = []

    def fail() -> None:
        raise OSError("no room")

    with syncs.owner("a"):
        syncs.stage(fail, lambda: done.append("a1 discarded"))
    with syncs.owner("b"):
        syncs.stage(lambda: done.append("b1"))
    with syncs.owner("a"):
        syncs.stage(lambda: done.append("a2"), lambda: done.append("a2 discarded"))
    failed = syncs.barrier()
    assert list(failed) == ["a"] and str(failed["a"]) == "no room"
    assert done == ["b1", "a2 discarded"]


def test_dropping_an_owner_discards_what_it_staged(tmp_path: Path) -> None:
    syncs = _noting(tmp_path)
    done: list[str] = []
    for owner in ("a", "b"):
        with syncs.owner(owner):
            syncs.stage(lambda owner=owner: done.append(owner), lambda owner=owner: done.append(f"{owner} discarded"))
    syncs.drop("a")
    assert done == ["a discarded"]
    assert syncs.barrier() == {}
    assert done == ["a discarded", "b"]


def test_a_step_staged_again_under_its_key_replaces_the_first(tmp_path: Path) -> None:
    syncs = _noting(tmp_path)
    done: list[str] = []
    with syncs.owner("a"):
        syncs.stage(lambda: done.append("first"), lambda: done.append("first discarded"), key="k")
        syncs.stage(lambda: done.append("other"))
        syncs.stage(lambda: done.append("second"), key="k")
    assert syncs.barrier() == {}
    assert done == ["first discarded", "other", "second"]


def test_a_failing_step_nobody_owns_fails_the_barrier_and_discards_the_rest(tmp_path: Path) -> None:
    syncs = _noting(tmp_path)
    done: list[str] = []

    def fail() -> None:
        raise RuntimeError("a bug")

    syncs.stage(fail)
    with syncs.owner("a"):
        syncs.stage(lambda: done.append("a"), lambda: done.append("a discarded"))
    with pytest.raises(RuntimeError, match="a bug"):
        syncs.barrier()
    assert done == ["a discarded"]
