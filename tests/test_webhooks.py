"""A run's webhook is called with its result once it ends, and retried when the receiver fails;
the gateways share the outcomes through one consumer, each outcome delivered to one of them."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import nats
import pytest
import uvicorn
from fastapi import FastAPI, Request, Response
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from contracts import subjects
from threadbus import broker
from threadbus.embedded import EmbeddedNats, free_port
from threadbus.settings import Settings
from threadbus.threadlog import ThreadLog

HI = {"messages": [{"role": "human", "content": "hi"}]}


@pytest.fixture
async def receiver():
    """An HTTP endpoint that fails its first call, then records every body it accepts."""
    app = FastAPI()
    calls: list[dict] = []
    received: asyncio.Queue = asyncio.Queue()

    @app.post("/hook")
    async def hook(request: Request):
        body = await request.json()
        calls.append(body)
        if len(calls) == 1:
            return Response(status_code=503)
        received.put_nowait(body)
        return {"ok": True}

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    yield f"http://127.0.0.1:{port}/hook", calls, received
    server.should_exit = True
    await task


async def test_the_webhook_gets_the_run_and_its_values_after_a_retry(client, receiver):
    url, calls, received = receiver
    thread = (await client.threads.create())["thread_id"]
    run = await client.runs.create(thread, "echo", input=HI, webhook=url, metadata={"who": "hook"})
    body = await asyncio.wait_for(received.get(), 60)
    assert body["run_id"] == run["run_id"] and body["thread_id"] == thread
    assert body["status"] == "success" and body["metadata"]["who"] == "hook"
    assert body["values"]["messages"][-1]["content"] == "echo: hi"
    assert body["webhook_sent_at"]
    assert len(calls) == 2, "one failed call, one retry"


async def test_a_stateless_run_calls_its_webhook_then_its_thread_goes(client, receiver, nats_url):
    url, _, received = receiver
    run = await client.runs.create(None, "echo", input=HI, webhook=url)
    body = await asyncio.wait_for(received.get(), 60)
    assert body["run_id"] == run["run_id"] and body["status"] == "success"
    assert body["values"]["messages"][-1]["content"] == "echo: hi"
    nc = await nats.connect(nats_url)
    try:
        log = ThreadLog(nc)
        async with asyncio.timeout(30):
            while [type(e.event()).__name__ for e in await log.read(subjects.thread_all(body["thread_id"]))] != ["ThreadDeleted"]:
                await asyncio.sleep(0.1)
    finally:
        await nc.close()


async def test_a_webhook_must_be_an_http_url(client):
    thread = (await client.threads.create())["thread_id"]
    with pytest.raises(httpx.HTTPStatusError) as err:
        await client.runs.create(thread, "echo", input=HI, webhook="ftp://example.invalid/hook")
    assert err.value.response.status_code == 422


async def test_outcomes_say_whether_their_run_has_a_webhook(client, receiver, nats_url):
    """So that the webhook sender reads a run's request only when there is a webhook to call."""
    url, _, received = receiver
    thread = (await client.threads.create())["thread_id"]
    hooked = await client.runs.create(thread, "echo", input=HI, webhook=url)
    await asyncio.wait_for(received.get(), 60)
    plain = await client.runs.wait(thread, "failing", input=HI, raise_error=False)
    assert "__error__" in plain
    nc = await nats.connect(nats_url)
    try:
        log = ThreadLog(nc)
        outcomes = {
            e.event().run_id: (type(e.event()).__name__, e.event().webhook)
            for e in await log.read(subjects.thread_control(thread))
            if type(e.event()).__name__ in ("RunSucceeded", "RunFailed")
        }
    finally:
        await nc.close()
    assert outcomes[hooked["run_id"]] == ("RunSucceeded", True)
    assert sorted(outcomes.values()) == [("RunFailed", False), ("RunSucceeded", True)]


@pytest.fixture
async def bare_broker(tmp_path):
    """A nats-server of this test's own with threadbus's streams and consumers, and a connection."""
    server = EmbeddedNats(tmp_path)
    server.start()
    nc = await nats.connect(server.url)
    await broker.bootstrap(nc, Settings())
    yield nc
    await nc.close()
    server.stop()


async def publish_outcome(js) -> int:
    subject = subjects.control_event(str(uuid.uuid4()), str(uuid.uuid4()), "RunSucceeded")
    return (await js.publish(subject, b"{}")).seq


async def test_the_pull_consumer_of_older_versions_is_replaced_from_where_it_had_got_to(bare_broker):
    """An upgraded deployment neither skips the outcomes its old consumer had not acknowledged
    nor calls again those below its ack floor."""
    js = bare_broker.jetstream()
    await js.delete_consumer(subjects.THREAD_STREAM, broker.WEBHOOKS_CONSUMER)
    old = ConsumerConfig(  # the pull consumer as older versions created it
        durable_name="webhooks",
        filter_subjects=[subjects.outcome_any(name) for name in ("RunSucceeded", "RunFailed", "RunInterrupted", "RunStopped")],
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.NEW,
        ack_wait=60,
        max_deliver=-1,
        max_ack_pending=1_000,
    )
    await js.add_consumer(subjects.THREAD_STREAM, old)
    seqs = [await publish_outcome(js) for _ in range(3)]
    pull = await js.pull_subscribe_bind(durable="webhooks", stream=subjects.THREAD_STREAM)
    for msg in await pull.fetch(2, timeout=5):
        await msg.ack_sync()
    await pull.unsubscribe()

    await broker.bootstrap(bare_broker, Settings())
    await broker.bootstrap(bare_broker, Settings())  # again, as every service does: nothing moves

    names = {c.name for c in await js.consumers_info(subjects.THREAD_STREAM)}
    assert "webhooks" not in names and broker.WEBHOOKS_CONSUMER in names
    info = await js.consumer_info(subjects.THREAD_STREAM, broker.WEBHOOKS_CONSUMER)
    assert info.config.opt_start_seq == seqs[2]
    got = await (await Gateway.subscribe(bare_broker)).received(most=5)
    assert [m.metadata.sequence.stream for m in got] == [seqs[2]]


async def test_gateways_share_the_outcomes_each_goes_to_one(bare_broker):
    other = await nats.connect(bare_broker.connected_url.geturl())
    try:
        gateways = [await Gateway.subscribe(nc) for nc in (bare_broker, other)]
        js = bare_broker.jetstream()
        seqs = [await publish_outcome(js) for _ in range(20)]
        got = [await gateway.received(20) for gateway in gateways]
    finally:
        await other.close()
    assert sorted(m.metadata.sequence.stream for m in got[0] + got[1]) == seqs, "each outcome once"


class Gateway:
    """One gateway's subscription to the webhooks consumer, acking what it is delivered."""

    @classmethod
    async def subscribe(cls, nc) -> Gateway:
        gateway = cls()
        gateway.got = asyncio.Queue()

        async def delivered(msg):
            await msg.ack()
            gateway.got.put_nowait(msg)

        gateway.sub = await nc.jetstream().subscribe_bind(
            stream=subjects.THREAD_STREAM, config=broker.webhooks_consumer(), consumer=broker.WEBHOOKS_CONSUMER, cb=delivered, manual_ack=True
        )
        return gateway

    async def received(self, most: int, quiet_s: float = 1.0) -> list:
        """What was delivered, up to ``most`` or until none came for ``quiet_s``; then unsubscribed."""
        msgs = []
        try:
            while len(msgs) < most:
                try:
                    msgs.append(await asyncio.wait_for(self.got.get(), quiet_s))
                except TimeoutError:
                    break
        finally:
            await self.sub.unsubscribe()
        return msgs
