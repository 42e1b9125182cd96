"""A store in a PostgreSQL table (``postgresql://user@host/db?table=...&schema=...``).

One row per key: ``(key text, value bytea, version text)``. Every operation is one statement in
its own transaction, so a value is replaced atomically and is durable once the call returns
(with the server's default ``synchronous_commit``). ``cas`` is ``INSERT ... ON CONFLICT DO
NOTHING`` (create) or ``UPDATE ... WHERE version = expected`` (replace): row locks serialise
concurrent writers and the loser's statement matches no row, which becomes ``Conflict``.
Versions are random tokens drawn per write, so a value that returns to earlier bytes still gets
a new version (no ABA).

The table (and schema) are created on first use with ``CREATE ... IF NOT EXISTS`` under a
transaction-scoped advisory lock, because two sessions racing through ``IF NOT EXISTS`` can
still collide on the catalog. Connections come from a ``psycopg_pool`` pool opened lazily
(``min_size=0``), so opening a store costs nothing until it is used.

URL options (removed before the DSN reaches libpq): ``table`` (default ``pipeline_store``),
``schema`` (default: the connection's search path), ``pool_size`` (default 8). Everything else
is libpq's: ``PGPASSWORD``, ``PGSSLMODE``, ``~/.pgpass``, ``?sslmode=``... A password in the
URL is masked in ``url`` and in every message.
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
import psycopg.conninfo
import psycopg_pool
from psycopg import sql

from pipeline.errors import Conflict, KeyNotFound, StoreError
from pipeline.stores._base import BaseStore
from pipeline.stores._retry import RetryPolicy

T = TypeVar("T")

_OPTIONS = {"table", "schema", "pool_size"}
_DEFAULT_TABLE = "pipeline_store"
APP_NAME = "wasm-pipeline store"  # application_name, unless the URL sets one


def is_transient(exc: BaseException) -> bool:
    """Whether a PostgreSQL failure is worth another try.

    ``OperationalError`` covers a dropped or refused connection, an admin shutdown, a
    serialization failure or deadlock. ``PoolTimeout`` is one too, but the pool has already
    waited its whole timeout for a connection (retrying in the background), so retrying it
    again would only multiply the wait.
    """
    return isinstance(exc, psycopg.OperationalError) and not isinstance(exc, psycopg_pool.PoolTimeout)


def describe(exc: BaseException) -> str:
    """The first line of a psycopg error: its server message without context lines."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _connect_defaults(url: str, conninfo: str, policy: RetryPolicy) -> dict[str, Any]:
    """libpq settings the DSN did not choose: a bounded connect, a name in pg_stat_activity."""
    try:
        given = psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError as exc:
        raise StoreError(f"{url}: not a valid PostgreSQL URL: {describe(exc)}") from None
    defaults = {"connect_timeout": max(1, int(policy.deadline)), "application_name": APP_NAME}
    return {k: v for k, v in defaults.items() if k not in given}


def _mask(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[2]}"))


class PostgresStore(BaseStore):
    """A snapshot store in one PostgreSQL table."""

    def __init__(self, url: str, *, retry: RetryPolicy | None = None) -> None:
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        options = {k: v for k, v in query if k in _OPTIONS}
        conninfo = urlunsplit(parts._replace(query=urlencode([q for q in query if q[0] not in _OPTIONS])))
        policy = retry or RetryPolicy.from_env()
        super().__init__(_mask(url), retry=policy, is_transient=is_transient, describe=describe)
        schema = options.get("schema") or None
        self.table = options.get("table") or _DEFAULT_TABLE
        try:
            pool_size = int(options.get("pool_size") or 8)
        except ValueError:
            raise StoreError(f"{self.url}: pool_size must be an integer") from None
        self._name = sql.Identifier(*(n for n in (schema, self.table) if n))
        self._schema = schema
        self._conninfo = conninfo
        self._ready = False
        self._ready_lock = threading.Lock()
        self._pool: psycopg_pool.ConnectionPool[psycopg.Connection[Any]] = psycopg_pool.ConnectionPool(
            conninfo,
            min_size=0,
            max_size=max(1, pool_size),
            open=True,
            # The pool retries connecting in the background until this timeout, so it
            # shares the retry deadline rather than adding its own 30 s default.
            timeout=policy.deadline,
            kwargs=_connect_defaults(self.url, conninfo, policy),
            name=f"pipeline-store-{self.table}",
        )

    # -- plumbing ----------------------------------------------------------------------------

    def _run(self, key: str, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Run ``work`` in one transaction, creating the table first if this store has not."""
        if not self._ready:
            with self._ready_lock:
                if not self._ready:
                    self._transaction(key, self._create_table)
                    self._ready = True
        return self._transaction(key, work)

    def _transaction(self, key: str, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Run ``work`` on a pooled connection; commit on return, roll back on error."""
        try:
            with self._pool.connection() as conn:
                return work(conn)
        except psycopg_pool.PoolTimeout as exc:
            raise StoreError(f"{self.url}: no connection for {key!r}: {self._why_no_connection()}") from exc
        except psycopg.OperationalError:
            # A dropped connection usually means every idle one is dead too (server restart,
            # failover): drop them now so the retry gets a fresh connection.
            self._pool.check()
            raise

    def _create_table(self, conn: psycopg.Connection[Any]) -> None:
        name = self._name.as_string(conn)
        lock_id = int.from_bytes(hashlib.sha256(f"pipeline.stores:{name}".encode()).digest()[:8], "big", signed=True)
        # Held until commit: concurrent first users wait here instead of racing the catalog.
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_id,))
        if self._schema:
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self._schema)))
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} ("
                ' key text COLLATE "C" PRIMARY KEY,'
                " value bytea NOT NULL,"
                " version text NOT NULL)"
            ).format(self._name)
        )

    def _why_no_connection(self) -> str:
        """Connect once directly: the pool only logs why its connections fail."""
        try:
            with psycopg.connect(self._conninfo, connect_timeout=5):
                pass
        except psycopg.Error as exc:
            return describe(exc)
        return "the connection pool is exhausted (raise ?pool_size=)"

    # -- the raw operations ------------------------------------------------------------------

    def _head(self, key: str) -> tuple[bytes, str]:
        query = sql.SQL("SELECT value, version FROM {} WHERE key = %s").format(self._name)

        def work(conn: psycopg.Connection[Any]) -> tuple[bytes, str] | None:
            # binary=True: bytea arrives as raw bytes, not as hex text twice its size.
            with conn.cursor(binary=True) as cur:
                row = cur.execute(query, (key,)).fetchone()
            return None if row is None else (bytes(row[0]), row[1])

        found = self._run(key, work)
        if found is None:
            raise KeyNotFound(f"{self.url}: no object at {key!r}")
        return found

    def _put(self, key: str, data: bytes) -> None:
        query = sql.SQL(
            "INSERT INTO {} (key, value, version) VALUES (%s, %s, %s)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value, version = excluded.version"
        ).format(self._name)
        self._run(key, lambda conn: conn.execute(query, (key, data, uuid.uuid4().hex)))

    def _cas(self, key: str, data: bytes, expected: str | None) -> str:
        version = uuid.uuid4().hex
        if expected is None:
            query = sql.SQL(
                "INSERT INTO {} (key, value, version) VALUES (%s, %s, %s) ON CONFLICT (key) DO NOTHING"
            ).format(self._name)
            params: tuple[Any, ...] = (key, data, version)
        else:
            query = sql.SQL("UPDATE {} SET value = %s, version = %s WHERE key = %s AND version = %s").format(self._name)
            params = (data, version, key, expected)
        if self._run(key, lambda conn: conn.execute(query, params).rowcount) != 1:
            raise Conflict(f"{self.url}: {key!r} changed underneath (compare-and-swap lost)")
        return version

    def _list(self, prefix: str) -> Iterator[str]:
        # LIKE with an escaped prefix on a "C"-collated key can use the primary key index.
        pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        query = sql.SQL("SELECT key FROM {} WHERE key LIKE %s").format(self._name)
        rows = self._run(prefix, lambda conn: conn.execute(query, (pattern,)).fetchall())
        return iter([row[0] for row in rows])

    def _delete(self, key: str) -> None:
        query = sql.SQL("DELETE FROM {} WHERE key = %s").format(self._name)
        self._run(key, lambda conn: conn.execute(query, (key,)))

    def _close(self) -> None:
        self._pool.close()
