"""/metrics in Prometheus format, and readiness that follows the NATS connection."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support import TEST_GRAPHS, ThreadbusProcess
from threadbus.embedded import EmbeddedNats, free_port

HI = {"messages": [{"role": "human", "content": "hi"}]}


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: dict, name: str, **labels) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_count_requests_decisions_outcomes_and_stream_lag(client, server):
    async with httpx.AsyncClient(base_url=server.url) as http:
        before = samples((await http.get("/metrics")).text)
        thread = (await client.threads.create())["thread_id"]
        await client.runs.wait(thread, "echo", input=HI)
        running = await client.runs.create(thread, "two_step", input=HI, config={"configurable": {"delay": 0.5}})
        try:
            await client.runs.create(thread, "echo", input=HI, multitask_strategy="reject")
        except httpx.HTTPStatusError:
            pass
        await client.runs.join(thread, running["run_id"])
        async for _ in client.runs.stream(thread, "echo", input=HI):
            pass
        after = samples((await http.get("/metrics")).text)

    def grew(name: str, **labels) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("threadbus_run_requests_total", strategy="enqueue", decision="accepted") == 3
    assert grew("threadbus_run_requests_total", strategy="reject", decision="rejected_busy") == 1
    assert grew("threadbus_run_outcomes_total", outcome="success") == 3
    assert grew("threadbus_decision_seconds_count") == 4
    assert grew("threadbus_stream_lag_seconds_count") >= 1
    assert value(after, "threadbus_executor_slots") >= 1
    assert ("threadbus_queued_runs", ()) in after and ("threadbus_executor_busy_slots", ()) in after


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as res:
            return res.status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:  # not listening (yet)
        return 0


async def _until(url: str, status: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while (got := await asyncio.to_thread(_status, url)) != status:
        assert time.monotonic() < deadline, f"{url} stayed {got}, expected {status}"
        await asyncio.sleep(0.1)


async def test_readiness_follows_the_nats_connection_on_every_service(tmp_path):
    broker = EmbeddedNats(tmp_path / "nats")
    url = await asyncio.to_thread(broker.start)
    env = {"NATS_URL": url}
    gateway = ThreadbusProcess(["gateway", "--config", str(TEST_GRAPHS)], log_path=tmp_path / "gateway.log", env=env)
    port = free_port()
    executor = ThreadbusProcess(
        ["executor", "--config", str(TEST_GRAPHS)],
        log_path=tmp_path / "executor.log",
        env={**env, "THREADBUS_METRICS_PORT": str(port)},
    )
    try:
        gateway.start()
        executor.start(wait_http=False)
        ready = {gateway.url + "/ready", f"http://127.0.0.1:{port}/ready"}
        for endpoint in ready:
            await _until(endpoint, 200)
        assert await asyncio.to_thread(_status, f"http://127.0.0.1:{port}/metrics") == 200

        await asyncio.to_thread(broker.stop)
        for endpoint in ready:
            await _until(endpoint, 503)
        assert await asyncio.to_thread(_status, gateway.url + "/ok") == 200  # alive, just not ready

        broker = EmbeddedNats(tmp_path / "nats", port=broker.port, monitor_port=broker.monitor_port)
        await asyncio.to_thread(broker.start)
        for endpoint in ready:
            await _until(endpoint, 200)
    finally:
        executor.stop()
        gateway.stop()
        broker.stop()
