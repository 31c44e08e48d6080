"""Integrations on the bus (threadbus.integrations, examples/integrations): the approval bot and
the audit sink against a real nats-server and a real `threadbus dev`, the bot's handler in
FastStream's in-memory broker, and requests that name nothing that exists."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from collections import defaultdict

import nats
import orjson
import pytest
from faststream.nats import TestNatsBroker
from langgraph_sdk import get_client

import contracts
from contracts import subjects
from examples.integrations import approval_bot, audit_sink
from threadbus.embedded import EmbeddedNats
from threadbus.integrations import Requester, UnknownAssistant, UnknownThread, bus_requester, connect, resume_run_id
from threadbus.settings import Settings
from threadbus.threadlog import ThreadLog
from tests.support import ROOT, TEST_GRAPHS, ThreadbusProcess


def said(text: str) -> dict:
    return {"messages": [{"role": "human", "content": text}]}


@pytest.fixture(scope="module")
def bus(tmp_path_factory):
    """A broker and a `threadbus dev` of their own: a bot here resumes every pause it sees, and
    the audit sink's file is compared with the whole log."""
    server = EmbeddedNats(tmp_path_factory.mktemp("nats-integrations"))
    server.start()
    proc = ThreadbusProcess(
        ["dev", "--nats-url", server.url, "--config", str(TEST_GRAPHS)],
        log_path=tmp_path_factory.mktemp("threadbus-integrations") / "threadbus.log",
    ).start()
    yield server.url, proc
    proc.stop()
    server.stop()


@pytest.fixture
async def nc(bus):
    conn = await nats.connect(bus[0])
    yield conn
    await conn.close()


@pytest.fixture
def http(bus):
    return get_client(url=bus[1].url)


async def control_events(nc, thread_id: str) -> list[contracts.Event]:
    return [e.event() for e in await ThreadLog(nc).read(subjects.thread_control(thread_id))]


async def eventually(check, timeout: float = 30.0):
    async with asyncio.timeout(timeout):
        while not (result := await check()):
            await asyncio.sleep(0.1)
    return result


async def test_the_approval_bot_resumes_a_paused_thread_once(bus, nc, http):
    broker = connect(Settings(nats_url=bus[0]))
    broker.include_router(approval_bot.router("yes"))
    await broker.start()
    try:
        # A message on its subject that is no contract event: kept aside, and the bot carries on.
        poison_thread = str(uuid.uuid4())
        await nc.jetstream().publish(subjects.control_event(poison_thread, str(uuid.uuid4()), "RunInterrupted"), b"{not json")
        tid = (await http.threads.create())["thread_id"]
        paused = await http.runs.wait(tid, "pausing", input=said("go"))
        assert paused["__interrupt__"]

        async def resumed():
            runs = await http.runs.list(tid)
            return runs if len(runs) == 2 and {r["status"] for r in runs} == {"success"} else None

        runs = await eventually(resumed)
    finally:
        await broker.stop()
    state = await http.threads.get_state(tid)
    assert state["values"]["messages"][-1]["content"] == "approved: yes"
    dead = await nc.jetstream().get_last_msg(subjects.DEADLETTER_STREAM, subjects.dead_letter(approval_bot.DURABLE))
    assert poison_thread in dead.headers["Threadbus-Subject"] and dead.headers["Threadbus-Reason"]
    # FastStream bound the thread log without redeclaring it (JStream(declare=False)).
    config = (await nc.jetstream().stream_info(subjects.THREAD_STREAM)).config
    assert config.allow_direct and config.allow_rollup_hdrs and config.allow_atomic and config.subject_transform
    assert (await http.threads.get(tid))["status"] == "idle"

    events = await control_events(nc, tid)
    interrupted = next(e for e in events if isinstance(e, contracts.RunInterrupted))
    resume_id = resume_run_id(interrupted)
    assert resume_id in {r["run_id"] for r in runs}
    # An ordinary request, decided by the orchestrator as one from the HTTP API.
    request = next(e for e in events if isinstance(e, contracts.RunRequested) and e.run_id == resume_id)
    assert request.kwargs.command == {"resume": "yes"} and request.graph_id == "pausing"
    assert [type(e).__name__ for e in events if getattr(e, "run_id", None) == resume_id] == [
        "RunRequested", "RunAccepted", "RunStarted", "RunSucceeded",
    ]

    # The same resume again: through the requester it is refused (the log has the run), and a
    # copy stored under another message id (as a foreign producer's retry after the window)
    # does not resume anything twice: the thread has no pause left, the copy is rejected.
    requester = Requester(nc)
    await requester.resume(tid, "yes", run_id=resume_id, wait=False)
    await ThreadLog(nc).append(subjects.control_event(tid, resume_id, "RunRequested"), contracts.encode(request), msg_id="late-copy")
    after = await http.runs.wait(tid, "pausing", input=said("after"))  # decided after the copies
    assert after["__interrupt__"]
    decisions = [type(e).__name__ for e in await control_events(nc, tid) if getattr(e, "run_id", None) == resume_id]
    assert decisions == ["RunRequested", "RunAccepted", "RunStarted", "RunSucceeded", "RunRequested", "RunRejected"]


class RecordingRequester(Requester):
    """Stands in for the bus: records the resumes it is asked for."""

    def __init__(self):
        self.resumes: list[tuple[str, object, str]] = []

    async def resume(self, thread_id, answer, *, run_id, **_):
        self.resumes.append((thread_id, answer, run_id))
        return contracts.RunRequested(thread_id=thread_id, run_id=run_id, assistant_id="a", graph_id="g")


async def test_the_approval_handler_in_faststreams_test_broker():
    # Its logic without a server: which pauses it answers, with what, under which run id.
    broker = connect()
    broker.include_router(approval_bot.router({"approved": True}))
    recorder = RecordingRequester()
    tid, rid = str(uuid.uuid4()), str(uuid.uuid4())
    question = contracts.RunInterrupted(thread_id=tid, run_id=rid, interrupts={"task": [{"value": "approve?", "id": "i"}]})
    before = contracts.RunInterrupted(thread_id=tid, run_id=str(uuid.uuid4()))  # interrupt_before: nothing asked
    with broker.provider.scope(bus_requester, lambda: recorder):
        async with TestNatsBroker(broker) as test_broker:
            for event in (question, before):
                # As the stream stores it: the thread's partition after the thread id.
                subject = f"{subjects.PREFIX}.{tid}.3.run.{event.run_id}.interrupted"
                await test_broker.publish(contracts.encode(event), subject, stream=subjects.THREAD_STREAM)
    assert recorder.resumes == [(tid, {"approved": True}, resume_run_id(question))]


def start_sink(bus, path, log_path):
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, str(ROOT / "examples" / "integrations" / "audit_sink.py"), str(path)],
            env={**os.environ, "NATS_URL": bus[0], "THREADBUS_LOG_FORMAT": "json"},
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def audited(path) -> list[dict]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.endswith(b"}")]


async def test_the_audit_sink_killed_midstream_writes_every_event_once_in_order(bus, nc, http, tmp_path):
    path = tmp_path / "audit.jsonl"
    threads = [(await http.threads.create())["thread_id"] for _ in range(4)]

    async def traffic(rounds: int):
        for i in range(rounds):
            await asyncio.gather(*(http.runs.wait(t, "echo", input=said(f"m{i}")) for t in threads))

    sink_log = tmp_path / "sink.log"
    sink = start_sink(bus, path, sink_log)
    try:
        producing = asyncio.create_task(traffic(6))
        await eventually(lambda: asyncio.sleep(0, result=len(audited(path)) >= 20))
        os.kill(sink.pid, signal.SIGKILL)  # mid-stream: events keep coming while it is down
        sink.wait()
        await producing
        written_before = len(audited(path))
        sink = start_sink(bus, path, sink_log)
        await traffic(2)
        log = ThreadLog(nc)
        expected = {t: [(e.seq, e.subject) for e in await log.read(subjects.thread_control(t))] for t in threads}
        total = sum(len(v) for v in expected.values())

        def caught_up():
            mine = [r for r in audited(path) if subjects.thread_of(r["subject"]) in expected]
            return asyncio.sleep(0, result=len(mine) >= total)

        await eventually(caught_up, timeout=60)
    finally:
        sink.send_signal(signal.SIGTERM)
        sink.wait(30)

    lines = [json.loads(line) for line in sink_log.read_text().splitlines() if line.startswith("{")]
    # Poison messages other tests left in the log are dead-lettered; this test's threads have none.
    ours = [r for r in lines if r["level"] in ("warning", "error") and not _of_other_threads(r, threads)]
    assert ours == []
    consumer = await nc.jetstream().consumer_info(subjects.THREAD_STREAM, audit_sink.DURABLE)
    assert consumer.config.max_ack_pending == 1 and consumer.config.filter_subject == subjects.all_control()
    records = audited(path)
    assert written_before < len(records)
    seqs = [r["seq"] for r in records]
    assert seqs == sorted(set(seqs)), "every event once, in log order"
    by_thread = defaultdict(list)
    for record in records:
        by_thread[subjects.thread_of(record["subject"])].append((record["seq"], record["subject"]))
        assert contracts.decode(json.dumps(record["event"]).encode()).thread_id == subjects.thread_of(record["subject"])
    for thread in threads:
        assert by_thread[thread] == expected[thread]


async def wait_rejection(nc, thread_id: str, run_id: str) -> contracts.RunRejected:
    async def rejected():
        for event in await control_events(nc, thread_id):
            if isinstance(event, contracts.RunRejected) and event.run_id == run_id:
                return event
        return None

    return await eventually(rejected)


async def test_a_bus_request_naming_nothing_that_exists_is_rejected_with_a_reason(nc, http):
    js = nc.jetstream()
    tid = (await http.threads.create())["thread_id"]

    async def publish(thread_id: str, assistant_id: str, strategy: str = "enqueue") -> str:
        run_id = str(uuid.uuid4())
        payload = {"type": "RunRequested", "thread_id": thread_id, "run_id": run_id, "assistant_id": assistant_id,
                   "graph_id": "echo", "multitask_strategy": strategy, "kwargs": {"input": said("hi")}}
        await js.publish(subjects.control_event(thread_id, run_id, "RunRequested"), json.dumps(payload).encode(),
                         headers={"Nats-Msg-Id": f"requested:{thread_id}:{run_id}"})
        return run_id

    # A thread busy with a run: a request with the interrupt strategy naming no assistant must
    # not cancel it on its way to its refusal.
    busy = await http.runs.create(tid, "two_step", input=said("wait"), config={"configurable": {"delay": 2}})
    run = await publish(tid, "no-such-graph", "interrupt")
    rejection = await wait_rejection(nc, tid, run)
    assert rejection.reason == "unknown_assistant" and "no-such-graph" in rejection.detail
    await http.runs.join(tid, busy["run_id"])
    assert (await http.runs.get(tid, busy["run_id"]))["status"] == "success"
    assert not any(isinstance(e, contracts.RunCancelled) for e in await control_events(nc, tid))

    ghost = str(uuid.uuid4())
    rejection = await wait_rejection(nc, ghost, await publish(ghost, "echo"))
    assert rejection.reason == "unknown_thread" and ghost in rejection.detail

    # Malformed: kept in the dead-letter stream with the reason.
    bad_run = str(uuid.uuid4())
    sub = await js.subscribe(f"{subjects.DEADLETTER_PREFIX}.>", stream=subjects.DEADLETTER_STREAM, ordered_consumer=True)
    await js.publish(subjects.control_event(tid, bad_run, "RunRequested"), b'{"type": "RunRequested", "thread_id": 7}')
    async with asyncio.timeout(30):
        while True:
            msg = await sub.next_msg(timeout=30)
            if bad_run in msg.headers.get("Threadbus-Subject", ""):
                break
    assert msg.headers["Threadbus-Reason"]
    await sub.unsubscribe()

    # The typed client says so before anything is published.
    requester = Requester(nc)
    with pytest.raises(UnknownAssistant):
        await requester.run(tid, "no-such-graph", input=said("hi"))
    with pytest.raises(UnknownThread):
        await requester.run(str(uuid.uuid4()), "echo", input=said("hi"))
    accepted = await requester.run(tid, "echo", input=said("over the bus"))
    assert (await http.runs.join(tid, accepted.run_id))["messages"][-1]["content"] == "echo: over the bus"
    # As after POST /runs: the thread now runs that graph, and its state reads with it.
    assert (await http.threads.get(tid))["metadata"]["graph_id"] == "echo"
    assert (await http.threads.get_state(tid))["values"]["messages"][-1]["content"] == "echo: over the bus"


def test_dev_starts_without_warnings_and_says_what_to_try(bus):
    records = [json.loads(line) for line in bus[1].log_path.read_text().splitlines() if line.startswith("{")]
    ready = ("threadbus dev serving", "orchestrator consuming", "executor consuming")
    start = records[: max(i for i, r in enumerate(records) if r.get("event") in ready) + 1]
    assert {r["event"] for r in start} >= set(ready)
    assert [r for r in start if r.get("level") in ("warning", "error")] == []
    [banner] = [r for r in records if r.get("event") == "threadbus dev serving"]
    assert banner["url"] == bus[1].url and "pausing" in banner["graphs"]
    commands = [r["command"] for r in records if r.get("event") == "try"]
    assert len(commands) == 2 and any("examples/integrations" in command for command in commands)
    assert sum(r.get("event") == "partition taken" for r in records) == 0  # listed once, when consuming


def _of_other_threads(record: dict, threads: list[str]) -> bool:
    subject = record.get("subject")
    return record.get("event") == "dead-lettered an invalid message" and subject is not None and subjects.thread_of(subject) not in threads
