"""The orchestrator's thread snapshots are a cache: a stale or foreign one never makes a wrong decision.

Orchestrators run in this process on a nats-server of their own, with no executor: a started run
stays running until the test appends its outcome, as an executor would.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import replace

import nats
import orjson
import pytest

import contracts
from contracts import subjects
from services.orchestrator.service import Orchestrator
from services.orchestrator.snapshots import Snapshots, worth_saving
from tests.support import database_for
from threadbus import broker
from threadbus.admission import assistant_id_for
from threadbus.broker import bootstrap
from threadbus.embedded import EmbeddedNats
from threadbus.settings import Settings
from threadbus.thread_state import ThreadState, fold
from threadbus.threadlog import ThreadLog


@pytest.fixture(scope="module")
def own_nats(tmp_path_factory):
    server = EmbeddedNats(tmp_path_factory.mktemp("nats-snapshots"))
    server.start()
    yield server.url
    server.stop()


@pytest.fixture
def settings(own_nats) -> Settings:
    settings = Settings()
    settings.database_url = database_for(own_nats)
    return settings


@pytest.fixture
async def nc(own_nats, settings, thread_id):
    conn = await nats.connect(own_nats)
    await bootstrap(conn, settings)
    # The records an orchestrator admits a request by: its assistant (graph "g") and its thread.
    js = conn.jetstream()
    await (await js.key_value(broker.ASSISTANTS_BUCKET)).put(assistant_id_for("g"), orjson.dumps({"graph_id": "g"}))
    await (await js.key_value(broker.THREADS_BUCKET)).put(thread_id, orjson.dumps({"thread_id": thread_id}))
    yield conn
    await conn.drain()


@pytest.fixture
def orchestrating(nc, settings):
    """Runs an orchestrator for the duration of a ``with`` block."""

    @contextlib.asynccontextmanager
    async def running():
        stop = asyncio.Event()
        task = asyncio.create_task(Orchestrator(nc, settings).run(stop))
        try:
            yield
        finally:
            stop.set()
            await task

    return running


async def control_events(log: ThreadLog, thread_id: str) -> list[tuple[int, contracts.Event]]:
    return [(e.seq, e.event()) for e in await log.read(subjects.thread_control(thread_id))]


async def until(log: ThreadLog, thread_id: str, wanted, timeout: float = 30.0) -> list[tuple[int, contracts.Event]]:
    async with asyncio.timeout(timeout):
        while not wanted(events := await control_events(log, thread_id)):
            await asyncio.sleep(0.05)
    return events


def has(kind, run_id):
    return lambda events: any(isinstance(e, kind) and e.run_id == run_id for _, e in events)


def request(thread_id: str, run_id: str) -> contracts.RunRequested:
    return contracts.RunRequested(thread_id=thread_id, run_id=run_id, assistant_id=assistant_id_for("g"), graph_id="g")


async def a_running_run(orchestrating, log: ThreadLog, thread_id: str) -> str:
    first = str(uuid.uuid4())
    async with orchestrating():
        await log.append_event(request(thread_id, first))
        await until(log, thread_id, has(contracts.RunStarted, first))
    return first


async def second_run_waits_for_the_first(orchestrating, log: ThreadLog, thread_id: str, first: str) -> None:
    """With the first run still running, an enqueued second one is accepted but not started; it
    starts once the first has ended."""
    second = str(uuid.uuid4())
    async with orchestrating():
        await log.append_event(request(thread_id, second))
        await until(log, thread_id, has(contracts.RunAccepted, second))
        await asyncio.sleep(0.5)  # time to make a wrong decision, if it were going to
        assert not has(contracts.RunStarted, second)(await control_events(log, thread_id)), "started beside a running run"
        ended = await log.append_event(contracts.RunSucceeded(thread_id=thread_id, run_id=first, values={}))
        events = await until(log, thread_id, has(contracts.RunStarted, second))
    started = next(seq for seq, e in events if isinstance(e, contracts.RunStarted) and e.run_id == second)
    assert started > ended


async def test_a_stale_snapshot_costs_a_longer_tail_not_a_wrong_decision(nc, orchestrating, thread_id):
    log = ThreadLog(nc)
    first = await a_running_run(orchestrating, log, thread_id)
    # What the thread was before its run started: a true, older state.
    events = await control_events(log, thread_id)
    accepted = next(i for i, (_, e) in enumerate(events) if isinstance(e, contracts.RunAccepted))
    stale = fold(ThreadState(thread_id=thread_id), events[: accepted + 1])
    assert stale.queue == (first,) and stale.running is None
    await Snapshots(nc.jetstream()).save(stale)

    await second_run_waits_for_the_first(orchestrating, log, thread_id, first)


async def test_a_snapshot_that_is_not_of_this_log_is_dropped_and_the_thread_refolded(nc, orchestrating, thread_id):
    log = ThreadLog(nc)
    first = await a_running_run(orchestrating, log, thread_id)
    # An idle state at a sequence that holds another thread's event (a stream created anew under
    # the bucket would look like this): believed, it would start the next run beside the first.
    other = str(uuid.uuid4())
    foreign_seq = await log.append_event(contracts.ThreadCreated(thread_id=other))
    snapshots = Snapshots(nc.jetstream())
    await snapshots.save(ThreadState(thread_id=thread_id, seq=foreign_seq))

    await second_run_waits_for_the_first(orchestrating, log, thread_id, first)
    refolded = await snapshots.load(thread_id)
    assert refolded is None or refolded.seq != foreign_seq


async def test_a_deleted_threads_snapshot_is_dropped(nc, orchestrating, settings, thread_id):
    settings.orchestrator_snapshot_every = 1  # a snapshot after every event, so one exists to drop
    log = ThreadLog(nc)
    snapshots = Snapshots(nc.jetstream())
    run_id = str(uuid.uuid4())
    async with orchestrating():
        await log.append_event(request(thread_id, run_id))
        await until(log, thread_id, has(contracts.RunStarted, run_id))
        await log.append_event(contracts.RunSucceeded(thread_id=thread_id, run_id=run_id, values={}))
        async with asyncio.timeout(30):
            while (snapshot := await snapshots.load(thread_id)) is None or snapshot.running is not None:
                await asyncio.sleep(0.05)  # settled: snapshotted
        await log.delete_thread(thread_id)
        async with asyncio.timeout(30):
            while await snapshots.load(thread_id) is not None:
                await asyncio.sleep(0.05)


def test_a_snapshot_is_due_every_so_many_events_and_waits_for_outstanding_stops_and_compactions():
    # Settling is no reason: a run or two of events is a tail one batched read folds.
    settled = ThreadState(thread_id="t", seq=9)
    assert not worth_saving(settled, unsaved=1, every=64) and worth_saving(settled, unsaved=64, every=64)
    assert not worth_saving(settled, unsaved=0, every=64)
    busy = ThreadState(thread_id="t", seq=9, running="r")
    assert not worth_saving(busy, unsaved=63, every=64) and worth_saving(busy, unsaved=64, every=64)
    assert not worth_saving(ThreadState(thread_id="t", seq=9, running="r", stopping="rollback"), unsaved=100, every=64)
    assert not worth_saving(ThreadState(thread_id="t", seq=9, to_compact=("r",)), unsaved=100, every=64)


async def test_a_cold_start_folds_a_tail_bounded_by_the_snapshot_interval(nc, orchestrating, settings, thread_id):
    """Whatever the thread's history, the events a new orchestrator folds on first sight of it
    are fewer than ``orchestrator_snapshot_every``, and it reaches the state the whole log folds
    to; a thread that never had that many events has no snapshot."""
    every = settings.orchestrator_snapshot_every = 8
    log = ThreadLog(nc)
    snapshots = Snapshots(nc.jetstream())
    async with orchestrating():
        for n in range(8):  # 4 control events a run: 32 in all, 4 intervals
            run_id = str(uuid.uuid4())
            await log.append_event(request(thread_id, run_id))
            await until(log, thread_id, has(contracts.RunStarted, run_id))
            if n == 0:
                assert await snapshots.load(thread_id) is None, "a snapshot before the interval's events"
            await log.append_event(contracts.RunSucceeded(thread_id=thread_id, run_id=run_id, values={}))
        await asyncio.sleep(0.5)  # the last outcome folded by the live orchestrator
    history = await control_events(log, thread_id)
    assert len(history) == 32
    state, tail = await Orchestrator(nc, settings)._cold_start(thread_id, through=history[-1][0])
    assert 0 <= tail < every, (tail, every)
    assert replace(state, statuses={}) == replace(fold(ThreadState(thread_id=thread_id), history), statuses={})
    assert state.status == "idle"
