"""The snapshot store conformance suite: what every backend must do, as pytest tests.

Shipped in the wheel so third-party backends run the same tests as the built-in ones (like
fsspec's abstract test suite). Subclass :class:`StoreConformance` in a test module and give it a
``store`` fixture that yields a fresh, empty store and closes it afterwards::

    import pytest
    from pipeline.testing import StoreConformance
    from mypackage import MyStore

    class TestMyStore(StoreConformance):
        @pytest.fixture
        def store(self, tmp_path):
            store = MyStore(f"my://{tmp_path}")
            yield store
            store.close()

The compare-and-swap race across processes starts children with the ``spawn`` method; each
reopens the store by calling ``child_opener`` (``"module:function"``, default
:func:`pipeline.stores.open_store`) with :meth:`StoreConformance.child_url`. Override either
if a URL alone does not reach your store (credentials come from the environment, which spawned
children inherit). Set ``supports_processes = False`` for an in-process store.

The fault tests need the store's retry helper as ``store.retry`` (a
:class:`pipeline.stores.Retry`, which :class:`pipeline.stores.BaseStore` provides); stores
without one skip them.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pipeline.errors import Conflict, KeyNotFound, StoreError
from pipeline.stores import Retry, SnapshotStore
from pipeline.stores._retry import inject_faults

__all__ = ["StoreConformance"]

UNUSUAL_KEYS = [
    "with space",
    "dir with space/file name",
    "ünïcødé/ключ/鍵",
    "a=b",
    "a+b",
    "100%",
    "%2F",
    "user@host",
    "mixed/ =+%@ ~!$&'()*,;/x",
    "trailing space ",
]

REJECTED_KEYS = [
    "",
    "/absolute",
    "..",
    "../escape",
    "a/../../escape",
    "a/./b",
    ".",
    "a//b",
    "a/",
    "nul\x00byte",
    "new\nline",
    "tab\tkey",
    "back\\slash",
]


def _resolve(target: str) -> Callable[[str], Any]:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


def _process_race_worker(
    opener: str,
    url: str,
    key: str,
    worker: int,
    rounds: int,
    barrier: Any,
    results: Any,
    timeout: float,
) -> None:
    """One contender in the process race (module level: ``spawn`` children import it)."""
    try:
        store = _resolve(opener)(url)
    except Exception as exc:
        results.put(("error", worker, f"cannot open {url}: {exc!r}"))
        barrier.abort()
        return
    try:
        for round_ in range(rounds):
            barrier.wait(timeout)  # the previous round's swaps are all done
            _, version = store.head(key)
            barrier.wait(timeout)  # everyone read the same version before anyone swaps
            try:
                store.cas(key, f"{round_}:{worker}".encode(), version)
            except Conflict:
                results.put(("lost", worker, round_))
            else:
                results.put(("won", worker, round_))
    except Exception as exc:
        results.put(("error", worker, repr(exc)))
        barrier.abort()
    finally:
        store.close()


class StoreConformance:
    """Tests every snapshot store must pass; subclass it and provide a ``store`` fixture."""

    #: threads in the in-process compare-and-swap race
    thread_workers = 8
    #: processes in the cross-process compare-and-swap race
    process_workers = 4
    #: rounds in each race; every round must have exactly one winner
    race_rounds = 10
    #: seconds any race may take before it fails
    race_timeout = 120.0
    #: size of the large blob round trip
    big_blob_bytes = 64 * 1024 * 1024
    #: False for stores that only live inside one process (memory://)
    supports_processes = True
    #: "module:function" a spawned child calls with child_url() to reopen the store
    child_opener = "pipeline.stores:open_store"

    @pytest.fixture
    def store(self) -> Iterator[SnapshotStore]:
        """A fresh, empty store; the subclass must override this fixture."""
        pytest.fail(f"{type(self).__name__} must define a 'store' fixture")
        yield  # pragma: no cover

    def child_url(self, store: SnapshotStore) -> str:
        """The URL a spawned child passes to ``child_opener`` to reach ``store``."""
        return store.url

    # -- basics -------------------------------------------------------------------------------

    def test_implements_the_protocol(self, store: SnapshotStore) -> None:
        assert isinstance(store, SnapshotStore)
        assert isinstance(store.url, str) and store.url

    def test_round_trip(self, store: SnapshotStore) -> None:
        values = {"empty": b"", "small": b"hello", "binary": bytes(range(256)) * 7}
        for key, value in values.items():
            store.put(key, value)
        for key, value in values.items():
            got = store.get(key)
            assert type(got) is bytes
            assert got == value, key

    def test_get_missing_key(self, store: SnapshotStore) -> None:
        with pytest.raises(KeyNotFound) as info:
            store.get("no/such/key")
        assert store.url in str(info.value) and "no/such/key" in str(info.value)
        with pytest.raises(KeyNotFound):
            store.head("no/such/key")

    def test_put_is_idempotent(self, store: SnapshotStore) -> None:
        store.put("blob", b"same bytes")
        store.put("blob", b"same bytes")
        assert store.get("blob") == b"same bytes"
        assert list(store.list("")) == ["blob"]

    def test_head_returns_value_and_stable_version(self, store: SnapshotStore) -> None:
        store.put("k", b"v1")
        data, version = store.head("k")
        assert data == b"v1"
        assert isinstance(version, str) and version
        assert store.head("k")[1] == version

    def test_close_twice(self, store: SnapshotStore) -> None:
        store.put("k", b"v")
        store.close()
        store.close()

    # -- compare-and-swap ---------------------------------------------------------------------

    def test_cas_create(self, store: SnapshotStore) -> None:
        version = store.cas("manifest", b"one", None)
        assert store.head("manifest") == (b"one", version)

    def test_cas_create_when_exists_conflicts(self, store: SnapshotStore) -> None:
        store.cas("manifest", b"one", None)
        with pytest.raises(Conflict) as info:
            store.cas("manifest", b"two", None)
        assert store.url in str(info.value) and "manifest" in str(info.value)
        assert store.get("manifest") == b"one"

    def test_cas_update(self, store: SnapshotStore) -> None:
        first = store.cas("manifest", b"one", None)
        second = store.cas("manifest", b"two", first)
        assert second != first
        assert store.head("manifest") == (b"two", second)

    def test_cas_stale_version_conflicts(self, store: SnapshotStore) -> None:
        first = store.cas("manifest", b"one", None)
        store.cas("manifest", b"two", first)
        with pytest.raises(Conflict):
            store.cas("manifest", b"three", first)
        assert store.get("manifest") == b"two"

    def test_cas_on_missing_key_with_a_version_conflicts(self, store: SnapshotStore) -> None:
        version = store.cas("manifest", b"one", None)
        store.delete("manifest")
        with pytest.raises(Conflict):
            store.cas("manifest", b"two", version)
        with pytest.raises(KeyNotFound):
            store.get("manifest")

    def test_cas_after_put_uses_head_version(self, store: SnapshotStore) -> None:
        store.put("manifest", b"one")
        version = store.head("manifest")[1]
        new = store.cas("manifest", b"two", version)
        assert store.head("manifest") == (b"two", new)

    def test_cas_race_between_threads(self, store: SnapshotStore) -> None:
        store.cas("race", b"start", None)
        workers = self.thread_workers
        barrier = threading.Barrier(workers)
        won: list[tuple[int, int, str]] = []
        errors: list[BaseException] = []
        lock = threading.Lock()

        def contend(worker: int) -> None:
            try:
                for round_ in range(self.race_rounds):
                    barrier.wait(self.race_timeout)
                    _, version = store.head("race")
                    barrier.wait(self.race_timeout)
                    try:
                        new = store.cas("race", f"{round_}:{worker}".encode(), version)
                    except Conflict:
                        continue
                    with lock:
                        won.append((round_, worker, new))
            except BaseException as exc:
                errors.append(exc)
                barrier.abort()

        threads = [threading.Thread(target=contend, args=(i,)) for i in range(workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(self.race_timeout)
        assert not any(t.is_alive() for t in threads), "CAS race threads did not finish"
        assert not errors, errors
        rounds = sorted(round_ for round_, _, _ in won)
        assert rounds == list(range(self.race_rounds)), f"winners per round: {won}"
        last_round, last_worker, last_version = max(won)
        assert store.head("race") == (f"{last_round}:{last_worker}".encode(), last_version)

    def test_cas_race_between_processes(self, store: SnapshotStore) -> None:
        if not self.supports_processes:
            pytest.skip(f"{type(self).__name__}: the store lives inside one process")
        store.cas("race", b"start", None)
        ctx = multiprocessing.get_context("spawn")
        workers = self.process_workers
        barrier = ctx.Barrier(workers)
        results = ctx.Queue()
        url, rounds, timeout = self.child_url(store), self.race_rounds, self.race_timeout
        procs = [
            ctx.Process(
                target=_process_race_worker,
                args=(self.child_opener, url, "race", i, rounds, barrier, results, timeout),
                daemon=True,
            )
            for i in range(workers)
        ]
        outcomes: list[tuple[str, int, Any]] = []
        try:
            for proc in procs:
                proc.start()
            expected = workers * self.race_rounds
            while len(outcomes) < expected:  # bounded: one message per worker and round
                try:
                    outcome = results.get(timeout=self.race_timeout)
                except queue.Empty:
                    pytest.fail(f"CAS race between processes stalled after {outcomes}")
                assert outcome[0] != "error", f"worker {outcome[1]} failed: {outcome[2]}"
                outcomes.append(outcome)
            for proc in procs:
                proc.join(self.race_timeout)
                assert proc.exitcode == 0, f"worker exited with {proc.exitcode}"
        finally:
            for proc in procs:
                if proc.is_alive():
                    proc.kill()
                    proc.join(5)
            results.close()
            results.join_thread()
        winners = sorted((round_, worker) for kind, worker, round_ in outcomes if kind == "won")
        assert [r for r, _ in winners] == list(range(self.race_rounds)), f"winners: {winners}"
        last_round, last_worker = winners[-1]
        assert store.get("race") == f"{last_round}:{last_worker}".encode()

    # -- listing and deleting -----------------------------------------------------------------

    def test_list_by_prefix(self, store: SnapshotStore) -> None:
        keys = ["s1/a", "s1/b/c", "s1/b/d/e", "s10/a", "s2", "top"]
        for key in keys:
            store.put(key, key.encode())
        assert sorted(store.list("")) == keys
        assert sorted(store.list("s1/")) == ["s1/a", "s1/b/c", "s1/b/d/e"]
        assert sorted(store.list("s1/b/")) == ["s1/b/c", "s1/b/d/e"]
        assert sorted(store.list("s1")) == ["s1/a", "s1/b/c", "s1/b/d/e", "s10/a"]
        assert sorted(store.list("s")) == ["s1/a", "s1/b/c", "s1/b/d/e", "s10/a", "s2"]
        assert list(store.list("s1/b/d/e")) == ["s1/b/d/e"]
        assert list(store.list("nothing/")) == []
        assert list(store.list("s3")) == []

    def test_list_shows_no_private_files(self, store: SnapshotStore) -> None:
        store.put("dir/blob", b"x")
        version = store.cas("dir/manifest", b"1", None)
        store.cas("dir/manifest", b"2", version)
        store.put("other", b"y")
        assert sorted(store.list("")) == ["dir/blob", "dir/manifest", "other"]
        assert sorted(store.list("dir/")) == ["dir/blob", "dir/manifest"]

    def test_delete(self, store: SnapshotStore) -> None:
        store.put("a/b", b"1")
        store.put("a/c", b"2")
        store.delete("a/b")
        with pytest.raises(KeyNotFound):
            store.get("a/b")
        assert list(store.list("a/")) == ["a/c"]
        store.delete("a/b")  # deleting a missing key is not an error
        store.delete("never/existed")
        assert store.cas("a/b", b"again", None)

    # -- sizes and names ----------------------------------------------------------------------

    def test_big_blob(self, store: SnapshotStore) -> None:
        blob = os.urandom(self.big_blob_bytes)
        store.put("big", blob)
        got = store.get("big")
        assert len(got) == len(blob)
        assert got == blob

    @pytest.mark.parametrize("key", UNUSUAL_KEYS)
    def test_unusual_legal_keys(self, store: SnapshotStore, key: str) -> None:
        store.put(key, key.encode())
        assert store.get(key) == key.encode()
        assert list(store.list("")) == [key]
        assert list(store.list(key)) == [key]
        version = store.head(key)[1]
        store.cas(key, b"swapped", version)
        assert store.get(key) == b"swapped"
        store.delete(key)
        assert list(store.list("")) == []

    @pytest.mark.parametrize("key", REJECTED_KEYS)
    def test_rejected_keys(self, store: SnapshotStore, key: str) -> None:
        operations: list[Callable[[], object]] = [
            lambda: store.get(key),
            lambda: store.head(key),
            lambda: store.put(key, b"x"),
            lambda: store.cas(key, b"x", None),
            lambda: store.delete(key),
        ]
        for operation in operations:
            with pytest.raises(StoreError) as info:
                operation()
            assert not isinstance(info.value, (KeyNotFound, Conflict))
            assert store.url in str(info.value)
        assert list(store.list("")) == []

    @pytest.mark.parametrize("prefix", ["../", "/", "/abs", "a/../", "a//", "x\x00"])
    def test_rejected_prefixes(self, store: SnapshotStore, prefix: str) -> None:
        with pytest.raises(StoreError):
            list(store.list(prefix))

    # -- transient faults ---------------------------------------------------------------------

    def _retry(self, store: SnapshotStore) -> Retry:
        retry = getattr(store, "retry", None)
        if not isinstance(retry, Retry):
            pytest.skip(f"{type(store).__name__} does not retry through pipeline.stores.Retry")
        return retry

    def test_transient_faults_are_retried(self, store: SnapshotStore) -> None:
        retry = self._retry(store)
        operations: dict[str, Callable[[], object]] = {
            "put": lambda: store.put("k", b"v"),
            "get": lambda: store.get("k"),
            "cas": lambda: store.cas("m", b"1", None),
            "list": lambda: list(store.list("")),
            "delete": lambda: store.delete("k"),
        }
        for op, operation in operations.items():
            with inject_faults(retry, count=2, ops=frozenset({op})) as log:
                operation()
            assert log.injected == 2, op
            assert len(log.sleeps) == 2, op
            assert all(0 <= s <= retry.policy.max_delay for s in log.sleeps), log.sleeps
        with pytest.raises(KeyNotFound):
            store.get("k")
        assert store.get("m") == b"1"

    def test_lost_answer_to_a_cas_is_settled(self, store: SnapshotStore) -> None:
        retry = self._retry(store)
        with inject_faults(retry, count=1, phase="after", ops=frozenset({"cas"})):
            created = store.cas("m", b"1", None)  # landed; only the answer was lost
        assert store.head("m") == (b"1", created)
        with inject_faults(retry, count=1, phase="after", ops=frozenset({"cas"})):
            updated = store.cas("m", b"2", created)
        assert store.head("m") == (b"2", updated)
        with pytest.raises(Conflict):
            store.cas("m", b"3", created)

    def test_persistent_faults_give_up_with_a_store_error(self, store: SnapshotStore) -> None:
        retry = self._retry(store)
        with inject_faults(retry, count=10_000) as log, pytest.raises(StoreError) as info:
            store.get("some/key")
        assert not isinstance(info.value, KeyNotFound)
        assert store.url in str(info.value) and "some/key" in str(info.value)
        tries = sum(1 for call in log.calls if call[2] == "before")
        assert 1 < tries <= retry.policy.tries

    def test_answers_are_not_retried(self, store: SnapshotStore) -> None:
        retry = self._retry(store)
        store.cas("m", b"1", None)
        with inject_faults(retry, count=0) as log:
            with pytest.raises(Conflict):
                store.cas("m", b"2", None)
            with pytest.raises(KeyNotFound):
                store.get("missing")
        assert [call[0] for call in log.calls if call[2] == "before"] == ["cas", "get"]
        assert log.sleeps == []
