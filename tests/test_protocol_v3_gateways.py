"""The v3 thread stream across gateways: joinable on any, surviving the one it is on being killed.

Two more gateways on the session's broker; the SDK reaches them through a balancer (an httpx
transport that sends every request to the gateway currently behind it), as it would reach a
deployment through a load balancer.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from langgraph_sdk.client import LangGraphClient
from langgraph_sdk.stream.transport import ProtocolSseTransport

from tests.support import TEST_GRAPHS, ThreadbusProcess

pytestmark = pytest.mark.timeout(120)

HI = {"messages": [{"role": "user", "content": "hi"}]}
SLOW = {"configurable": {"token_delay": 0.1, "tokens": 30}}
CHANNELS = ["values", "messages", "lifecycle", "custom", "input"]


class Balancer(httpx.AsyncBaseTransport):
    def __init__(self, url: str):
        self.url = httpx.URL(url)
        self.inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        request.url = request.url.copy_with(scheme=self.url.scheme, host=self.url.host, port=self.url.port)
        request.headers["host"] = f"{self.url.host}:{self.url.port}"
        return await self.inner.handle_async_request(request)


def _gateway(nats_url: str, tmp_path, name: str) -> ThreadbusProcess:
    return ThreadbusProcess(
        ["gateway", "--config", str(TEST_GRAPHS)], log_path=tmp_path / f"{name}.log", env={"NATS_URL": nats_url}
    ).start()


async def _read_until(transport, params, stop) -> list[dict]:
    handle = transport.open_event_stream(params)
    await handle.ready
    got = []
    async with asyncio.timeout(30):
        async for event in handle.events:
            got.append(event)
            if stop(event):
                break
    await handle.close()
    return got


def _paused(event) -> bool:
    return event["method"] == "input.requested"


async def test_a_stream_survives_its_gateway_being_killed_and_sees_runs_of_other_gateways(nats_url, server, tmp_path):
    first, second = await asyncio.gather(
        asyncio.to_thread(_gateway, nats_url, tmp_path, "gateway-a"), asyncio.to_thread(_gateway, nats_url, tmp_path, "gateway-b")
    )
    balancer = Balancer(first.url)
    try:
        async with httpx.AsyncClient(base_url="http://gateways", transport=balancer, timeout=30) as http:
            client = LangGraphClient(http)
            async with client.threads.stream(assistant_id="v3_agent") as thread:
                # Opened on gateway A, before any run: it sees the run that gateway B starts.
                async with httpx.AsyncClient(base_url=second.url) as on_b:
                    watcher = ProtocolSseTransport(client=httpx.AsyncClient(base_url=first.url), thread_id=thread.thread_id)
                    watching = asyncio.create_task(_read_until(watcher, {"channels": ["lifecycle"]}, lambda e: True))
                    await asyncio.sleep(0.5)
                    started = await on_b.post(
                        f"/threads/{thread.thread_id}/commands",
                        json={"id": 1, "method": "run.start", "params": {"assistant_id": "v3_agent", "input": HI, "config": SLOW}},
                    )
                    assert started.json()["type"] == "success"
                    seen_on_a = await watching
                    await watcher.close()
                assert seen_on_a[0]["params"]["data"] == {"event": "running", "graph_name": "v3_agent"}

                events = []
                async for event in thread.subscribe(CHANNELS):
                    events.append(event)
                    if _paused(event):
                        break
                    if len([e for e in events if e["method"] == "messages"]) == 8:
                        first.kill()  # mid-stream: the SDK reconnects, through the balancer, to B
                        balancer.url = httpx.URL(second.url)
        assert any(_paused(e) for e in events), "the stream went on to the pause after the kill"
        ids = [e["event_id"] for e in events]
        assert len(ids) == len(set(ids)), "no event twice"
        async with httpx.AsyncClient(base_url=second.url) as on_b:
            everything = await _read_until(ProtocolSseTransport(client=on_b, thread_id=thread.thread_id), {"channels": CHANNELS}, _paused)
        assert [e["seq"] for e in events] == [e["seq"] for e in everything], "no gap: what a fresh replay has"
    finally:
        first.kill()
        second.stop()


async def test_a_cursor_older_than_the_retention_gets_resume_gap(tmp_path):
    from websockets.asyncio.client import connect

    proc = ThreadbusProcess(
        ["dev", "--data-dir", str(tmp_path / "data"), "--config", str(TEST_GRAPHS)],
        log_path=tmp_path / "threadbus.log",
        env={"THREADBUS_STREAM_MAX_AGE_S": "1"},
    )
    await asyncio.to_thread(proc.start)
    try:
        async with httpx.AsyncClient(base_url=proc.url, timeout=30) as http:
            client = LangGraphClient(http)
            async with client.threads.stream(assistant_id="v3_agent") as thread:
                await thread.run.start(input=HI, config={"configurable": {"no_pause": True}})
                await thread.output
            transport = ProtocolSseTransport(client=http, thread_id=thread.thread_id)
            old = await _read_until(transport, {"channels": ["lifecycle"]}, lambda e: e["params"]["data"]["event"] == "completed")
            await asyncio.sleep(2.5)  # the first run's events expire
            async with client.threads.stream(thread.thread_id, assistant_id="v3_agent") as again:
                await again.run.start(input=HI, config={"configurable": {"no_pause": True}})
                await again.output
            newest = await _read_until(transport, {"channels": ["lifecycle"]}, lambda e: True)
            assert newest[0]["seq"] > old[-1]["seq"]
            gap = await _read_until(transport, {"channels": ["lifecycle"], "since": old[0]["seq"]}, lambda e: True)
            await transport.close()
        assert gap[0]["type"] == "error" and gap[0]["error"] == "resume_gap"
        assert gap[0]["min_available_seq"] == newest[0]["seq"]
        url = proc.url.replace("http", "ws") + f"/threads/{thread.thread_id}/stream/events"
        async with connect(url) as socket:
            command = {"id": 3, "method": "subscription.reconnect", "params": {"channels": ["lifecycle"], "since": old[0]["seq"]}}
            await socket.send(json.dumps(command))
            reply = json.loads(await socket.recv())
        assert reply["error"] == "resume_gap" and reply["min_available_seq"] == newest[0]["seq"]
    finally:
        await asyncio.to_thread(proc.stop)
