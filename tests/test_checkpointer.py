"""JetStreamSaver against a real nats-server: LangGraph's conformance suite plus threadbus's guard."""

from __future__ import annotations

import asyncio
import uuid

import nats
import pytest
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.report import ProgressCallbacks
from langgraph.checkpoint.conformance.test_utils import generate_checkpoint, generate_config, generate_metadata
from langgraph.checkpoint.serde.types import ERROR
from prometheus_client import REGISTRY

import contracts
from contracts import subjects
from threadbus.broker import bootstrap
from threadbus.checkpointer import JetStreamSaver, RunGuard, RunSuperseded
from threadbus.settings import Settings
from threadbus.threadlog import ThreadLog

CAPABILITIES = ["put", "put_writes", "get_tuple", "list", "delete_thread", "delete_for_runs", "copy_thread", "prune"]


@pytest.fixture(scope="session")
async def log(nats_url):
    nc = await nats.connect(nats_url)
    await bootstrap(nc, Settings())
    yield ThreadLog(nc)
    await nc.drain()


@pytest.mark.parametrize("capability", CAPABILITIES)
async def test_conformance(log, capability):
    @checkpointer_test(name="JetStreamSaver")
    async def saver():
        yield JetStreamSaver(log)

    # Only per-test lines: the verbose preset also reports every unselected capability "not implemented".
    progress = ProgressCallbacks(on_test_result=ProgressCallbacks.verbose().on_test_result)
    report = await validate(saver, capabilities={capability}, progress=progress)
    result = report.results[capability]
    assert result.detected, f"{capability} not implemented"
    assert result.passed and result.tests_failed == 0, "\n".join(result.failures)


async def test_superseded_run_cannot_write(log, thread_id):
    run_id = str(uuid.uuid4())
    # Guarding on "no control event yet" (0) instead of appending a RunStarted keeps an executor
    # that shares this nats-server (the API tests' server) from picking the run up.
    saver = JetStreamSaver(log).bound(RunGuard(thread_id, run_id, started_seq=0))

    # The run's own records do not move its control subject: it keeps writing.
    first = await saver.aput(generate_config(thread_id), generate_checkpoint(), generate_metadata(step=0), {})
    await saver.aput_writes(first, [("ch", "kept")], "task-1")
    second = await saver.aput(
        generate_config(thread_id, checkpoint_id=first["configurable"]["checkpoint_id"]),
        generate_checkpoint(),
        generate_metadata(step=1),
        {},
    )

    await log.append_event(contracts.RunCancelled(thread_id=thread_id, run_id=run_id, action="interrupt"))
    with pytest.raises(RunSuperseded):
        await saver.aput(
            generate_config(thread_id, checkpoint_id=second["configurable"]["checkpoint_id"]),
            generate_checkpoint(),
            generate_metadata(step=2),
            {},
        )
    with pytest.raises(RunSuperseded):
        await saver.aput_writes(second, [("ch", "lost")], "task-2")

    assert len(await log.read(subjects.checkpoints(thread_id))) == 2
    assert len(await log.read(subjects.writes(thread_id))) == 1
    latest = await saver.aget_tuple(generate_config(thread_id))
    assert latest.config == second and latest.pending_writes == []
    # The gateway's unguarded saver is not bound by the run.
    await JetStreamSaver(log).aput_writes(second, [("ch", "update")], "task-3")


async def test_write_precedence(log, thread_id):
    """A regular write of a (task, idx) is kept from the first call, a special one (error,
    interrupt, ...) from the last; reads return them in writes_sort_key order."""
    saver = JetStreamSaver(log)
    stored = await saver.aput(generate_config(thread_id), generate_checkpoint(), generate_metadata(), {})
    await saver.aput_writes(stored, [("ch", "first"), (ERROR, "first error")], "task", task_path="b")
    await saver.aput_writes(stored, [("ch", "second"), (ERROR, "second error")], "task", task_path="b")
    await saver.aput_writes(stored, [("ch", "other task")], "task-0", task_path="a")

    got = await saver.aget_tuple(stored)
    assert got.pending_writes == [
        ("task-0", "ch", "other task"),
        ("task", ERROR, "second error"),
        ("task", "ch", "first"),
    ]


@pytest.mark.parametrize(
    ("thread_id", "ns"),
    [
        ("user:42|a.b c", "parent:1|child.x y"),
        ("a:b", "c"),  # with the next one: tokens keep ':'-joined ids apart
        ("a", "b:c"),
        ("tb.thread.>", "*"),
    ],
)
async def test_odd_ids_round_trip(log, thread_id, ns):
    saver = JetStreamSaver(log)
    await saver.adelete_thread(thread_id)
    marker = str(uuid.uuid4())
    checkpoint = generate_checkpoint(checkpoint_id="00000000-0000-6000-8000-000000000001", channel_values={"k": ns})
    stored = await saver.aput(
        generate_config(thread_id, checkpoint_ns=ns), checkpoint, generate_metadata(marker=marker), {}
    )
    assert stored == generate_config(thread_id, checkpoint_ns=ns, checkpoint_id=checkpoint["id"])
    await saver.aput_writes(stored, [("ch", thread_id)], "task.with:odd|chars")

    for config in (stored, generate_config(thread_id, checkpoint_ns=ns)):
        got = await saver.aget_tuple(config)
        assert got.config == stored
        assert got.checkpoint["channel_values"] == {"k": ns}
        assert got.pending_writes == [("task.with:odd|chars", "ch", thread_id)]
    everywhere = [t async for t in saver.alist(None, filter={"marker": marker})]
    assert [t.config for t in everywhere] == [stored]

    await saver.adelete_thread(thread_id)
    assert await saver.aget_tuple(stored) is None


async def test_sync_methods_run_on_the_savers_loop(log, thread_id):
    saver = JetStreamSaver(log)
    config = generate_config(thread_id)

    def from_worker_thread():
        stored = saver.put(config, generate_checkpoint(), generate_metadata(), {})
        saver.put_writes(stored, [("ch", 1)], "task")
        listed = list(saver.list(config))
        got = saver.get_tuple(config)
        saver.delete_thread(thread_id)
        return stored, listed, got, saver.get_tuple(config)

    stored, listed, got, after_delete = await asyncio.to_thread(from_worker_thread)
    assert [t.config for t in listed] == [stored] and got.pending_writes == [("task", "ch", 1)]
    assert after_delete is None
    with pytest.raises(asyncio.InvalidStateError):
        saver.get_tuple(config)


async def test_a_long_history_is_listed_newest_first_decoding_only_what_is_returned(log, thread_id):
    # Enough checkpoints for list's backward walk to cross several windows of sequences.
    saver = JetStreamSaver(log)
    ids, config = [], generate_config(thread_id)
    for step in range(200):
        config = await saver.aput(config, generate_checkpoint(), generate_metadata(step=step), {})
        ids.append(config["configurable"]["checkpoint_id"])
    await saver.aput_writes(generate_config(thread_id, checkpoint_id=ids[95]), [("ch", "w")], "task")

    assert [t.config["configurable"]["checkpoint_id"] async for t in saver.alist(generate_config(thread_id))] == ids[::-1]

    decoded = REGISTRY.get_sample_value("threadbus_checkpoints_decoded_total")
    page = [t async for t in saver.alist(generate_config(thread_id), before=generate_config(thread_id, checkpoint_id=ids[100]), limit=10)]
    assert [t.config["configurable"]["checkpoint_id"] for t in page] == ids[99:89:-1]
    assert page[4].pending_writes == [("task", "ch", "w")]
    assert REGISTRY.get_sample_value("threadbus_checkpoints_decoded_total") - decoded == 10

    steps = [t.metadata["step"] async for t in saver.alist(generate_config(thread_id), filter={"step": 3})]
    assert steps == [3]
    latest = await saver.aget_tuple(generate_config(thread_id))
    old = await saver.aget_tuple(generate_config(thread_id, checkpoint_id=ids[7]))
    assert latest.config["configurable"]["checkpoint_id"] == ids[-1] and old.metadata["step"] == 7


async def test_a_head_left_on_a_removed_checkpoint_is_read_past(log, thread_id):
    saver = JetStreamSaver(log)
    kept = await saver.aput(generate_config(thread_id), generate_checkpoint(), generate_metadata(run_id="kept"), {})
    await saver.aput(kept, generate_checkpoint(), generate_metadata(run_id="gone"), {})
    await saver.adelete_for_runs(["gone"])  # as a rollback's compaction leaves it: the head points at nothing

    assert (await saver.aget_tuple(generate_config(thread_id))).config == kept
    assert [t.config async for t in saver.alist(generate_config(thread_id))] == [kept]


class _Rounds:
    """Counts a caller's sequential broker round trips: reads in flight together count once."""

    def __init__(self, monkeypatch):
        self.in_flight = self.rounds = 0
        for name in ("last", "_direct_batch"):
            monkeypatch.setattr(ThreadLog, name, self._counted(getattr(ThreadLog, name)))

    def _counted(self, fn):
        async def counted(*args, **kwargs):
            self.rounds += self.in_flight == 0
            self.in_flight += 1
            try:
                return await fn(*args, **kwargs)
            finally:
                self.in_flight -= 1

        return counted


async def _started(log, thread_id: str, run_id: str) -> int:
    """A control event for a run's guard to expect. Not a RunStarted, which an executor sharing
    this nats-server would pick up: a cancel, which nothing acts on for a run never requested."""
    return await log.append_event(contracts.RunCancelled(thread_id=thread_id, run_id=run_id, action="interrupt"))


async def test_a_checkpoints_pointers_are_stored_first_and_it_is_read_back_in_two_round_trips(log, thread_id, monkeypatch):
    run_id = str(uuid.uuid4())
    started = await _started(log, thread_id, run_id)
    saver = JetStreamSaver(log).bound(RunGuard(thread_id, run_id, started_seq=started))
    stored = await saver.aput(generate_config(thread_id), generate_checkpoint(), generate_metadata(), {})
    await saver.aput_writes(stored, [("ch", "w")], "task")

    record = (await log.read(subjects.checkpoints(thread_id)))[-1]
    ref = (await log.read(subjects.checkpoint_refs(thread_id)))[-1]
    head = (await log.read(subjects.checkpoint_heads(thread_id)))[-1]
    assert ref.seq < head.seq < record.seq  # a stored checkpoint has its pointers
    # The writes against it come after the run's start: a reader fetches them from there at once.
    assert head.event().writes_after == started and head.event().run_id == run_id

    rounds = _Rounds(monkeypatch)
    for config in (generate_config(thread_id), stored):
        got = await JetStreamSaver(log).aget_tuple(config)
        assert got.config == stored and got.pending_writes == [("task", "ch", "w")]
    assert rounds.rounds == 4  # pointer, then checkpoint and writes together; twice

    rounds.rounds = 0
    assert await JetStreamSaver(log).aget_tuple(generate_config(str(uuid.uuid4()))) is None
    assert rounds.rounds == 1  # no head, no checkpoint: nothing more is looked for


async def test_a_refused_checkpoint_leaves_no_pointer(log, thread_id):
    run_id = str(uuid.uuid4())
    saver = JetStreamSaver(log).bound(RunGuard(thread_id, run_id, started_seq=0))
    kept = await saver.aput(generate_config(thread_id), generate_checkpoint(), generate_metadata(), {})
    await log.append_event(contracts.RunCancelled(thread_id=thread_id, run_id=run_id, action="interrupt"))
    with pytest.raises(RunSuperseded):
        await saver.aput(kept, generate_checkpoint(), generate_metadata(), {})

    assert len(await log.read(subjects.checkpoint_refs(thread_id))) == 1
    assert len(await log.read(subjects.checkpoint_heads(thread_id))) == 1
    assert (await saver.aget_tuple(generate_config(thread_id))).config == kept


async def test_a_checkpoint_whose_acknowledgement_was_lost_is_stored_once(log, thread_id, monkeypatch):
    publish = log.js.publish
    lost = []

    async def record_ack_lost_once(subject, *args, **kwargs):
        ack = await publish(subject, *args, **kwargs)
        if ".ckpt." in subject and ".index." not in subject and not lost:
            lost.append(ack.seq)
            raise nats.errors.TimeoutError
        return ack

    monkeypatch.setattr(log.js, "publish", record_ack_lost_once)
    for guard in (RunGuard(thread_id, str(uuid.uuid4()), started_seq=0), None):
        lost.clear()
        saver = JetStreamSaver(log) if guard is None else JetStreamSaver(log).bound(guard)
        config = await saver.aput(generate_config(thread_id), generate_checkpoint(), generate_metadata(), {})
        assert lost, "the record's acknowledgement was not lost"
        stored = await log.read(subjects.checkpoints(thread_id, checkpoint_id=config["configurable"]["checkpoint_id"]))
        assert [e.seq for e in stored] == lost
        assert (await saver.aget_tuple(generate_config(thread_id))).config == config
