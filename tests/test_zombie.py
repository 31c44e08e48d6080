"""A zombie executor cannot write into a run that was interrupted or compacted meanwhile.

Production layout, one process per service: an orchestrator, a gateway and two executors, on a
nats-server of the test's own (the session's ``threadbus dev`` executor shares the durable
``executor`` consumer and would take the runs). Executors are redelivered a run after 2 s
without a heartbeat (``THREADBUS_EXECUTOR_ACK_WAIT_S=2``).

The executor running a slow run is frozen with SIGSTOP: it is still connected and still holds
the run, it just does nothing, as a process in a long GC pause or on a stalled VM would. A second
run is sent with ``multitask_strategy`` rollback (or interrupt). The frozen executor never hears
the cancel; its run is redelivered to the other executor, which reads the cancel in the log and
confirms the stop; the new run starts and finishes there. Then the zombie is thawed (SIGCONT): it
carries on with its stale run where it was, and every append it tries must be refused, so the
thread log does not change at all.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import nats
import pytest
from langgraph_sdk import get_client
from langgraph_sdk.errors import NotFoundError

import contracts
from contracts import subjects
from tests.support import TEST_GRAPHS, ThreadbusProcess
from threadbus import broker, verify
from threadbus.embedded import EmbeddedNats
from threadbus.settings import Settings
from threadbus.threadlog import ThreadLog

ACK_WAIT_S = 2
SLOW = {"configurable": {"delay": 2.0}}
QUICK = {"configurable": {"delay": 0.05}}


def said(text: str) -> dict:
    return {"messages": [{"role": "human", "content": text}]}


def contents(values) -> list[str]:
    return [m["content"] for m in values["messages"]]


def log_records(path: Path) -> list[dict]:
    records = []
    if not path.exists():
        return records
    for line in path.read_text().splitlines():
        if line.startswith("{"):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return records


def logged(proc: ThreadbusProcess, event: str, **fields) -> bool:
    return any(r.get("event") == event and all(r.get(k) == v for k, v in fields.items()) for r in log_records(proc.log_path))


async def wait_logged(procs: list[ThreadbusProcess], event: str, timeout: float = 30.0, **fields) -> ThreadbusProcess:
    """The first of ``procs`` whose log has ``event`` with ``fields``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if logged(proc, event, **fields):
                return proc
            if proc.process.poll() is not None:
                raise RuntimeError(f"{proc.args[0]} exited with {proc.process.returncode}:\n{proc.log_path.read_text()[-4000:]}")
        await asyncio.sleep(0.05)
    raise TimeoutError(f"no {event!r} {fields} in {[p.log_path.name for p in procs]}")


LEASE_S = 3


class Cluster:
    def __init__(self, root: Path, orchestrators: int = 1):
        self.root = root
        self.nats = EmbeddedNats(root / "nats")
        self.procs: list[ThreadbusProcess] = []
        self.executors: list[ThreadbusProcess] = []
        self.orchestrator_count = orchestrators

    async def start(self) -> None:
        url = await asyncio.to_thread(self.nats.start)
        env = {
            "NATS_URL": url,
            "THREADBUS_EXECUTOR_ACK_WAIT_S": str(ACK_WAIT_S),
            "THREADBUS_ORCHESTRATOR_LEASE_S": str(LEASE_S),
        }
        # Streams, consumers and buckets first, with the short ack wait and lease, so the
        # processes find them as they are.
        nc = await nats.connect(url)
        await broker.bootstrap(nc, Settings(nats_url=url, executor_ack_wait_s=ACK_WAIT_S, orchestrator_lease_s=LEASE_S))
        await nc.close()

        def proc(name: str, *args: str) -> ThreadbusProcess:
            p = ThreadbusProcess([*args], log_path=self.root / f"{name}.log", env=env)
            self.procs.append(p)
            return p

        self.orchestrators = [proc(f"orchestrator{i}", "orchestrator") for i in range(self.orchestrator_count)]
        self.orchestrator = self.orchestrators[0]
        self.gateway = proc("gateway", "gateway", "--config", str(TEST_GRAPHS))
        self.executors = [proc(f"executor{i}", "executor", "--config", str(TEST_GRAPHS)) for i in range(2)]
        for p in self.procs:
            p.start(wait_http=False)
        await asyncio.to_thread(self.gateway.wait_ready)
        for p in self.orchestrators:
            await wait_logged([p], "orchestrator consuming")
        for p in self.executors:
            await wait_logged([p], "executor consuming")

    def stop(self) -> None:
        for p in self.procs:
            if p.process is not None and p.process.poll() is None:
                os.kill(p.process.pid, signal.SIGCONT)  # a frozen process cannot handle SIGTERM
        for p in reversed(self.procs):
            try:
                p.stop(timeout=15)
            except RuntimeError:
                p.kill()
        self.nats.stop()


@pytest.fixture
async def cluster(tmp_path):
    c = Cluster(tmp_path)
    try:
        await c.start()
        yield c
    finally:
        await asyncio.to_thread(c.stop)


async def snapshot(nc, tid: str) -> list[tuple[int, str, bytes]]:
    return [(e.seq, e.subject, e.data) for e in await ThreadLog(nc).read(subjects.thread_all(tid))]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("strategy", ["rollback", "interrupt"])
async def test_a_zombie_executor_cannot_write_into_a_cancelled_run(cluster, strategy):
    client = get_client(url=cluster.gateway.url)
    nc = await nats.connect(cluster.nats.url)
    tlog = ThreadLog(nc)
    try:
        tid = (await client.threads.create())["thread_id"]
        first = await client.runs.create(tid, "two_step", input=said("first"), config=SLOW)
        zombie = await wait_logged(cluster.executors, "run executing", run_id=first["run_id"], thread_id=tid)
        other = next(e for e in cluster.executors if e is not zombie)
        # Its first checkpoint (the input) is in the log; it is now inside `think`, for 2 s.
        async with asyncio.timeout(10):
            while not [e for e in await tlog.read(subjects.run_all(tid, first["run_id"])) if ".ckpt." in e.subject]:
                await asyncio.sleep(0.02)

        os.kill(zombie.process.pid, signal.SIGSTOP)
        frozen_at = time.monotonic()
        second = await client.runs.create(tid, "two_step", input=said("second"), config=QUICK, multitask_strategy=strategy)
        async with asyncio.timeout(30):
            await client.runs.join(tid, second["run_id"])
        # The stop was confirmed by the other executor, once the run was redelivered to it.
        assert logged(other, "run stopped", run_id=first["run_id"])
        assert logged(other, "run executing", run_id=second["run_id"])
        assert not logged(zombie, "run executing", run_id=second["run_id"])
        assert time.monotonic() - frozen_at >= ACK_WAIT_S - 0.5, "the next run started before the redelivery"
        before = await snapshot(nc, tid)

        # Thaw the zombie: it carries on with its stale run, and must not change the log.
        os.kill(zombie.process.pid, signal.SIGCONT)
        await asyncio.sleep(SLOW["configurable"]["delay"] + 1.5)
        after = await snapshot(nc, tid)
        assert [(s, subj) for s, subj, _ in after] == [(s, subj) for s, subj, _ in before], "the zombie changed the log"
        assert zombie.process.poll() is None, "the zombie executor died"

        first_log = [e.event() for e in await tlog.read(subjects.run_all(tid, first["run_id"]))]
        state = await client.threads.get_state(tid)
        assert (await client.runs.get(tid, second["run_id"]))["status"] == "success"
        if strategy == "rollback":
            with pytest.raises(NotFoundError):
                await client.runs.get(tid, first["run_id"])
            assert [type(e) for e in first_log] == [contracts.RunRolledBack]
            assert contents(state["values"]) == ["second", "thinking about: second", "answer to: second"]
        else:
            assert (await client.runs.get(tid, first["run_id"]))["status"] == "interrupted"
            control = [type(e) for e in first_log if not isinstance(e, (contracts.CheckpointSaved, contracts.WritesSaved))]
            assert control == [
                contracts.RunRequested,
                contracts.RunAccepted,
                contracts.RunStarted,
                contracts.RunCancelled,
                contracts.RunStopped,
            ]
            # The interrupted run keeps its input checkpoint; nothing of its `think` step landed.
            assert contents(state["values"]) == ["first", "second", "thinking about: second", "answer to: second"]
        report = await verify.verify(nc, [tid])
        assert report.ok, report.format()
        assert report.in_flight() == {}

        # The thawed executor is healthy: with the other one gone, it runs the next run.
        await asyncio.to_thread(other.stop)
        third = await client.runs.create(tid, "two_step", input=said("third"), config=QUICK)
        async with asyncio.timeout(30):
            await client.runs.join(tid, third["run_id"])
        assert logged(zombie, "run executing", run_id=third["run_id"])
        assert (await client.runs.get(tid, third["run_id"]))["status"] == "success"
        final = contents((await client.threads.get_state(tid))["values"])
        assert final[-3:] == ["third", "thinking about: third", "answer to: third"]
        report = await verify.verify(nc, [tid])
        assert report.ok and not report.in_flight(), report.format()
    finally:
        await nc.close()
