"""Choosing a store by URL: built-ins, entry points, missing extras, and the public surface."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

import pipeline.stores
import pipeline.testing
from pipeline.errors import SpecError
from pipeline.stores import RetryPolicy, open_store, registered_stores
from pipeline.stores.directory import DirectoryStore
from pipeline.stores.memory import MemoryStore

pytestmark = pytest.mark.usefixtures("no_store_key")


def test_public_surface_is_pinned() -> None:
    # Changing the public surface must be deliberate: this line changes with it.
    assert " ".join(pipeline.stores.__all__) == (
        "BaseStore Retry RetryPolicy SnapshotStore TransientError Version "
        "open_store registered_stores validate_key validate_prefix"
    )
    assert "StoreConformance" in pipeline.testing.__all__


def test_builtin_schemes_are_registered() -> None:
    found = registered_stores()
    assert found["s3"] == "pipeline.stores.s3:S3Store"
    assert found["postgresql"] == found["postgres"] == "pipeline.stores.postgres:PostgresStore"
    assert {"memory", "file"} <= set(found)


def test_unknown_scheme_lists_the_known_ones() -> None:
    with pytest.raises(SpecError) as info:
        open_store("ftp://host/path")
    message = str(info.value)
    assert message.startswith("no snapshot store is registered for ftp://")
    for scheme in ("file", "memory", "postgres", "postgresql", "s3"):
        assert scheme in message


def test_store_schemes_are_read_as_job_urls_are() -> None:
    # One url_scheme for jobs and stores: urlsplit dropped a scheme with "_" (not RFC 3986),
    # so an entry-point store "my_store" was looked up as "://".
    with pytest.raises(SpecError, match=r"no snapshot store is registered for my_store://"):
        open_store("my_store://host/path")


@pytest.mark.parametrize(
    ("url", "module", "extra"),
    [
        ("s3://bucket/prefix", "s3fs", "s3"),
        ("postgresql://localhost/db", "psycopg", "postgres"),
        ("postgres://localhost/db", "psycopg_pool", "postgres"),
    ],
)
def test_missing_extra_gives_an_install_hint(
    url: str, module: str, extra: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A None entry in sys.modules makes the import fail as if the package were not installed.
    monkeypatch.setitem(sys.modules, module, None)
    for name in ("pipeline.stores.s3", "pipeline.stores.postgres"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    with pytest.raises(SpecError) as info:
        open_store(url)
    assert f"({module} is missing)" in str(info.value)
    assert "\n" not in str(info.value)
    assert info.value.hint == f"pip install 'wasm-pipeline[{extra}]'"


def test_directory_is_the_default_relative_to_base_dir(tmp_path: Path) -> None:
    store = open_store(".pipeline", base_dir=tmp_path)
    assert isinstance(store.inner, DirectoryStore)  # type: ignore[attr-defined]
    assert store.root == tmp_path / ".pipeline"  # type: ignore[attr-defined]
    assert store.url == str(tmp_path / ".pipeline")
    store.close()
    store = open_store(f"file://{tmp_path}/other", base_dir=Path("/elsewhere"))
    assert store.url == f"{tmp_path}/other"
    store.close()


def test_store_schemes_are_case_insensitive() -> None:
    lower, upper = open_store("memory://registry-case"), open_store("Memory://registry-case")
    lower.put("k", b"v")
    assert upper.get("k") == b"v"


def test_memory_urls_share_contents_within_a_process() -> None:
    one = open_store("memory://registry-shared")
    two = open_store("memory://registry-shared")
    one.put("k", b"v")
    assert two.get("k") == b"v"
    assert isinstance(two.inner, MemoryStore)  # type: ignore[attr-defined]


def test_retry_policy_reaches_builtin_backends() -> None:
    policy = RetryPolicy(tries=2, deadline=1.0)
    store = open_store("memory://registry-retry", retry=policy)
    assert store.retry.policy is policy  # type: ignore[attr-defined]


def test_retry_policy_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_STORE_RETRIES", "3")
    monkeypatch.setenv("PIPELINE_STORE_RETRY_DEADLINE", "2.5")
    store = open_store("memory://registry-env")
    assert store.retry.policy == RetryPolicy(tries=3, deadline=2.5)  # type: ignore[attr-defined]


def test_third_party_backend_via_entry_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A real (if tiny) installed distribution: a module and a dist-info with the entry point.
    (tmp_path / "demo_store_pkg.py").write_text(
        textwrap.dedent(
            """
            from pipeline.stores.memory import MemoryStore

            class DemoStore(MemoryStore):
                def __init__(self, url):
                    super().__init__("memory://demo/" + url)
                    self.url = url
            """
        )
    )
    dist = tmp_path / "demo_store-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: demo-store\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[pipeline.stores]\ndemo = demo_store_pkg:DemoStore\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "demo_store_pkg", raising=False)

    assert registered_stores()["demo"] == "demo_store_pkg:DemoStore"
    store = open_store("demo://bucket")
    store.put("k", b"v")
    assert store.get("k") == b"v"
    assert type(store.inner).__name__ == "DemoStore"  # type: ignore[attr-defined]
    assert store.url == "demo://bucket"
