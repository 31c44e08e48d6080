"""Orchestrator high availability, with real processes: two orchestrators share the partitions;
the one deciding for a thread is killed (or frozen) under steady load, the other takes its
partitions over once their leases expire, and every accepted run still ends right.

The layout is test_zombie's, with two orchestrator processes and leases of 3 s.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
from contextlib import asynccontextmanager

import httpx
import nats
import pytest
from langgraph_sdk import get_client

from contracts import subjects
from tests.support import assert_all_succeeded, assert_verified
from tests.test_zombie import LEASE_S, Cluster, log_records, said, wait_logged
from threadbus import broker
from threadbus.threadlog import ThreadLog

QUICK = {"configurable": {"delay": 0.05}}


async def holders(nc) -> dict[int, str]:
    kv = await nc.jetstream().key_value(broker.LEASES_BUCKET)
    held = {}
    for partition in range(subjects.PARTITIONS):
        try:
            held[partition] = (await kv.get(f"partition.{partition}")).value.decode()
        except nats.js.errors.KeyNotFoundError:
            pass
    return held


def name_of(proc) -> str:
    return next(r["name"] for r in log_records(proc.log_path) if r.get("event") == "orchestrator consuming")


async def balanced(nc, names: set[str]) -> dict[int, str]:
    """Waits until every partition is held, and by each of ``names``."""
    async with asyncio.timeout(30):
        while True:
            held = await holders(nc)
            if len(held) == subjects.PARTITIONS and set(held.values()) == names:
                return held
            await asyncio.sleep(0.2)


class Load:
    """Runs sent one after another on each thread, as users keep typing; what was accepted is kept."""

    def __init__(self, client, threads: list[str]):
        self.client, self.threads = client, threads
        self.accepted: list[tuple[str, str]] = []
        self.refused = 0
        self.counter = itertools.count()
        self.stop = asyncio.Event()

    async def _user(self, tid: str) -> None:
        while not self.stop.is_set():
            try:
                run = await self.client.runs.create(tid, "two_step", input=said(f"m{next(self.counter)}"), config=QUICK)
                self.accepted.append((tid, run["run_id"]))
            except httpx.HTTPError:
                self.refused += 1  # no decision in time: not accepted, the log says what became of it
            await asyncio.sleep(0.1)

    def __enter__(self):
        self.tasks = [asyncio.create_task(self._user(tid)) for tid in self.threads]
        return self

    def __exit__(self, *exc):
        self.stop.set()

    async def drain(self) -> None:
        self.stop.set()
        await asyncio.gather(*self.tasks)


async def partition_of_thread(nc, tid: str) -> int:
    entries = await ThreadLog(nc).read(subjects.thread_control(tid))
    return subjects.partition_of(entries[0].subject)


@asynccontextmanager
async def two_orchestrators(tmp_path, threads: int):
    """(the cluster, a broker connection, an SDK client, orchestrator name -> process, the ids of
    ``threads`` new threads), once the two orchestrators share the partitions."""
    cluster = Cluster(tmp_path, orchestrators=2)
    try:
        await cluster.start()
        nc = await nats.connect(cluster.nats.url)
        client = get_client(url=cluster.gateway.url, timeout=httpx.Timeout(15, read=60))
        names = {name_of(p): p for p in cluster.orchestrators}
        await balanced(nc, set(names))
        thread_ids = [(await client.threads.create())["thread_id"] for _ in range(threads)]
        try:
            yield cluster, nc, client, names, thread_ids
        finally:
            await nc.close()
    finally:
        await asyncio.to_thread(cluster.stop)


async def all_ended_right(cluster: Cluster, client, load: Load, threads: list[str]) -> None:
    await assert_all_succeeded(client, load.accepted, timeout=90)
    await assert_verified(cluster.nats.url, threads)


@pytest.mark.timeout(240)
async def test_the_orchestrator_of_a_thread_is_killed_under_load_and_another_takes_over(tmp_path):
    async with two_orchestrators(tmp_path, threads=12) as (cluster, nc, client, names, threads):

        with Load(client, threads) as load:
            await asyncio.sleep(2)
            held = await holders(nc)
            watched = threads[0]
            partition = await partition_of_thread(nc, watched)
            victim = names[held[partition]]
            survivor = next(p for p in cluster.orchestrators if p is not victim)
            victims_partitions = sorted(k for k, name in held.items() if names[name] is victim)
            before = len(load.accepted)
            victim.kill()  # kill -9 mid-load
            killed_at = time.monotonic()
            async with asyncio.timeout(30):
                while (await holders(nc)).get(partition) != name_of(survivor):
                    await asyncio.sleep(0.1)
            takeover_s = time.monotonic() - killed_at
            # The watched thread is decided again: a run sent now is accepted and runs.
            run = await client.runs.wait(watched, "two_step", input=said("after the takeover"), config=QUICK)
            assert run["messages"][-1]["content"] == "answer to: after the takeover"
            await asyncio.sleep(2)
        await load.drain()

        print(f"takeover after {takeover_s:.1f} s (lease {LEASE_S} s); {len(load.accepted)} runs accepted, {load.refused} refused")
        assert len(load.accepted) > before + 10
        assert takeover_s < 3 * LEASE_S
        taken = {r["partition"] for r in log_records(survivor.log_path) if r.get("event") == "partition taken"}
        assert set(victims_partitions) <= taken
        assert set((await holders(nc)).values()) == {name_of(survivor)}
        await all_ended_right(cluster, client, load, threads)


@pytest.mark.timeout(240)
async def test_a_frozen_orchestrator_is_deposed_and_wakes_up_without_deciding(tmp_path):
    async with two_orchestrators(tmp_path, threads=8) as (cluster, nc, client, names, threads):

        with Load(client, threads) as load:
            await asyncio.sleep(1)
            frozen, survivor = cluster.orchestrators
            os.kill(frozen.process.pid, signal.SIGSTOP)  # a long GC pause, a stalled VM
            await balanced(nc, {name_of(survivor)})
            await asyncio.sleep(2)
            os.kill(frozen.process.pid, signal.SIGCONT)
            # It learns at its next renewal that its leases are gone, and lets go of them.
            await wait_logged([frozen], "partition lease lost", timeout=30)
            await asyncio.sleep(2)
        await load.drain()

        # Then the two share the partitions again, and everything accepted ended right.
        await balanced(nc, set(names))
        await all_ended_right(cluster, client, load, threads)
