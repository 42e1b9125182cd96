"""Shared pytest fixtures.

Sections are owned by the part of the project they serve; add new fixtures in a section of
their own.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# Assertion rewriting for the conformance suite that lives in the package, not in tests/.
pytest.register_assert_rewrite("pipeline.testing")

# =================================================================================================
# Snapshot stores: a moto S3 server and the PostgreSQL test database (owner: stores)
# =================================================================================================

S3_TEST_BUCKET = "pipeline-test"
POSTGRES_DSN_ENV = "PIPELINE_TEST_POSTGRES_DSN"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class S3Middleware:
    """WSGI middleware in front of moto: atomic conditional writes, and injectable faults.

    moto 5.2.5 honours ``If-Match`` / ``If-None-Match`` on PutObject, but checks the condition
    and stores the object in two steps with no lock, so two racing conditional writes can both
    succeed; AWS S3 makes them atomic. Serialising conditional PUTs gives the tests the AWS
    guarantee our compare-and-swap relies on. ``fail_next`` answers the next requests with an
    S3 error (503 SlowDown by default) so retries meet a real HTTP fault.
    """

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app
        self._conditional = threading.Lock()
        self._faults_lock = threading.Lock()
        self._faults: list[tuple[int, str]] = []
        self.requests = 0

    def fail_next(self, count: int, status: int = 503, code: str = "SlowDown") -> None:
        """Answer the next ``count`` requests with ``status`` / ``code`` instead of moto."""
        with self._faults_lock:
            self._faults = [(status, code)] * count

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        with self._faults_lock:
            self.requests += 1
            fault = self._faults.pop(0) if self._faults else None
        if fault is not None:
            environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            status, code = fault
            body = (
                f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
                f"<Message>injected by the test server</Message></Error>"
            ).encode()
            start_response(f"{status} {code}", [("Content-Type", "application/xml")])
            return [body]
        conditional = "HTTP_IF_MATCH" in environ or "HTTP_IF_NONE_MATCH" in environ
        if environ["REQUEST_METHOD"] == "PUT" and conditional:
            with self._conditional:
                # moto builds the whole response inside the call, so the lock covers the write.
                return list(self.app(environ, start_response))
        return self.app(environ, start_response)


class S3Server:
    """A moto S3 server on 127.0.0.1 in a thread, with :class:`S3Middleware` in front."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        server = self

        class _Server(ThreadedMotoServer):
            def _server_entry(self) -> None:
                # ThreadedMotoServer's own entry, with the middleware wrapped around the app.
                from moto.moto_server.werkzeug_app import (
                    DomainDispatcherApplication,
                    MotoRequestHandler,
                    create_backend_app,
                )
                from werkzeug.serving import make_server

                server.middleware = S3Middleware(DomainDispatcherApplication(create_backend_app))
                self._server = make_server(
                    self._ip_address,
                    self._port,
                    server.middleware,
                    threaded=True,
                    request_handler=MotoRequestHandler,
                )
                self._server_ready_event.set()
                self._server.serve_forever()

        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.middleware: S3Middleware
        self._server = _Server(ip_address="127.0.0.1", port=self.port, verbose=False)

    def start(self) -> None:
        """Start serving; returns once the socket listens."""
        self._server.start()

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        self._server.stop()
        if self._server._server is not None:
            self._server._server.server_close()

    def client(self) -> Any:
        """A boto3 S3 client for arranging test state directly."""
        import boto3

        return boto3.session.Session().client("s3", endpoint_url=self.endpoint)


def fake_aws_environment(mp: pytest.MonkeyPatch) -> None:
    """Fake credentials, and no profile, config file, endpoint or instance metadata of the host."""
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
        mp.delenv(name, raising=False)
    mp.setenv("AWS_ACCESS_KEY_ID", "testing")
    mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
    mp.setenv("AWS_CONFIG_FILE", os.devnull)
    mp.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    mp.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """:func:`fake_aws_environment` for one test, without starting the S3 server."""
    fake_aws_environment(monkeypatch)
    return monkeypatch


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A moto S3 server for the session, with fake credentials in the environment."""
    with pytest.MonkeyPatch.context() as mp:
        fake_aws_environment(mp)  # for the whole session: spawned children inherit it too
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
        server = S3Server()
        server.start()
        try:
            client = server.client()
            client.create_bucket(Bucket=S3_TEST_BUCKET)
            client.close()
            yield server
        finally:
            server.stop()


@pytest.fixture
def no_store_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run without PIPELINE_STORE_KEY / PIPELINE_STORE_KEY_FILE, whatever the shell has."""
    monkeypatch.delenv("PIPELINE_STORE_KEY", raising=False)
    monkeypatch.delenv("PIPELINE_STORE_KEY_FILE", raising=False)


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 that refuses connections: an unreachable server."""
    return free_port()


@pytest.fixture
def s3_url(s3_server: S3Server) -> str:
    """An ``s3://`` store URL under a prefix no other test uses."""
    return f"s3://{S3_TEST_BUCKET}/{uuid.uuid4().hex}?endpoint_url={s3_server.endpoint}"


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    """The test database's DSN from PIPELINE_TEST_POSTGRES_DSN; the test skips without it."""
    dsn = os.environ.get(POSTGRES_DSN_ENV)
    if not dsn:
        pytest.skip(f"{POSTGRES_DSN_ENV} is not set (e.g. postgresql://postgres@127.0.0.1/test)")
    return dsn


@pytest.fixture
def postgres_url(postgres_dsn: str) -> Iterator[str]:
    """A ``postgresql://`` store URL on a table of its own, dropped afterwards."""
    import psycopg

    table = f"store_test_{uuid.uuid4().hex[:16]}"
    separator = "&" if "?" in postgres_dsn else "?"
    yield f"{postgres_dsn}{separator}table={table}"
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f'DROP TABLE IF EXISTS "{table}"')


# =================================================================================================
# Sinks: a 12 MB orders input, its golden csv-map outputs, a prefix of the moto bucket (owner: connectors)
# =================================================================================================


@pytest.fixture(scope="module")
def orders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 MB of orders: its mapped output is ~6 MiB, so with 5 MiB parts a part plus a tail."""
    from pipeline.testing.data import write_orders_csv  # imported late: see register_assert_rewrite

    path = tmp_path_factory.mktemp("orders") / "orders.csv"
    write_orders_csv(path, 12_000_000, seed=11)
    return path


@pytest.fixture(scope="module")
def golden(orders: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The csv-map job's outputs from an uninterrupted run to local files."""
    from support import write_job

    from pipeline.runner import run_session
    from pipeline.spec import load_job

    directory = tmp_path_factory.mktemp("golden")
    job = write_job(directory, source=str(orders), sink="{url: out/mapped.csv}", rejects="{url: out/rejects.csv}")
    run_session(load_job(job))
    return {name: (directory / "out" / name).read_bytes() for name in ("mapped.csv", "rejects.csv")}


class Bucket:
    """A fresh prefix in the moto bucket, with a boto3 client to look at it."""

    def __init__(self, server: S3Server) -> None:
        self.server = server
        self.prefix = uuid.uuid4().hex
        self.client = server.client()

    def url(self, key: str) -> str:
        return f"s3://{S3_TEST_BUCKET}/{self.prefix}/{key}"

    def output(self, key: str, **extra: Any) -> str:
        """A sink mapping for the job file, pointing at the moto server through ``options``."""
        fields = {"url": self.url(key), "options": {"endpoint_url": self.server.endpoint}, **extra}
        return "{" + ", ".join(f"{k}: {_yaml(v)}" for k, v in fields.items()) + "}"

    def read(self, key: str) -> bytes:
        body = self.client.get_object(Bucket=S3_TEST_BUCKET, Key=f"{self.prefix}/{key}")["Body"]
        return bytes(body.read())

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=S3_TEST_BUCKET, Key=f"{self.prefix}/{key}", Body=data)

    def uploads(self) -> list[str]:
        listing = self.client.list_multipart_uploads(Bucket=S3_TEST_BUCKET, Prefix=self.prefix)
        return [upload["Key"] for upload in listing.get("Uploads", ())]

    def spec(self, key: str, **extra: Any) -> Any:
        """An OutputSpec for ``key`` on the moto server."""
        from pipeline.spec import OutputSpec

        return OutputSpec(url=self.url(key), options={"endpoint_url": self.server.endpoint}, **extra)


def _yaml(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml(v)}" for k, v in value.items()) + "}"
    return f'"{value}"' if isinstance(value, str) else str(value)


@pytest.fixture
def bucket(s3_server: S3Server) -> Bucket:
    return Bucket(s3_server)
