"""What the conformance suite cannot say generically: each backend's faults, options and limits."""

from __future__ import annotations

import ctypes
import os
import stat
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import store_temporaries

from pipeline.errors import Conflict, KeyNotFound, StoreError
from pipeline.stores import Retry, RetryPolicy, TransientError, open_store
from pipeline.stores.directory import DirectoryStore
from pipeline.stores.memory import MemoryStore
from pipeline.stores.postgres import APP_NAME, PostgresStore
from pipeline.stores.s3 import S3Store

FAST = RetryPolicy(tries=4, base_delay=0.01, max_delay=0.02, deadline=5.0)


# -- the retry helper ---------------------------------------------------------------------------


def test_backoff_is_jittered_and_capped() -> None:
    policy = RetryPolicy(base_delay=0.1, max_delay=0.5)
    for attempt, cap in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.5), (9, 0.5)]:
        delays = [policy.backoff(attempt) for _ in range(200)]
        assert all(0 <= d <= cap for d in delays)
        assert len(set(delays)) > 100  # jitter, not a fixed schedule
    assert sum(RetryPolicy().backoff(n) for n in range(1, 5)) <= 0.2 + 0.4 + 0.8 + 1.6


def test_default_policy_stays_under_ten_seconds() -> None:
    policy = RetryPolicy()
    assert policy.tries == 5 and policy.deadline <= 10
    assert sum(min(policy.max_delay, policy.base_delay * 2**n) for n in range(policy.tries - 1)) < 10


@pytest.mark.parametrize("env", [{"PIPELINE_STORE_RETRIES": "many"}, {"PIPELINE_STORE_RETRY_DEADLINE": "soon"}])
def test_bad_retry_environment(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(StoreError, match="PIPELINE_STORE_RETRIES"):
        RetryPolicy.from_env()


def test_invalid_policy() -> None:
    with pytest.raises(StoreError):
        RetryPolicy(tries=0)


def test_the_deadline_counts_from_the_first_failure_not_from_the_first_request() -> None:
    # A request slower than the whole deadline (a big S3 part) that then fails is retried.
    calls = []
    retry = Retry("test://", RetryPolicy(tries=3, base_delay=0.01, max_delay=0.01, deadline=0.2))

    def slow_then_flaky() -> str:
        calls.append(time.monotonic())
        if len(calls) == 1:
            time.sleep(0.3)
            raise TransientError("reset after a long upload")
        return "ok"

    assert retry("put", "part", slow_then_flaky) == "ok"
    assert len(calls) == 2


def test_deadline_stops_retrying_before_tries_run_out() -> None:
    calls = []
    retry = Retry("test://", RetryPolicy(tries=100, base_delay=0.05, max_delay=0.05, deadline=0.3))

    def flaky() -> None:
        calls.append(time.monotonic())
        raise TransientError("down")

    started = time.monotonic()
    with pytest.raises(StoreError, match=r"test://: get 'k' failed after \d+ tries"):
        retry("get", "k", flaky)
    assert time.monotonic() - started < 1.0
    assert 1 < len(calls) < 100


def test_unknown_errors_become_store_errors_at_once() -> None:
    calls = []

    def broken() -> None:
        calls.append(1)
        raise ValueError("bad answer")

    with pytest.raises(StoreError, match="test://: put 'k' failed: bad answer") as info:
        Retry("test://", FAST)("put", "k", broken)
    assert isinstance(info.value.__cause__, ValueError)
    assert calls == [1]


# -- memory and directory -----------------------------------------------------------------------


def test_memory_stores_on_one_url_share_one_lock() -> None:
    url = f"memory://shared-{uuid.uuid4().hex}"
    a, b = MemoryStore(url), MemoryStore(url)
    version = a.cas("m", b"1", None)
    with pytest.raises(Conflict):
        b.cas("m", b"2", None)
    assert b.cas("m", b"2", version)
    assert a._lock is b._lock


def test_directory_rejects_private_segments(tmp_path: Path) -> None:
    store = DirectoryStore(str(tmp_path))
    for key in (".~lock", "a/.~tmp"):
        with pytest.raises(StoreError, match="may not start with"):
            store.put(key, b"x")


def test_directory_hides_leftover_temporary_files(tmp_path: Path) -> None:
    store = DirectoryStore(str(tmp_path))
    store.put("a/b", b"x")
    (tmp_path / "a" / ".~b.deadbeef.tmp").write_bytes(b"half a write from a crash")
    assert list(store.list("")) == ["a/b"]


def test_directory_cas_creates_no_lock_files(tmp_path: Path) -> None:
    """CAS locks the key's directory: creating a lock file per key cost a file creation per session."""
    store = DirectoryStore(str(tmp_path))
    version = store.cas("sessions/s/manifest", b"1", None)
    store.cas("sessions/s/manifest", b"2", version)
    assert sorted(p.name for p in (tmp_path / "sessions" / "s").iterdir()) == ["manifest"]
    with pytest.raises(Conflict):
        store.cas("sessions/s/manifest", b"3", version)


def test_a_deferred_commit_leaves_other_runs_pending_directory_syncs_to_them(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A group commit (deferring, on its thread) must not take over a running session's pending
    directory fsyncs: deferred, they would only be noted while that run's commit relies on them."""
    from pipeline._fs import DeferredSyncs, deferred_syncs

    store = DirectoryStore(str(tmp_path))
    store.put("sessions/a/pages/p1", b"page")  # a running session's blob: its dir fsync is pending
    syncs = DeferredSyncs()
    with deferred_syncs(syncs):
        store.cas("sessions/b/manifest", b"complete", None)  # another session's deferred commit
    syncs.close()
    synced: list[str] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd)))
    store.cas("sessions/a/manifest", b"running", None)  # the blob's directory is durable before this
    assert str(tmp_path / "sessions" / "a" / "pages") in synced


def test_a_group_commit_names_a_created_key_only_at_its_barrier(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Inside a group commit a creating ``cas`` writes its bytes unsynced and names them only
    after the barrier's first sync: no fsync, and no name a power loss could leave empty."""
    from pipeline import _fs
    from pipeline._fs import DeferredSyncs, deferred_syncs

    store = DirectoryStore(str(tmp_path))
    events: list[str] = []
    real_syncfs, real_link = _fs._syncfs, os.link
    assert real_syncfs is not None
    monkeypatch.setattr(os, "fsync", lambda fd: events.append("fsync"))
    monkeypatch.setattr(_fs, "_syncfs", lambda fd: (events.append("sync"), real_syncfs(fd))[1])
    monkeypatch.setattr(
        os, "link", lambda src, dst: (events.append(f"name {Path(dst).parent.name}"), real_link(src, dst))
    )
    syncs = DeferredSyncs()
    with deferred_syncs(syncs):
        for session in ("a", "b"):
            with syncs.owner(session):
                store.cas(f"sessions/{session}/manifest", session.encode(), None)
    with pytest.raises(KeyNotFound):  # staged: written, not yet named
        store.get("sessions/a/manifest")
    assert syncs.barrier() == {}
    assert events == ["sync", "name a", "name b", "sync"]
    assert store.get("sessions/a/manifest") == b"a" and store.get("sessions/b/manifest") == b"b"
    assert store_temporaries(tmp_path) == []


def test_a_key_created_while_a_group_staged_it_fails_only_that_session(tmp_path: Path) -> None:
    from pipeline._fs import DeferredSyncs, deferred_syncs

    store = DirectoryStore(str(tmp_path))
    syncs = DeferredSyncs()
    with deferred_syncs(syncs):
        for session in ("a", "b"):
            with syncs.owner(session):
                store.cas(f"sessions/{session}/manifest", b"group", None)
    store.cas("sessions/b/manifest", b"another run", None)  # wins between staging and naming
    failed = syncs.barrier()
    assert list(failed) == ["b"] and isinstance(failed["b"], Conflict)
    assert "sessions/b/manifest" in str(failed["b"]) and "compare-and-swap lost" in str(failed["b"])
    assert store.get("sessions/a/manifest") == b"group"
    assert store.get("sessions/b/manifest") == b"another run"  # a link never replaces a name
    assert store_temporaries(tmp_path) == []


def test_a_failed_group_sync_names_nothing_and_leaves_no_temporary_file(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import errno

    from pipeline import _fs
    from pipeline._fs import DeferredSyncs, deferred_syncs

    store = DirectoryStore(str(tmp_path))
    syncs = DeferredSyncs()
    with deferred_syncs(syncs):
        store.cas("sessions/a/manifest", b"group", None)
    monkeypatch.setattr(_fs, "_syncfs", lambda fd: (ctypes.set_errno(errno.EIO), -1)[1])
    with pytest.raises(OSError, match="Input/output error"):
        syncs.barrier()
    with pytest.raises(KeyNotFound):
        store.get("sessions/a/manifest")
    assert store_temporaries(tmp_path) == []


def test_directory_key_that_is_a_folder_is_not_found(tmp_path: Path) -> None:
    store = DirectoryStore(str(tmp_path))
    store.put("a/b", b"x")
    with pytest.raises(KeyNotFound):
        store.get("a")
    with pytest.raises(KeyNotFound):
        store.get("a/b/c")
    store.delete("a")


def test_directory_listing_never_leaves_the_root(tmp_path: Path) -> None:
    (tmp_path / "outside").write_bytes(b"not in the store")
    store = DirectoryStore(str(tmp_path / "store"))
    store.put("inside", b"x")
    for prefix in ("../", "../outside", "/", "./"):
        with pytest.raises(StoreError):
            list(store.list(prefix))
    assert list(store.list("")) == ["inside"]


def test_directory_unwritable_root(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(StoreError, match="cannot create store directory"):
        DirectoryStore(str(tmp_path / "file" / "store"))


def test_closed_store_refuses_work(tmp_path: Path) -> None:
    store = DirectoryStore(str(tmp_path))
    store.close()
    with pytest.raises(StoreError, match="store is closed"):
        store.get("k")


# -- S3 -------------------------------------------------------------------------------------------


@pytest.fixture
def s3_store(s3_url: str) -> Iterator[S3Store]:
    store = S3Store(s3_url, retry=FAST)
    yield store
    store.close()


@pytest.mark.s3
def test_s3_server_faults_are_retried(s3_server: Any, s3_store: S3Store) -> None:
    s3_store.put("k", b"v")
    for status, code in [(503, "SlowDown"), (500, "InternalError"), (429, "TooManyRequests")]:
        before = s3_server.middleware.requests
        s3_server.middleware.fail_next(2, status, code)
        assert s3_store.get("k") == b"v"
        # Exactly 3 requests: botocore's own retries are off, ours made the 2 extra.
        assert s3_server.middleware.requests - before == 3


@pytest.mark.s3
def test_s3_persistent_faults_give_up(s3_server: Any, s3_store: S3Store) -> None:
    before = s3_server.middleware.requests
    s3_server.middleware.fail_next(100, 503, "SlowDown")
    try:
        with pytest.raises(StoreError) as info:
            s3_store.put("some/key", b"v")
    finally:
        s3_server.middleware.fail_next(0)
    assert s3_server.middleware.requests - before == FAST.tries
    assert f"{s3_store.url}: put 'some/key' failed after {FAST.tries} tries" in str(info.value)
    assert "SlowDown" in str(info.value)


@pytest.mark.s3
def test_s3_client_errors_are_not_retried(s3_server: Any, s3_store: S3Store) -> None:
    before = s3_server.middleware.requests
    s3_server.middleware.fail_next(1, 403, "AccessDenied")
    with pytest.raises(StoreError, match="AccessDenied"):
        s3_store.get("k")
    assert s3_server.middleware.requests - before == 1


@pytest.mark.s3
def test_s3_conditional_request_conflict_is_a_conflict(s3_server: Any, s3_store: S3Store) -> None:
    version = s3_store.cas("m", b"1", None)
    s3_server.middleware.fail_next(1, 409, "ConditionalRequestConflict")
    with pytest.raises(Conflict):
        s3_store.cas("m", b"2", version)
    assert s3_store.get("m") == b"1"


def test_s3_unreachable_endpoint(aws_env: pytest.MonkeyPatch, closed_port: int) -> None:
    url = f"s3://bucket/prefix?endpoint_url=http://127.0.0.1:{closed_port}"
    with S3Store(url, retry=FAST) as store, pytest.raises(StoreError) as info:
        store.get("k")
    assert f"{url}: get 'k' failed after" in str(info.value)
    assert "Could not connect" in str(info.value)


def test_s3_without_credentials_says_so(aws_env: pytest.MonkeyPatch, closed_port: int) -> None:
    aws_env.delenv("AWS_ACCESS_KEY_ID")
    aws_env.delenv("AWS_SECRET_ACCESS_KEY")
    url = f"s3://bucket/p?endpoint_url=http://127.0.0.1:{closed_port}"
    with S3Store(url, retry=FAST) as store, pytest.raises(StoreError, match="failed: no AWS credentials found"):
        store.get("k")


@pytest.mark.s3
def test_s3_endpoint_from_the_environment(s3_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server.endpoint)
    with open_store(f"s3://pipeline-test/{uuid.uuid4().hex}") as store:
        store.put("k", b"v")
        assert store.get("k") == b"v"


@pytest.mark.s3
def test_s3_missing_bucket(s3_server: Any) -> None:
    with S3Store(f"s3://no-such-bucket/p?endpoint_url={s3_server.endpoint}", retry=FAST) as store:
        with pytest.raises(StoreError, match="bucket 'no-such-bucket' does not exist"):
            store.put("k", b"v")
        with pytest.raises(StoreError, match="does not exist"):
            list(store.list(""))


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("s3:///prefix", "needs a bucket"),
        ("s3://bucket/p?secret=x", "unknown S3 store option secret"),
        ("s3://bucket/../up", "invalid store key"),
    ],
)
def test_s3_bad_urls(url: str, message: str) -> None:
    with pytest.raises(StoreError, match=message):
        S3Store(url)


@pytest.mark.s3
def test_s3_prefixes_do_not_see_each_other(s3_server: Any) -> None:
    base = f"s3://pipeline-test/iso-{uuid.uuid4().hex}"
    with (
        S3Store(f"{base}/p?endpoint_url={s3_server.endpoint}") as short,
        S3Store(f"{base}/p2?endpoint_url={s3_server.endpoint}") as longer,
    ):
        short.put("k", b"short")
        longer.put("k", b"longer")
        assert list(short.list("")) == ["k"]
        assert short.get("k") == b"short" and longer.get("k") == b"longer"


# -- PostgreSQL -----------------------------------------------------------------------------------


def _drop(dsn: str, *names: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        for name in names:
            conn.execute(f"DROP {name} CASCADE")


@pytest.mark.postgres
def test_postgres_dropped_connections_are_retried(postgres_dsn: str, postgres_url: str) -> None:
    import psycopg

    with PostgresStore(postgres_url, retry=FAST) as store:
        store.put("k", b"v")
        # Several idle connections in the pool, all about to die: more than the retry's tries.
        barrier = threading.Barrier(6)

        def hold_a_connection() -> None:
            store._transaction("k", lambda conn: barrier.wait(30))

        threads = [threading.Thread(target=hold_a_connection) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        with psycopg.connect(postgres_dsn, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                (APP_NAME,),
            ).fetchall()
        assert len(killed) >= 6
        assert store.get("k") == b"v"
        assert store.cas("m", b"1", None)


@pytest.mark.postgres
def test_postgres_concurrent_first_use(postgres_url: str) -> None:
    workers = 8
    barrier = threading.Barrier(workers)
    outcomes: list[str] = []

    def first_use() -> None:
        with PostgresStore(postgres_url) as store:
            barrier.wait(30)
            try:
                store.cas("manifest", b"x", None)
                outcomes.append("won")
            except Conflict:
                outcomes.append("lost")
            except Exception as exc:  # reported below, with its type
                outcomes.append(repr(exc))

    threads = [threading.Thread(target=first_use) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(outcomes) == ["lost"] * (workers - 1) + ["won"]


@pytest.mark.postgres
def test_postgres_schema_and_table_options(postgres_dsn: str) -> None:
    schema, table = f"s_{uuid.uuid4().hex[:12]}", "my store"
    try:
        with open_store(f"{postgres_dsn}?schema={schema}&table={table}") as store:
            store.put("k", b"v")
        with PostgresStore(f"{postgres_dsn}?schema={schema}&table={table}") as again:
            assert again.get("k") == b"v"
    finally:
        _drop(postgres_dsn, f'SCHEMA "{schema}"')


@pytest.mark.postgres
def test_postgres_scheme_alias(postgres_dsn: str, postgres_url: str) -> None:
    alias = postgres_url.replace("postgresql://", "postgres://", 1)
    with open_store(alias) as store:
        store.put("k", b"v")
        assert isinstance(store.inner, PostgresStore)  # type: ignore[attr-defined]


@pytest.mark.postgres
def test_postgres_unknown_option_is_rejected_up_front(postgres_dsn: str) -> None:
    with pytest.raises(StoreError, match="not a valid PostgreSQL URL"):
        PostgresStore(f"{postgres_dsn}?tabel=x")


def test_postgres_password_is_masked(closed_port: int) -> None:
    url = f"postgresql://user:hunter2@127.0.0.1:{closed_port}/db?table=t"
    policy = RetryPolicy(tries=2, base_delay=0.01, deadline=1.0)
    with PostgresStore(url, retry=policy) as store:
        assert store.url == url.replace("hunter2", "***")
        assert "hunter2" not in repr(store)
        started = time.monotonic()
        with pytest.raises(StoreError) as info:
            store.get("k")
        assert time.monotonic() - started < 5
    message = str(info.value)
    assert "hunter2" not in message
    assert message.startswith(f"{store.url}: no connection for 'k': ")
    assert "refused" in message  # the real reason, not just "pool timeout"


@pytest.mark.postgres
def test_postgres_values_are_raw_bytes(postgres_url: str) -> None:
    with PostgresStore(postgres_url) as store:
        blob = os.urandom(1 << 20) + b"\x00\\x00"
        store.put("blob", blob)
        assert store.get("blob") == blob


def test_directory_store_defers_a_creates_directory_fsync_to_the_next_commit(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    synced_dirs: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            synced_dirs.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    store = DirectoryStore(str(tmp_path / "store"))
    session_dir = str(tmp_path / "store" / "sessions" / "s")
    version = store.cas("sessions/s/manifest", b"starting", None)
    assert synced_dirs == []  # a crash here loses a session that had done nothing yet
    store.cas("sessions/s/manifest", b"complete", version)
    assert synced_dirs == [session_dir]  # once, after the rename, not also before it
    store.cas("sessions/t/manifest", b"starting", None)
    store.close()
    assert synced_dirs == [session_dir, str(tmp_path / "store" / "sessions" / "t")]  # close makes it durable
