"""The orchestrator's shell around the decider, against a real nats-server."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import nats
import pytest
from nats.js.kv import KeyValue

import contracts
from contracts import subjects
from services.orchestrator import service as orchestrator_service
from services.orchestrator.service import Orchestrator
from tests.support import database_for
from threadbus import broker
from threadbus.admission import assistant_id_for
from threadbus.broker import bootstrap
from threadbus.embedded import EmbeddedNats
from threadbus.settings import Settings
from threadbus.threadlog import ThreadLog


@pytest.fixture(scope="module")
def quiet_nats(tmp_path_factory):
    """A broker of its own: the session's `threadbus dev` would act on these threads' events."""
    server = EmbeddedNats(tmp_path_factory.mktemp("nats-orchestrator"))
    server.start()
    yield server.url
    server.stop()


@pytest.fixture
async def nc(quiet_nats):
    conn = await nats.connect(quiet_nats)
    await bootstrap(conn, Settings())
    yield conn
    await conn.drain()


async def test_a_rollback_whose_purge_never_happened_is_compacted_when_the_thread_is_loaded(nc):
    # The orchestrator that appended the tombstone died before purging: the rolled-back run's
    # checkpoint is still in the log. The next orchestrator to load the thread must purge it
    # before it starts anything on top of it.
    log = ThreadLog(nc)
    tid, rid = str(uuid.uuid4()), str(uuid.uuid4())
    events = [
        contracts.RunRequested(thread_id=tid, run_id=rid, assistant_id="a", graph_id="g"),
        contracts.RunAccepted(thread_id=tid, run_id=rid),
        contracts.RunStarted(thread_id=tid, run_id=rid),
        contracts.RunCancelled(thread_id=tid, run_id=rid, action="rollback"),
        contracts.RunStopped(thread_id=tid, run_id=rid),
    ]
    for event in events:
        await log.append_event(event)
    await log.append(subjects.checkpoint(tid, rid, "", "c1"), b"{}", msg_id=f"ckpt:{tid}:{rid}")
    await log.append_event(contracts.RunRolledBack(thread_id=tid, run_id=rid))

    state, _ = await Orchestrator(nc, Settings())._load(tid)

    remaining = [contracts.decode(e.data) for e in await log.read(subjects.thread_all(tid))]
    assert [type(e).__name__ for e in remaining] == ["RunRolledBack"]
    assert state.status == "idle" and rid not in state.statuses


async def test_a_rollback_followed_by_a_start_is_not_compacted_again(nc):
    # A start after the tombstone proves the purge happened; loading must not purge the new run.
    log = ThreadLog(nc)
    tid, old, new = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    await log.append_event(contracts.RunRolledBack(thread_id=tid, run_id=old))
    for event in (
        contracts.RunRequested(thread_id=tid, run_id=new, assistant_id="a", graph_id="g"),
        contracts.RunAccepted(thread_id=tid, run_id=new),
        contracts.RunStarted(thread_id=tid, run_id=new),
    ):
        await log.append_event(event)
    await log.append(subjects.checkpoint(tid, new, "", "c1"), b"{}", msg_id=f"ckpt:{tid}:{new}")

    await Orchestrator(nc, Settings())._load(tid)

    assert len(await log.read(subjects.run_all(tid, new))) == 4


async def test_a_request_its_publisher_admitted_is_decided_without_reading_the_records(nc, quiet_nats, monkeypatch):
    # The gateway reads the thread and the assistant to answer 404 before it publishes, and says
    # so: the orchestrator takes its word (no record exists here, yet the run is accepted). A
    # request that does not say so is checked, and one naming no thread is refused.
    reads = []
    get = KeyValue.get

    async def counted(kv, key, *args, **kwargs):
        if kv._name in (broker.THREADS_BUCKET, broker.ASSISTANTS_BUCKET):
            reads.append((kv._name, key))
        return await get(kv, key, *args, **kwargs)

    monkeypatch.setattr(KeyValue, "get", counted)
    settings = Settings()
    settings.database_url = database_for(quiet_nats)
    log = ThreadLog(nc)
    admitted, checked = (str(uuid.uuid4()), str(uuid.uuid4())), (str(uuid.uuid4()), str(uuid.uuid4()))
    stop = asyncio.Event()
    orchestrator = asyncio.create_task(Orchestrator(nc, settings).run(stop))
    try:
        await log.append_event(
            contracts.RunRequested(thread_id=admitted[0], run_id=admitted[1], assistant_id="a", graph_id="g", admitted=True)
        )
        started = await _decision(log, admitted[0])
        assert isinstance(started, contracts.RunStarted) and started.run_id == admitted[1]
        assert reads == []

        await (await nc.jetstream().key_value(broker.ASSISTANTS_BUCKET)).put(assistant_id_for("g"), b'{"graph_id": "g"}')
        await log.append_event(contracts.RunRequested(thread_id=checked[0], run_id=checked[1], assistant_id="g", graph_id="g"))
        rejected = await _decision(log, checked[0])
        assert isinstance(rejected, contracts.RunRejected) and rejected.reason == "unknown_thread", rejected
        assert {name for name, _ in reads} == {broker.THREADS_BUCKET, broker.ASSISTANTS_BUCKET}
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await orchestrator


async def test_a_queued_runs_start_carries_its_request_as_an_idle_threads_does(nc, quiet_nats):
    # The executor reads a run's request only when its RunStarted does not carry it: the second
    # run waits in the queue while the first runs, and its start comes after the first's end.
    settings = Settings()
    settings.database_url = database_for(quiet_nats)
    log = ThreadLog(nc)
    tid, first, second = (str(uuid.uuid4()) for _ in range(3))
    stop = asyncio.Event()
    orchestrator = asyncio.create_task(Orchestrator(nc, settings).run(stop))
    try:
        requests = [
            contracts.RunRequested(
                thread_id=tid, run_id=rid, assistant_id="a", graph_id="g", admitted=True, multitask_strategy="enqueue"
            )
            for rid in (first, second)
        ]
        await log.append_event(requests[0])
        assert (started := await _decision(log, tid)).request == requests[0]
        await log.append_event(requests[1])
        async with asyncio.timeout(30):
            while not await log.last(subjects.run_event(tid, second, "RunAccepted")):
                await asyncio.sleep(0.05)
        await log.append_event(contracts.RunSucceeded(thread_id=tid, run_id=first))
        async with asyncio.timeout(30):
            while (entry := await log.last(subjects.run_event(tid, second, "RunStarted"))) is None:
                await asyncio.sleep(0.05)
        assert entry.event().request == requests[1] and started.run_id == first
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await orchestrator


async def _decision(log: ThreadLog, thread_id: str) -> contracts.Event:
    """The last event of the thread once the orchestrator has answered its request: a refusal,
    or on these idle threads the start appended after the accept."""
    async with asyncio.timeout(30):
        while True:
            last = await log.last(subjects.thread_control(thread_id))
            if last is not None and not isinstance(event := last.event(), (contracts.RunRequested, contracts.RunAccepted)):
                return event
            await asyncio.sleep(0.05)


async def _threads_of_one_partition(log: ThreadLog, count: int) -> tuple[int, list[str]]:
    """Threads (created in the log) that the stream's transform puts in one partition."""
    by_partition: dict[int, list[str]] = {}
    while True:
        tid = str(uuid.uuid4())
        await log.append_event(contracts.ThreadCreated(thread_id=tid))
        partition = subjects.partition_of((await log.last(subjects.thread_control(tid))).subject)
        by_partition.setdefault(partition, []).append(tid)
        if len(by_partition[partition]) == count:
            return partition, by_partition[partition]


async def test_a_partitions_ack_floor_waits_for_a_thread_whose_handling_failed(nc, quiet_nats, monkeypatch):
    # Acks are cumulative: an event is acknowledged only once every event before it in the
    # partition is handled, so a takeover (which resumes from the ack floor) never skips the
    # request of a thread whose handling failed, though later threads' were decided.
    log = ThreadLog(nc)
    partition, (stuck, fine) = await _threads_of_one_partition(log, 2)
    failing = {stuck}
    handle = Orchestrator._handle_thread

    async def flaky(self, thread_id, msgs):
        if thread_id in failing:
            raise RuntimeError("injected")
        return await handle(self, thread_id, msgs)

    monkeypatch.setattr(Orchestrator, "_handle_thread", flaky)
    ack_every_s = 0.5
    monkeypatch.setattr(orchestrator_service, "ACK_EVERY_S", ack_every_s)
    settings = Settings()
    settings.database_url = database_for(quiet_nats)
    js = nc.jetstream()
    consumer = broker.orchestrator_durable(partition)
    stop = asyncio.Event()
    orchestrator = asyncio.create_task(Orchestrator(nc, settings).run(stop))
    try:
        requested = await log.append_event(
            contracts.RunRequested(thread_id=stuck, run_id=str(uuid.uuid4()), assistant_id="a", graph_id="g", admitted=True)
        )
        await log.append_event(
            contracts.RunRequested(thread_id=fine, run_id=str(uuid.uuid4()), assistant_id="a", graph_id="g", admitted=True)
        )
        assert isinstance(await _decision(log, fine), contracts.RunStarted)
        await asyncio.sleep(2.5 * ack_every_s)  # acks due meanwhile
        info = await js.consumer_info(subjects.THREAD_STREAM, consumer)
        assert 0 < info.ack_floor.stream_seq < requested, (info.ack_floor, requested)

        failing.clear()
        assert isinstance(await _decision(log, stuck), contracts.RunStarted)
        last = (await log.last(subjects.thread_control(fine))).seq
        async with asyncio.timeout(10):
            while (info := await js.consumer_info(subjects.THREAD_STREAM, consumer)).num_ack_pending:
                await asyncio.sleep(0.1)
        assert info.ack_floor.stream_seq >= last
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await orchestrator
