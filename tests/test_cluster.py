"""threadbus on a 3-node nats-server cluster on loopback, every stream and bucket replicated
3 times (THREADBUS_REPLICAS=3), as deploy/compose.yaml runs it."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

import httpx
import nats
import nats.errors
from langgraph_sdk import get_client

from tests.support import TEST_GRAPHS, ThreadbusProcess, assert_all_succeeded, assert_verified
from threadbus.embedded import EmbeddedNats, free_port

HI = {"messages": [{"role": "human", "content": "hi"}]}


def cluster_nodes(root) -> list[EmbeddedNats]:
    routes = [free_port() for _ in range(3)]
    return [
        EmbeddedNats(root / f"n{i}", cluster=(f"n{i}", routes[i], [p for j, p in enumerate(routes) if j != i]))
        for i in range(3)
    ]


@asynccontextmanager
async def threadbus_on_a_cluster(tmp_path):
    """(the three nodes, a ``threadbus dev`` process connected to all of them)."""
    nodes = cluster_nodes(tmp_path)
    await asyncio.gather(*(asyncio.to_thread(n.start, 60) for n in nodes))
    proc = ThreadbusProcess(
        ["dev", "--nats-url", ",".join(n.url for n in nodes), "--config", str(TEST_GRAPHS)],
        log_path=tmp_path / "threadbus.log",
        env={"THREADBUS_REPLICAS": "3"},
    )
    try:
        await asyncio.to_thread(proc.start, 120)
        yield nodes, proc
    finally:
        proc.stop()
        for node in nodes:
            node.stop()


async def test_runs_and_double_texting_on_replicated_streams(tmp_path):
    # Clustered streams answer an expected-sequence check with "not yet" (10164) while an earlier
    # append is still replicating; every run here appends checkpoints back to back.
    async with threadbus_on_a_cluster(tmp_path) as (nodes, proc):
        client = get_client(url=proc.url, timeout=httpx.Timeout(60))
        threads = [(await client.threads.create())["thread_id"] for _ in range(3)]
        for tid in threads:
            first = await client.runs.create(tid, "two_step", input=HI, config={"configurable": {"delay": 0.3}})
            second = await client.runs.create(tid, "two_step", input=HI, multitask_strategy="interrupt")
            await client.runs.join(tid, second["run_id"])
            assert (await client.runs.get(tid, first["run_id"]))["status"] == "interrupted"
            assert (await client.runs.get(tid, second["run_id"]))["status"] == "success"
        nc = await nats.connect([n.url for n in nodes])
        try:
            info = await nc.jetstream().stream_info("TB_THREADS")
            assert info.config.num_replicas == 3 and len(info.cluster.replicas or []) == 2
        finally:
            await nc.close()
        await assert_verified([n.url for n in nodes], threads)


async def test_every_accepted_run_ends_after_a_cluster_node_is_killed(tmp_path):
    async with threadbus_on_a_cluster(tmp_path) as (nodes, proc):
        client = get_client(url=proc.url, timeout=httpx.Timeout(30, read=120))
        threads = [(await client.threads.create())["thread_id"] for _ in range(6)]
        accepted: list[tuple[str, str]] = []
        refused = 0

        async def user(tid: str, rounds: int) -> None:
            nonlocal refused
            for _ in range(rounds):
                try:
                    run = await client.runs.create(tid, "two_step", input=HI, config={"configurable": {"delay": 0.05}})
                    accepted.append((tid, run["run_id"]))
                except httpx.HTTPError:
                    refused += 1  # during the election: not accepted
                await asyncio.sleep(0.2)

        load = asyncio.gather(*(user(tid, 25) for tid in threads))
        await asyncio.sleep(1.5)
        await asyncio.to_thread(nodes[0].kill)  # kill -9 a node, with whatever leaders it had
        await load
        print(f"{len(accepted)} accepted, {refused} refused")
        assert len(accepted) > len(threads) * 15
        await assert_all_succeeded(client, accepted)
        await assert_verified([n.url for n in nodes[1:]], threads)

        # The node comes back on its data dir and catches up: every replica of the log is current.
        await asyncio.to_thread(nodes[0].start, 60)
        nc = await nats.connect([n.url for n in nodes])
        try:
            async with asyncio.timeout(60):
                while True:
                    try:
                        cluster = (await nc.jetstream().stream_info("TB_THREADS")).cluster
                    except nats.errors.TimeoutError:
                        continue  # a cluster catching a node up may not answer within a request's timeout
                    peers = {cluster.leader} | {r.name for r in cluster.replicas or [] if r.current}
                    if peers == {"n0", "n1", "n2"}:
                        break
                    await asyncio.sleep(0.5)
        finally:
            await nc.close()
        run = await client.runs.wait(threads[0], "two_step", input=HI)
        assert run["messages"][-1]["content"] == "answer to: hi"
