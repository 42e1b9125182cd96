"""Encryption at rest for any store: AES-256-GCM envelopes around every value.

:func:`open_store` wraps a backend in :class:`EncryptedStore` when a key is configured
(``PIPELINE_STORE_KEY``: 32 bytes as 64 hex digits or base64; or ``PIPELINE_STORE_KEY_FILE``: a
file holding the same, or the 32 raw bytes). Every value is stored as an envelope::

    magic b"\\x00PLE" | format 0x01 | key id (8 bytes) | nonce (12 bytes) | ciphertext + tag (16)

The key id is the first 8 bytes of ``sha256("wasm-pipeline store key id" || key)``: it names a
key without revealing it, so a wrong key is reported as such ("encrypted with key id ...; the
key in PIPELINE_STORE_KEY has key id ...") rather than as corruption. The associated data binds
the header and the store key (the object's name), so a blob moved to another key, re-labelled
with another key id, or altered in any bit fails authentication: ``SnapshotCorrupt``.

Versions are the inner store's versions of the ciphertext. Nonces are random, so writing the
same plaintext twice gives two ciphertexts and two versions; compare-and-swap works unchanged.

Without a key, :func:`open_store` still wraps the backend in :class:`PlaintextGuard`, which
passes everything through but turns reading an envelope into a clear "this store is encrypted,
set PIPELINE_STORE_KEY" error instead of a baffling decode failure further up.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import SnapshotCorrupt, SpecError, StoreError

if TYPE_CHECKING:
    from pipeline.stores import SnapshotStore

__all__ = ["KEY_ENV", "KEY_FILE_ENV", "EncryptedStore", "PlaintextGuard", "StoreKey", "load_key"]

KEY_ENV = "PIPELINE_STORE_KEY"
KEY_FILE_ENV = "PIPELINE_STORE_KEY_FILE"

MAGIC = b"\x00PLE"
FORMAT_AES256GCM = 1
_KEY_ID_LEN = 8
_NONCE_LEN = 12
_TAG_LEN = 16
_HEADER_LEN = len(MAGIC) + 1 + _KEY_ID_LEN  # before the nonce
_MIN_LEN = _HEADER_LEN + _NONCE_LEN + _TAG_LEN
_HINT = f"set {KEY_ENV} (or {KEY_FILE_ENV}) to the key this store was written with"


def envelope_key_id(data: bytes) -> str | None:
    """The key id (hex) of an encrypted envelope, or None when ``data`` is not one."""
    if data[: len(MAGIC)] != MAGIC or len(data) < _HEADER_LEN:
        return None
    return data[len(MAGIC) + 1 : _HEADER_LEN].hex()


class StoreKey:
    """A 32-byte AES-256-GCM key and its public key id; its repr never shows the key."""

    def __init__(self, raw: bytes, source: str) -> None:
        if len(raw) != 32:
            raise StoreError(f"{source} must hold a 32-byte key (got {len(raw)} bytes)")
        try:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        except ImportError as exc:
            raise SpecError(
                "encrypted stores need the optional dependency cryptography",
                hint="pip install 'wasm-pipeline[crypto]'",
            ) from exc
        self._aead = AESGCM(raw)
        self.id_bytes = hashlib.sha256(b"wasm-pipeline store key id\x00" + raw).digest()[:_KEY_ID_LEN]
        self.key_id = self.id_bytes.hex()
        self.source = source

    def __repr__(self) -> str:
        return f"StoreKey(key_id={self.key_id!r}, source={self.source!r})"

    @classmethod
    def parse(cls, text: str | bytes, source: str) -> StoreKey:
        """Read a key written as 64 hex digits or as base64 (standard or URL-safe)."""
        value = text.decode("ascii", "replace") if isinstance(text, bytes) else text
        value = value.strip()
        try:
            if len(value) == 64:
                return cls(bytes.fromhex(value), source)
            padded = value.replace("-", "+").replace("_", "/") + "=" * (-len(value) % 4)
            return cls(base64.b64decode(padded, validate=True), source)
        except (ValueError, binascii.Error):
            # Never echo the value: it is (or is meant to be) key material.
            raise StoreError(
                f"{source} is not a 32-byte key written as 64 hex digits or as base64 ({len(value)} characters)",
                hint='make one with: python -c "import secrets; print(secrets.token_hex(32))"',
            ) from None

    def seal(self, key: str, plaintext: bytes) -> bytes:
        """Encrypt ``plaintext`` stored under ``key`` into an envelope."""
        header = MAGIC + bytes([FORMAT_AES256GCM]) + self.id_bytes
        nonce = secrets.token_bytes(_NONCE_LEN)
        return header + nonce + self._aead.encrypt(nonce, plaintext, header + key.encode())

    def open(self, url: str, key: str, envelope: bytes) -> bytes:
        """Decrypt the envelope stored under ``key``; every failure names ``url`` and ``key``."""
        blob_id = envelope_key_id(envelope)
        if blob_id is None:
            raise StoreError(
                f"{url}: {key!r} is not encrypted, but {self.source} is set; refusing a value "
                "that anyone with write access could have put there",
                hint=f"unset {KEY_ENV} / {KEY_FILE_ENV} to read an unencrypted store",
            )
        if envelope[len(MAGIC)] != FORMAT_AES256GCM:
            raise SnapshotCorrupt(f"{url}: {key!r} has an unknown encryption format {envelope[len(MAGIC)]}")
        if blob_id != self.key_id:
            raise StoreError(
                f"{url}: {key!r} is encrypted with key id {blob_id}; {self.source} holds key id {self.key_id}",
                hint=_HINT,
            )
        if len(envelope) < _MIN_LEN:
            raise SnapshotCorrupt(f"{url}: {key!r} is a truncated encrypted value")
        from cryptography.exceptions import InvalidTag

        header, nonce = envelope[:_HEADER_LEN], envelope[_HEADER_LEN : _HEADER_LEN + _NONCE_LEN]
        try:
            return self._aead.decrypt(nonce, envelope[_HEADER_LEN + _NONCE_LEN :], header + key.encode())
        except InvalidTag:
            raise SnapshotCorrupt(
                f"{url}: {key!r} fails authentication: the encrypted value was altered, "
                "truncated or moved from another key"
            ) from None


def load_key(key: str | bytes | None = None, environ: dict[str, str] | None = None) -> StoreKey | None:
    """The store key from ``key`` if given, else from the environment; None if there is none.

    ``key`` is 32 raw bytes, or text in hex / base64. From the environment, ``PIPELINE_STORE_KEY``
    holds the text; ``PIPELINE_STORE_KEY_FILE`` names a file with the text or the raw bytes.
    """
    if key is not None:
        if isinstance(key, bytes) and len(key) == 32:
            return StoreKey(key, "the key passed to open_store")
        return StoreKey.parse(key, "the key passed to open_store")
    env = os.environ if environ is None else environ
    text, path = env.get(KEY_ENV, ""), env.get(KEY_FILE_ENV, "")
    if text and path:
        raise StoreError(f"set {KEY_ENV} or {KEY_FILE_ENV}, not both")
    if text:
        return StoreKey.parse(text, KEY_ENV)
    if not path:
        return None
    source = f"{KEY_FILE_ENV} ({path})"
    try:
        content = Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise StoreError(f"cannot read the store key: {source}: {exc.strerror}") from None
    if len(content) == 32:
        return StoreKey(content, source)
    return StoreKey.parse(content, source)


class _Wrapper:
    """Forwards the protocol to ``inner``; subclasses change what values look like."""

    def __init__(self, inner: SnapshotStore) -> None:
        self.inner = inner
        self.url = inner.url

    @property
    def retry(self) -> Any:
        """The inner store's retry helper (for fault injection in tests)."""
        return self.inner.retry  # type: ignore[attr-defined]

    def get(self, key: str) -> bytes:
        """Return the value at ``key``; raise ``KeyNotFound`` when there is none."""
        return self.head(key)[0]

    def head(self, key: str) -> tuple[bytes, str]:
        """Return the value at ``key`` and its version; raise ``KeyNotFound``."""
        raise NotImplementedError

    def list(self, prefix: str) -> Iterator[str]:
        """Yield every key that starts with ``prefix``."""
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        """Remove ``key``; removing a missing key is not an error."""
        self.inner.delete(key)

    def close(self) -> None:
        """Close the inner store; calling it twice is fine."""
        self.inner.close()

    def __enter__(self) -> _Wrapper:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class EncryptedStore(_Wrapper):
    """A store whose values are AES-256-GCM envelopes in ``inner``."""

    def __init__(self, inner: SnapshotStore, key: StoreKey) -> None:
        super().__init__(inner)
        self._key = key
        self.key_id = key.key_id

    def __repr__(self) -> str:
        return f"EncryptedStore({self.inner!r}, key_id={self.key_id!r})"

    def head(self, key: str) -> tuple[bytes, str]:
        """Return the decrypted value at ``key`` and the version of its ciphertext.

        A value that fails authentication raises ``SnapshotCorrupt`` whose ``version``
        attribute is the stored version, so a caller can still replace it by ``cas``.
        """
        envelope, version = self.inner.head(key)
        try:
            return self._key.open(self.url, key, envelope), version
        except SnapshotCorrupt as exc:
            # The caller may want to replace the damaged value by compare-and-swap.
            exc.version = version  # type: ignore[attr-defined]
            raise

    def put(self, key: str, data: bytes) -> None:
        """Encrypt and store an immutable blob."""
        self.inner.put(key, self._key.seal(key, data))

    def cas(self, key: str, data: bytes, expected: str | None) -> str:
        """Encrypt, then compare-and-swap on the inner store's version."""
        return self.inner.cas(key, self._key.seal(key, data), expected)


class PlaintextGuard(_Wrapper):
    """Passes everything to ``inner`` but refuses to hand out encrypted envelopes as values."""

    def __repr__(self) -> str:
        return repr(self.inner)

    def __getattr__(self, name: str) -> Any:
        # Transparent for backend extras (a DirectoryStore's ``root``...); only reads change.
        return getattr(self.inner, name)

    def head(self, key: str) -> tuple[bytes, str]:
        """Return the value at ``key`` and its version; an envelope is a clear error."""
        data, version = self.inner.head(key)
        key_id = envelope_key_id(data)
        if key_id is not None:
            raise StoreError(
                f"{self.url}: {key!r} is encrypted with key id {key_id}, "
                f"but neither {KEY_ENV} nor {KEY_FILE_ENV} is set",
                hint=_HINT,
            )
        return data, version

    def put(self, key: str, data: bytes) -> None:
        """Store an immutable blob."""
        self.inner.put(key, data)

    def cas(self, key: str, data: bytes, expected: str | None) -> str:
        """Compare-and-swap on the inner store."""
        return self.inner.cas(key, data, expected)


def wrap(store: SnapshotStore, key: StoreKey | None) -> EncryptedStore | PlaintextGuard:
    """Wrap ``store`` for ``key``: encrypt with it, or guard against envelopes without one."""
    return PlaintextGuard(store) if key is None else EncryptedStore(store, key)
