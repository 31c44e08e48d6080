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
