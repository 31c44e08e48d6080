"""Shared fixtures: a real nats-server and a real PostgreSQL for the whole session.

With ``NATS_URL`` set, that server is used instead. With ``THREADBUS_TEST_DOCKER=1`` and a
reachable Docker engine, testcontainers' ``NatsContainer`` provides it. Every threadbus process a
test starts gets a database of its own on the session's Postgres, one per nats-server it uses
(:func:`tests.support.database_for`); with ``THREADBUS_TEST_POSTGRES_URL`` set, that server is
used instead.
"""

from __future__ import annotations

import os
import uuid

import pytest

from threadbus.embedded import EmbeddedNats, EmbeddedPostgres


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory):
    if os.environ.get("NATS_URL"):
        yield os.environ["NATS_URL"]
        return
    if os.environ.get("THREADBUS_TEST_DOCKER") == "1":
        from testcontainers.community.nats import NatsContainer

        with NatsContainer(jetstream=True) as container:
            yield container.nats_uri()
        return
    server = EmbeddedNats(tmp_path_factory.mktemp("nats"))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session", autouse=True)
def postgres_url(tmp_path_factory):
    """The session's PostgreSQL server (its maintenance database), for every process started."""
    if os.environ.get("THREADBUS_TEST_POSTGRES_URL"):
        yield os.environ["THREADBUS_TEST_POSTGRES_URL"]
        return
    server = EmbeddedPostgres(tmp_path_factory.mktemp("postgres") / "data", durable=False)
    os.environ["THREADBUS_TEST_POSTGRES_URL"] = server.start()
    try:
        yield server.url
    finally:
        server.stop()
        del os.environ["THREADBUS_TEST_POSTGRES_URL"]


@pytest.fixture
def thread_id() -> str:
    return str(uuid.uuid4())


@pytest.fixture(scope="session")
def server(nats_url, tmp_path_factory):
    """One `threadbus dev` process on the session's nats-server, serving the test graphs."""
    from tests.support import TEST_GRAPHS, ThreadbusProcess

    proc = ThreadbusProcess(
        ["dev", "--nats-url", nats_url, "--config", str(TEST_GRAPHS)],
        log_path=tmp_path_factory.mktemp("threadbus") / "threadbus.log",
    ).start()
    yield proc
    proc.stop()


@pytest.fixture
def client(server):
    from langgraph_sdk import get_client

    return get_client(url=server.url)


@pytest.fixture
def sync_client(server):
    from langgraph_sdk import get_sync_client

    return get_sync_client(url=server.url)
