"""Faults, with real processes: an executor killed mid-run, the broker killed under load, runs
that outlive the deadline, poison messages on the bus, oversized HTTP bodies.

The process layout is test_zombie's (one process per service on a broker of the test's own,
runs redelivered after 2 s without a heartbeat).
"""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
import nats
from langgraph_sdk import get_client

import contracts
from contracts import subjects
from services.executor.service import Executor
from tests.support import TEST_GRAPHS, assert_all_succeeded, assert_verified
from tests.test_zombie import Cluster, contents, said, wait_logged
from threadbus import broker, verify
from threadbus.embedded import EmbeddedNats
from threadbus.graphs import GraphRegistry
from threadbus.settings import Settings
from threadbus.threadlog import ThreadLog


async def terminal_events(nc, tid: str, run_id: str) -> list[str]:
    entries = await ThreadLog(nc).read(subjects.run_control(tid, run_id))
    return [type(e.event()).__name__ for e in entries if isinstance(e.event(), contracts.TERMINAL_EVENTS)]


async def test_a_run_whose_executor_is_killed_finishes_on_another(tmp_path):
    cluster = Cluster(tmp_path)
    try:
        await cluster.start()
        client = get_client(url=cluster.gateway.url)
        tid = (await client.threads.create())["thread_id"]
        run = await client.runs.create(tid, "two_step", input=said("hello"), config={"configurable": {"delay": 1.5}})
        victim = await wait_logged(cluster.executors, "run executing", run_id=run["run_id"])
        survivor = next(p for p in cluster.executors if p is not victim)
        # Killed once its first step is checkpointed: that step must not run again.
        async with asyncio.timeout(30):
            while "thinking about: hello" not in contents((await client.threads.get_state(tid))["values"] or {"messages": []}):
                await asyncio.sleep(0.05)
        victim.kill()

        await _ended_once_by(survivor, cluster, client, tid, run["run_id"])
        assert contents((await client.threads.get_state(tid))["values"]) == ["hello", "thinking about: hello", "answer to: hello"]
    finally:
        await asyncio.to_thread(cluster.stop)


async def test_a_one_node_run_whose_executor_is_killed_is_done_again_from_its_input(tmp_path):
    """A one-node graph stores nothing until its run ends (durability "exit", docs/durability.md):
    a resume cut off mid-node is done again, from the same pause and with the same answer."""
    cluster = Cluster(tmp_path)
    try:
        await cluster.start()
        client = get_client(url=cluster.gateway.url)
        tid = (await client.threads.create())["thread_id"]
        await client.runs.wait(tid, "pausing", input=said("go"))
        run = await client.runs.create(tid, "pausing", command={"resume": "yes"}, config={"configurable": {"delay": 1.5}})
        victim = await wait_logged(cluster.executors, "run executing", run_id=run["run_id"])
        survivor = next(p for p in cluster.executors if p is not victim)
        await asyncio.sleep(0.5)  # inside the node, past the interrupt it resumed
        victim.kill()

        await _ended_once_by(survivor, cluster, client, tid, run["run_id"])
        assert contents((await client.threads.get_state(tid))["values"]) == ["go", "approved: yes"]
        assert len(await client.threads.get_history(tid)) == 2  # the pause, then the end
    finally:
        await asyncio.to_thread(cluster.stop)


async def test_every_accepted_run_ends_after_the_broker_is_killed_and_restarted(tmp_path):
    cluster = Cluster(tmp_path)
    try:
        await cluster.start()
        # Joins wait for runs that the outage delayed: a generous read timeout, a bounded test below.
        client = get_client(url=cluster.gateway.url, timeout=httpx.Timeout(10, read=120))
        threads = [(await client.threads.create())["thread_id"] for _ in range(10)]
        accepted: list[tuple[str, str]] = []

        async def send(tid: str, i: int) -> None:
            try:
                run = await client.runs.create(tid, "two_step", input=said(f"m{i}"), config={"configurable": {"delay": 0.2}})
                accepted.append((tid, run["run_id"]))
            except (httpx.HTTPError, Exception):  # refused while the broker is down: not accepted
                pass

        first = [send(tid, i) for i, tid in enumerate(threads)]
        await asyncio.gather(*first)
        cluster.nats.process.kill()  # kill -9: no flush, no goodbye
        await asyncio.to_thread(cluster.nats.process.wait)
        during = asyncio.gather(*(send(tid, 100 + i) for i, tid in enumerate(threads)))
        await asyncio.sleep(1)
        restarted = EmbeddedNats(cluster.nats.data_dir, port=cluster.nats.port, monitor_port=cluster.nats.monitor_port)
        await asyncio.to_thread(restarted.start)
        cluster.nats = restarted
        await during
        await asyncio.gather(*(send(tid, 200 + i) for i, tid in enumerate(threads)))

        assert len(accepted) >= 20
        await assert_all_succeeded(client, accepted)
        await assert_verified(restarted.url, threads)
    finally:
        await asyncio.to_thread(cluster.stop)


async def test_poison_messages_are_dead_lettered_and_the_services_carry_on(client, nats_url):
    tid, rid = str(uuid.uuid4()), str(uuid.uuid4())
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        # Not JSON at all, to the orchestrator; valid JSON but not a contract, to the executors.
        await js.publish(subjects.control_event(tid, rid, "RunRequested"), b"\x00garbage")
        await js.publish(subjects.control_event(tid, rid, "RunStarted"), json.dumps({"type": "RunStarted"}).encode())
        sub = await js.subscribe(f"{subjects.DEADLETTER_PREFIX}.>", stream=subjects.DEADLETTER_STREAM, ordered_consumer=True)
        found = {}
        async with asyncio.timeout(30):
            while len(found) < 2:
                msg = await sub.next_msg(timeout=30)
                if msg.headers.get("Threadbus-Subject", "").startswith(f"{subjects.PREFIX}.{tid}."):
                    # The orchestrator dead-letters both (it reads every control event): keep its first.
                    found.setdefault(msg.subject.rsplit(".", 1)[1], msg)
        assert set(found) == {"orchestrator", "executor"}
        assert found["orchestrator"].data == b"\x00garbage"
        assert "Threadbus-Reason" in found["executor"].headers
    finally:
        await nc.close()
    # Both kept going.
    thread = (await client.threads.create())["thread_id"]
    assert (await client.runs.wait(thread, "echo", input=said("still here")))["messages"][-1]["content"] == "echo: still here"


async def test_a_run_past_the_deadline_ends_with_status_timeout(tmp_path):
    from tests.support import TEST_GRAPHS, ThreadbusProcess

    proc = ThreadbusProcess(
        ["dev", "--data-dir", str(tmp_path / "data"), "--config", str(TEST_GRAPHS)],
        log_path=tmp_path / "threadbus.log",
        env={"THREADBUS_RUN_TIMEOUT_S": "1"},
    ).start()
    try:
        client = get_client(url=proc.url)
        tid = (await client.threads.create())["thread_id"]
        slow = await client.runs.wait(tid, "two_step", input=said("slow"), config={"configurable": {"delay": 2}}, raise_error=False)
        assert slow["__error__"]["error"] == contracts.RUN_TIMEOUT
        runs = await client.runs.list(tid)
        assert [r["status"] for r in runs] == ["timeout"]
        quick = await client.runs.wait(tid, "echo", input=said("quick"))
        assert quick["messages"][-1]["content"] == "echo: quick"
    finally:
        proc.stop()


async def test_oversized_bodies_are_refused_with_413(server):
    big = {"metadata": {"blob": "x" * (9 * 1024 * 1024)}}
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        res = await http.post("/threads", json=big)
        assert res.status_code == 413 and "THREADBUS_MAX_BODY_MB" in res.json()["detail"]

        async def chunks():
            for _ in range(10):
                yield b"x" * (1024 * 1024)

        res = await http.post("/threads", content=chunks(), headers={"content-type": "application/json"})
        assert res.status_code == 413
        assert (await http.post("/threads", json={"metadata": {"small": True}})).status_code == 200



async def test_an_executor_stopped_mid_run_hands_the_run_back(tmp_path):
    cluster = Cluster(tmp_path)
    try:
        await cluster.start()
        victim = cluster.executors[0]
        # Restarted with a short grace, so that SIGTERM hands back what does not finish in it.
        victim.stop()
        victim.env["THREADBUS_EXECUTOR_SHUTDOWN_GRACE_S"] = "0.2"
        survivor = cluster.executors[1]
        survivor.stop()  # the run must land on the victim first
        victim.start(wait_http=False)
        await wait_logged([victim], "executor consuming")

        client = get_client(url=cluster.gateway.url)
        tid = (await client.threads.create())["thread_id"]
        run = await client.runs.create(tid, "two_step", input=said("hello"), config={"configurable": {"delay": 1.5}})
        await wait_logged([victim], "run executing", run_id=run["run_id"])
        survivor.start(wait_http=False)
        assert await asyncio.to_thread(victim.stop) == 0  # SIGTERM: a clean exit, not a kill
        await wait_logged([victim], "run handed back", run_id=run["run_id"])

        async with asyncio.timeout(60):
            await client.runs.join(tid, run["run_id"])
        assert (await client.runs.get(tid, run["run_id"]))["status"] == "success"
        assert await wait_logged([survivor], "run executing", run_id=run["run_id"]) is survivor
        assert contents((await client.threads.get_state(tid))["values"])[-1] == "answer to: hello"
        nc = await nats.connect(cluster.nats.url)
        try:
            assert await terminal_events(nc, tid, run["run_id"]) == ["RunSucceeded"]
        finally:
            await nc.close()
    finally:
        await asyncio.to_thread(cluster.stop)


async def test_a_runs_end_the_thread_stream_did_not_take_is_published_again_once_its_outcome_is_in(nats_url, thread_id):
    class FlakyThreadStream:
        """The v3 thread stream of the run, whose first end publish is not acknowledged."""

        def __init__(self):
            self.ends = []

        async def ended(self, outcome):
            self.ends.append(outcome)
            if len(self.ends) == 1:
                raise nats.errors.TimeoutError

    nc = await nats.connect(nats_url)
    try:
        await broker.bootstrap(nc, Settings())
        run_id = str(uuid.uuid4())
        # What the run's outcome is appended against; not a RunStarted, which an executor on this
        # nats-server would pick up.
        started = await ThreadLog(nc).append_event(contracts.RunCancelled(thread_id=thread_id, run_id=run_id, action="interrupt"))
        executor = Executor(nc, Settings(), GraphRegistry(TEST_GRAPHS))
        stream = FlakyThreadStream()
        outcome = contracts.RunSucceeded(thread_id=thread_id, run_id=run_id, checkpoint_id=None, webhook=False)
        await executor._end(stream, outcome, started)
        assert await terminal_events(nc, thread_id, run_id) == ["RunSucceeded"]
        assert stream.ends == [outcome, outcome]
    finally:
        await nc.close()


async def _ended_once_by(survivor, cluster, client, tid: str, run_id: str) -> None:
    """The run succeeded, executed again by ``survivor``, with one outcome in a log that verifies."""
    async with asyncio.timeout(60):
        await client.runs.join(tid, run_id)
    assert (await client.runs.get(tid, run_id))["status"] == "success"
    assert await wait_logged([survivor], "run executing", run_id=run_id) is survivor
    nc = await nats.connect(cluster.nats.url)
    try:
        assert await terminal_events(nc, tid, run_id) == ["RunSucceeded"]
        report = await verify.verify(nc, [tid])
        assert report.ok, report.format()
    finally:
        await nc.close()
