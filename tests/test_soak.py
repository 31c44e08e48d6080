"""Soak: thousands of runs through one server leave nothing behind.

3,000 no-op runs over 30 threads through one ``threadbus dev`` on its own nats-server. The
broker's subscriptions and consumers, and the memory of both processes, are measured after a
warm-up and again at the end: a per-run leak (a subscription, a consumer, a task holding memory)
shows up thousands of times over, far outside the bounds below, while caches and buffers that
fill once stay inside them.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from langgraph_sdk import get_client

from tests.support import TEST_GRAPHS, ThreadbusProcess, monitoring, rss_bytes
from threadbus.embedded import EmbeddedNats

THREADS = 30
RUNS_PER_THREAD = 100
WARMUP_RUNS_PER_THREAD = 10
# Subscriptions and consumers a server holds do not depend on how many runs it has served.
SUBSCRIPTIONS_BOUND = 10
CONSUMERS_BOUND = 2
# 3,000 leaked subscriptions or tasks cost tens of MB; caches that fill once, a few.
MEMORY_BOUND_MB = 40
# nats-server's memory grows with what the log stores (block caches, the per-subject index,
# the duplicate window's ids): measured ~3 KB per stored message; a per-run leak on top of that
# (a consumer, a subscription's buffers) shows in the counts above first.
BROKER_KB_PER_STORED_MESSAGE = 4


@pytest.fixture(scope="module")
def soak_server(tmp_path_factory):
    nats_dir = tmp_path_factory.mktemp("soak-nats")
    broker = EmbeddedNats(nats_dir)
    broker.start()
    proc = ThreadbusProcess(
        ["dev", "--nats-url", broker.url, "--config", str(TEST_GRAPHS)], log_path=nats_dir / "threadbus.log"
    ).start()
    try:
        yield broker, proc
    finally:
        proc.stop()
        broker.stop()


def measure(broker: EmbeddedNats, proc: ThreadbusProcess) -> dict:
    subs = monitoring(broker, "/subsz?subs=1&limit=100000")
    jsz = monitoring(broker, "/jsz?consumers=true")
    streams = jsz["account_details"][0]["stream_detail"]
    return {
        "stored_mb": jsz["bytes"] // 2**20,
        "messages": jsz["messages"],
        "subscriptions": subs["num_subscriptions"],
        "consumers": sum(len(s.get("consumer_detail") or []) for s in streams),
        "threadbus_mb": rss_bytes(proc.process.pid) // 2**20,
        "nats_mb": rss_bytes(broker.process.pid) // 2**20,
        # What a leak is made of, for the failure message.
        "subjects": Counter(_shape(s["subject"]) for s in subs.get("subscriptions_list") or []),
        "consumer_names": Counter(f"{s['name']}:{_shape(c['name'])}" for s in streams for c in s.get("consumer_detail") or []),
    }


def _shape(name: str) -> str:
    """A subject or consumer name with its ids blurred, so that a thousand alike count as one kind."""
    return ".".join("#" if len(tok) > 12 else tok for tok in name.split("."))


def grown(before: dict, after: dict, key: str) -> dict:
    return {k: n for k, n in (after[key] - before[key]).items() if n}


async def run_all(client, threads: list[str], runs_per_thread: int) -> None:
    async def one_thread(tid: str) -> None:
        for _ in range(runs_per_thread):
            result = await client.runs.wait(tid, "noop", input={})
            assert "__error__" not in (result or {}), result

    await asyncio.gather(*(one_thread(tid) for tid in threads))


@pytest.mark.timeout(600)
async def test_thousands_of_runs_leave_no_subscriptions_consumers_or_memory_behind(soak_server):
    broker, proc = soak_server
    client = get_client(url=proc.url)
    threads = [(await client.threads.create())["thread_id"] for _ in range(THREADS)]
    await run_all(client, threads, WARMUP_RUNS_PER_THREAD)
    before = measure(broker, proc)
    await run_all(client, threads, RUNS_PER_THREAD)
    after = measure(broker, proc)
    numbers = ("subscriptions", "consumers", "threadbus_mb", "nats_mb", "stored_mb", "messages")
    print(f"\nsoak: before {[before[k] for k in numbers]}, after {[after[k] for k in numbers]} ({numbers})")

    assert after["subscriptions"] - before["subscriptions"] <= SUBSCRIPTIONS_BOUND, grown(before, after, "subjects")
    assert after["consumers"] - before["consumers"] <= CONSUMERS_BOUND, grown(before, after, "consumer_names")
    assert after["threadbus_mb"] - before["threadbus_mb"] <= MEMORY_BOUND_MB, (before["threadbus_mb"], after["threadbus_mb"])
    stored = after["messages"] - before["messages"]
    broker_bound = MEMORY_BOUND_MB + stored * BROKER_KB_PER_STORED_MESSAGE // 1024
    assert after["nats_mb"] - before["nats_mb"] <= broker_bound, (before["nats_mb"], after["nats_mb"], stored)
    runs = await client.runs.list(threads[0], limit=1000)
    assert len(runs) == WARMUP_RUNS_PER_THREAD + RUNS_PER_THREAD and {r["status"] for r in runs} == {"success"}
