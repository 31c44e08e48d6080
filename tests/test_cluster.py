"""threadbus on a 3-node nats-server cluster on loopback, every stream and bucket replicated
3 times (THREADBUS_REPLICAS=3), as deploy/compose.yaml runs it."""

from __future__ import annotations

import asyncio

import httpx
import nats
from langgraph_sdk import get_client

from tests.support import TEST_GRAPHS, ThreadbusProcess
from threadbus import verify
from threadbus.embedded import EmbeddedNats, free_port

HI = {"messages": [{"role": "human", "content": "hi"}]}


def cluster_nodes(root) -> list[EmbeddedNats]:
    routes = [free_port() for _ in range(3)]
    return [
        EmbeddedNats(root / f"n{i}", cluster=(f"n{i}", routes[i], [p for j, p in enumerate(routes) if j != i]))
        for i in range(3)
    ]


async def test_runs_and_double_texting_on_replicated_streams(tmp_path):
    # Clustered streams answer an expected-sequence check with "not yet" (10164) while an earlier
    # append is still replicating; every run here appends checkpoints back to back.
    nodes = cluster_nodes(tmp_path)
    await asyncio.gather(*(asyncio.to_thread(n.start, 60) for n in nodes))
    urls = ",".join(n.url for n in nodes)
    proc = ThreadbusProcess(
        ["dev", "--nats-url", urls, "--config", str(TEST_GRAPHS)],
        log_path=tmp_path / "threadbus.log",
        env={"THREADBUS_REPLICAS": "3"},
    )
    try:
        await asyncio.to_thread(proc.start, 120)
        client = get_client(url=proc.url, timeout=httpx.Timeout(60))
        threads = [(await client.threads.create())["thread_id"] for _ in range(3)]
        for tid in threads:
            first = await client.runs.create(tid, "two_step", input=HI, config={"configurable": {"delay": 0.3}})
            second = await client.runs.create(tid, "two_step", input=HI, multitask_strategy="interrupt")
            await client.runs.join(tid, second["run_id"])
            assert (await client.runs.get(tid, first["run_id"]))["status"] == "interrupted"
            assert (await client.runs.get(tid, second["run_id"]))["status"] == "success"
        nc = await nats.connect(urls.split(","))
        try:
            info = await nc.jetstream().stream_info("TB_THREADS")
            assert info.config.num_replicas == 3 and len(info.cluster.replicas or []) == 2
            report = await verify.verify(nc, threads)
            assert report.ok and not report.in_flight(), report.format()
        finally:
            await nc.close()
    finally:
        proc.stop()
        for node in nodes:
            node.stop()


async def test_every_accepted_run_ends_after_a_cluster_node_is_killed(tmp_path):
    nodes = cluster_nodes(tmp_path)
    await asyncio.gather(*(asyncio.to_thread(n.start, 60) for n in nodes))
    urls = ",".join(n.url for n in nodes)
    proc = ThreadbusProcess(
        ["dev", "--nats-url", urls, "--config", str(TEST_GRAPHS)],
        log_path=tmp_path / "threadbus.log",
        env={"THREADBUS_REPLICAS": "3"},
    )
    try:
        await asyncio.to_thread(proc.start, 120)
        client = get_client(url=proc.url, timeout=httpx.Timeout(30, read=120))
        threads = [(await client.threads.create())["thread_id"] for _ in range(6)]
        accepted: list[tuple[str, str]] = []
        refused = 0

        async def user(tid: str, rounds: int) -> None:
            nonlocal refused
            for i in range(rounds):
                try:
                    run = await client.runs.create(tid, "two_step", input=HI, config={"configurable": {"delay": 0.05}})
                    accepted.append((tid, run["run_id"]))
                except httpx.HTTPError:
                    refused += 1  # during the election: not accepted
                await asyncio.sleep(0.2)

        load = asyncio.gather(*(user(tid, 25) for tid in threads))
        await asyncio.sleep(1.5)
        await asyncio.to_thread(nodes[0].kill)  # kill -9 a node, stream and consumer leaders maybe among its roles
        await load
        print(f"{len(accepted)} accepted, {refused} refused")
        assert len(accepted) > len(threads) * 15
        async with asyncio.timeout(120):
            for tid, run_id in accepted:
                await client.runs.join(tid, run_id)
        statuses = {(await client.runs.get(tid, run_id))["status"] for tid, run_id in accepted}
        assert statuses == {"success"}, statuses
        nc = await nats.connect([n.url for n in nodes[1:]])
        try:
            report = await verify.verify(nc, threads)
            assert report.ok and not report.in_flight(), report.format()
        finally:
            await nc.close()
    finally:
        proc.stop()
        for node in nodes:
            node.stop()
