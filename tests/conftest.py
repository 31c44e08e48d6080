"""Shared fixtures: a real nats-server for the whole session.

With ``NATS_URL`` set, that server is used instead. With ``THREADBUS_TEST_DOCKER=1`` and a
reachable Docker engine, testcontainers' ``NatsContainer`` provides it.
"""

from __future__ import annotations

import os
import uuid

import pytest

from threadbus.embedded import EmbeddedNats


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
