"""Encryption at rest: envelopes, keys, and the errors a wrong, missing or tampered key gives."""

from __future__ import annotations

import base64
import sys
import uuid
from pathlib import Path

import pytest

from pipeline.errors import Conflict, SnapshotCorrupt, SpecError, StoreError
from pipeline.stores import open_store
from pipeline.stores.directory import DirectoryStore
from pipeline.stores.encrypted import MAGIC, EncryptedStore, PlaintextGuard, StoreKey, load_key

KEY_A = bytes(range(32))
KEY_B = bytes(range(1, 33))
SECRET = b"the plaintext nobody may read at rest"


pytestmark = pytest.mark.usefixtures("no_store_key")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "store"


def key_strings(key: bytes) -> list[str]:
    """Every spelling of ``key`` that must never appear in a message or repr."""
    b64 = base64.b64encode(key).decode()
    return [key.hex(), b64, b64.rstrip("="), base64.urlsafe_b64encode(key).decode(), repr(key)]


def test_values_are_unreadable_without_the_key(root: Path) -> None:
    with open_store(str(root), key=KEY_A) as store:
        store.put("sessions/s/blob", SECRET)
        store.cas("sessions/s/manifest", SECRET, None)
    raw = DirectoryStore(str(root))
    for key in ("sessions/s/blob", "sessions/s/manifest"):
        envelope = raw.get(key)
        assert envelope.startswith(MAGIC)
        assert SECRET not in envelope
    with open_store(str(root), key=KEY_A) as store:
        assert store.get("sessions/s/blob") == SECRET


@pytest.mark.parametrize("url", ["memory://", "dir"])
def test_round_trip_and_cas_through_the_wrapper(url: str, root: Path) -> None:
    url = f"memory://enc-{uuid.uuid4().hex}" if url == "memory://" else str(root)
    with open_store(url, key=KEY_A) as store:
        assert isinstance(store, EncryptedStore)
        first = store.cas("m", b"same", None)
        # Random nonces: the same plaintext again is a new ciphertext, hence a new version.
        second = store.cas("m", b"same", first)
        assert second != first
        with pytest.raises(Conflict):
            store.cas("m", b"other", first)
        assert store.head("m") == (b"same", second)


def test_missing_key_is_a_clear_error(root: Path) -> None:
    with open_store(str(root), key=KEY_A) as store:
        store.put("blob", SECRET)
        key_id = store.key_id
    with open_store(str(root)) as store:
        assert isinstance(store, PlaintextGuard)
        with pytest.raises(StoreError) as info:
            store.get("blob")
    message = str(info.value)
    assert f"encrypted with key id {key_id}" in message
    assert "PIPELINE_STORE_KEY" in message and "'blob'" in message and str(root) in message
    assert info.value.hint


def test_wrong_key_names_both_key_ids(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with open_store(str(root), key=KEY_A) as store:
        store.put("blob", SECRET)
    monkeypatch.setenv("PIPELINE_STORE_KEY", KEY_B.hex())
    with open_store(str(root)) as store, pytest.raises(StoreError) as info:
        store.get("blob")
    assert not isinstance(info.value, SnapshotCorrupt)
    id_a, id_b = StoreKey(KEY_A, "a").key_id, StoreKey(KEY_B, "b").key_id
    assert str(info.value) == (
        f"{root}: 'blob' is encrypted with key id {id_a}; PIPELINE_STORE_KEY holds key id {id_b}"
    )
    for spelling in key_strings(KEY_A) + key_strings(KEY_B):
        assert spelling not in str(info.value) and spelling not in (info.value.hint or "")


def test_no_key_material_in_reprs(root: Path) -> None:
    store = open_store(str(root), key=KEY_A)
    key = load_key(KEY_A)
    for text in (repr(store), str(store.__dict__), repr(key), str(vars(key))):
        for spelling in key_strings(KEY_A):
            assert spelling not in text
    assert len(store.key_id) == 16
    store.close()


@pytest.mark.parametrize("where", ["body", "tag", "nonce", "format"])
def test_tampered_ciphertext_is_corrupt(root: Path, where: str) -> None:
    with open_store(str(root), key=KEY_A) as store:
        store.put("blob", SECRET)
    raw = DirectoryStore(str(root))
    envelope = bytearray(raw.get("blob"))
    offset = {"body": 30, "tag": len(envelope) - 1, "nonce": 14, "format": 4}[where]
    envelope[offset] ^= 0x01
    raw.put("blob", bytes(envelope))
    with open_store(str(root), key=KEY_A) as store:
        with pytest.raises(SnapshotCorrupt) as info:
            store.get("blob")
        assert "'blob'" in str(info.value) and str(root) in str(info.value)
        # The damaged value's version comes with the error, so it can be replaced by CAS.
        store.cas("blob", b"repaired", info.value.version)  # type: ignore[attr-defined]
        assert store.get("blob") == b"repaired"


def test_truncated_ciphertext_is_corrupt(root: Path) -> None:
    with open_store(str(root), key=KEY_A) as store:
        store.put("blob", SECRET)
    raw = DirectoryStore(str(root))
    raw.put("blob", raw.get("blob")[:30])
    with open_store(str(root), key=KEY_A) as store, pytest.raises(SnapshotCorrupt):
        store.get("blob")


def test_blob_moved_to_another_key_is_corrupt(root: Path) -> None:
    with open_store(str(root), key=KEY_A) as store:
        store.put("sessions/a/manifest", b"session a")
        store.put("sessions/b/manifest", b"session b")
    raw = DirectoryStore(str(root))
    raw.put("sessions/b/manifest", raw.get("sessions/a/manifest"))
    with open_store(str(root), key=KEY_A) as store, pytest.raises(SnapshotCorrupt):
        store.get("sessions/b/manifest")


def test_plaintext_value_in_an_encrypted_store_is_refused(root: Path) -> None:
    DirectoryStore(str(root)).put("blob", b"written without a key")
    with open_store(str(root), key=KEY_A) as store, pytest.raises(StoreError) as info:
        store.get("blob")
    assert "is not encrypted" in str(info.value)


@pytest.mark.parametrize(
    "spelling",
    [
        KEY_A.hex(),
        KEY_A.hex().upper(),
        base64.b64encode(KEY_A).decode(),
        base64.urlsafe_b64encode(KEY_A).decode().rstrip("="),
        f"  {KEY_A.hex()}\n",
    ],
)
def test_key_spellings(spelling: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_STORE_KEY", spelling)
    key = load_key()
    assert key is not None and key.key_id == StoreKey(KEY_A, "x").key_id
    assert key.source == "PIPELINE_STORE_KEY"


@pytest.mark.parametrize("content", [KEY_A, KEY_A.hex().encode() + b"\n", base64.b64encode(KEY_A)])
def test_key_file(content: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "store.key"
    path.write_bytes(content)
    monkeypatch.setenv("PIPELINE_STORE_KEY_FILE", str(path))
    key = load_key()
    assert key is not None and key.key_id == StoreKey(KEY_A, "x").key_id
    assert str(path) in key.source


@pytest.mark.parametrize("bad", ["tooshort", KEY_A.hex()[:-2], "!" * 44, base64.b64encode(b"x" * 31).decode()])
def test_malformed_key_is_a_store_error_without_echo(bad: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_STORE_KEY", bad)
    with pytest.raises(StoreError) as info:
        open_store("memory://never-opened")
    assert "PIPELINE_STORE_KEY" in str(info.value)
    assert bad not in str(info.value)


def test_key_file_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_STORE_KEY_FILE", str(tmp_path / "absent.key"))
    with pytest.raises(StoreError, match="cannot read the store key"):
        load_key()


def test_both_key_variables_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_STORE_KEY", KEY_A.hex())
    monkeypatch.setenv("PIPELINE_STORE_KEY_FILE", str(tmp_path / "k"))
    with pytest.raises(StoreError, match="not both"):
        load_key()


def test_bad_key_fails_before_touching_the_store(tmp_path: Path) -> None:
    root = tmp_path / "never-created"
    with pytest.raises(StoreError):
        open_store(str(root), key="not a key")
    assert not root.exists()


def test_missing_cryptography_hints_at_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cryptography.hazmat.primitives.ciphers.aead", None)
    with pytest.raises(SpecError) as info:
        open_store("memory://x", key=KEY_A)
    assert info.value.hint == "pip install 'wasm-pipeline[crypto]'"


def test_guard_is_transparent_for_plain_values(root: Path) -> None:
    with open_store(str(root)) as store:
        store.put("a", b"plain")
        version = store.cas("m", b"1", None)
        assert store.head("m") == (b"1", version)
        assert store.get("a") == b"plain"
        assert store.root == root  # backend attributes stay reachable
        assert repr(store) == repr(store.inner)


@pytest.mark.s3
def test_encrypted_s3_objects_are_envelopes(s3_server, s3_url: str) -> None:  # type: ignore[no-untyped-def]
    with open_store(s3_url, key=KEY_A) as store:
        store.put("blob", SECRET)
        assert store.get("blob") == SECRET
        bucket_and_prefix = s3_url.removeprefix("s3://").partition("?")[0]
        bucket, _, prefix = bucket_and_prefix.partition("/")
    client = s3_server.client()
    try:
        body = client.get_object(Bucket=bucket, Key=f"{prefix}/blob")["Body"].read()
    finally:
        client.close()
    assert body.startswith(MAGIC) and SECRET not in body
