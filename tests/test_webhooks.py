"""A run's webhook is called with its result once it ends, and retried when the receiver fails."""

from __future__ import annotations

import asyncio

import httpx
import nats
import pytest
import uvicorn
from fastapi import FastAPI, Request, Response

from contracts import subjects
from threadbus.embedded import free_port
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
