"""The invariant checker itself: hand-built logs, each breaking one invariant, must be caught.

The pure replay (:func:`threadbus.verify.check_thread`) gets ``(seq, subject, event)`` triples;
the last tests read from a real (private) nats-server and run ``threadbus verify``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid

import pytest

import contracts
from contracts import subjects
from threadbus import verify
from threadbus.verify import (
    LEFTOVER,
    LIFECYCLE,
    ORDER,
    OUTSIDE,
    OVERLAP,
    STARTED_WHILE_RUNNING,
    TERMINAL,
    check_thread,
)

TID = "00000000-0000-0000-0000-000000000001"


class Log:
    """A thread log under construction: every call appends one message with the next sequence."""

    def __init__(self, thread_id: str = TID):
        self.thread_id = thread_id
        self.records: list[tuple[int, str, object]] = []

    @property
    def seq(self) -> int:
        return max((r[0] for r in self.records), default=0)

    def add(self, subject: str, event=None) -> int:
        self.records.append((self.seq + 1, subject, event))
        return self.seq

    def ev(self, cls, run_id: str | None = None, **fields) -> int:
        if run_id is None:
            event = cls(thread_id=self.thread_id, **fields)
        else:
            event = cls(thread_id=self.thread_id, run_id=run_id, **fields)
        return self.add(subjects.control_event(self.thread_id, run_id, cls.__name__), event)

    def request(self, run_id: str, strategy: str = "enqueue") -> int:
        return self.ev(contracts.RunRequested, run_id, assistant_id="a", graph_id="g", multitask_strategy=strategy)

    def accept(self, run_id: str) -> None:
        self.request(run_id)
        self.ev(contracts.RunAccepted, run_id)

    def ckpt(self, run_id: str) -> int:
        return self.add(subjects.checkpoint(self.thread_id, run_id, "", str(uuid.uuid4())))

    def write(self, run_id: str) -> int:
        return self.add(subjects.writes_record(self.thread_id, run_id, "", str(uuid.uuid4()), "task"))

    def run_ok(self, run_id: str, accept: bool = True) -> None:
        """A whole run: (accepted), started, a checkpoint and a write, succeeded."""
        if accept:
            self.accept(run_id)
        self.ev(contracts.RunStarted, run_id)
        self.ckpt(run_id)
        self.write(run_id)
        self.ckpt(run_id)
        self.ev(contracts.RunSucceeded, run_id)

    def check(self, compacted: bool = True):
        return check_thread(self.thread_id, self.records, compacted=compacted)


def kinds(report) -> dict[str, int]:
    return {k: n for k, n in report.counts().items() if n}


def test_a_correct_log_passes():
    log = Log()
    log.ev(contracts.ThreadCreated)
    log.run_ok("a")
    # b runs, c waits; d (interrupt) cancels both, b confirms the stop, d runs.
    log.accept("b")
    log.ev(contracts.RunStarted, "b")
    log.ckpt("b")
    log.accept("c")
    log.request("d", "interrupt")
    log.ev(contracts.RunCancelled, "b", action="interrupt")
    log.ev(contracts.RunCancelled, "c", action="interrupt")
    log.ev(contracts.RunAccepted, "d")
    log.ev(contracts.RunStopped, "b")
    log.run_ok("d", accept=False)
    # e is rejected; f rolled back (only its tombstone is left) before g runs.
    log.request("e", "reject")
    log.ev(contracts.RunRejected, "e", reason="busy", detail="busy")
    log.ev(contracts.RunRolledBack, "f")
    log.run_ok("g")
    # State updates outside a run use the run token "_".
    log.ckpt("_")
    log.write("_")
    # A deleted run leaves its checkpoints but no control event: not checkable, not a violation.
    log.ckpt("deleted")
    report = log.check()
    assert report.ok, report.violations
    assert report.in_flight == {}
    assert report.orphan_records == 1
    assert (report.runs, report.accepted, report.started, report.rolled_back) == (8, 5, 4, 1)


def test_in_flight_runs_are_not_violations():
    log = Log()
    log.accept("a")
    log.ev(contracts.RunStarted, "a")
    log.ckpt("a")
    log.accept("b")
    log.request("c")
    report = log.check()
    assert report.ok, report.violations
    assert report.in_flight == {"a": "running", "b": "pending", "c": "undecided"}


def test_overlapping_executions_are_caught():
    log = Log()
    log.accept("a")
    log.accept("b")
    log.ev(contracts.RunStarted, "a")
    log.ev(contracts.RunStarted, "b")  # a has not ended
    log.ev(contracts.RunSucceeded, "a")
    log.ev(contracts.RunSucceeded, "b")
    report = log.check()
    assert kinds(report) == {OVERLAP: 1, STARTED_WHILE_RUNNING: 1}
    (overlap,) = [v for v in report.violations if v.kind == OVERLAP]
    assert overlap.run_id == "b" and overlap.seqs == (5, 7, 6, 8)


def test_a_start_after_a_cancel_but_before_the_stop_is_caught():
    """Invariant 2: the next run starts only after the executor confirmed the stop."""
    log = Log()
    log.accept("a")
    log.ev(contracts.RunStarted, "a")
    log.request("b", "interrupt")
    log.ev(contracts.RunCancelled, "a", action="interrupt")
    log.ev(contracts.RunAccepted, "b")
    log.ev(contracts.RunStarted, "b")  # too early
    log.ev(contracts.RunStopped, "a")
    log.ev(contracts.RunSucceeded, "b")
    assert kinds(log.check()) == {OVERLAP: 1, STARTED_WHILE_RUNNING: 1}


def test_a_start_while_another_run_never_ended_is_caught():
    log = Log()
    log.accept("a")
    log.accept("b")
    log.ev(contracts.RunStarted, "a")
    log.ev(contracts.RunStarted, "b")
    report = log.check()
    # Open intervals are not "overlapping executions" yet, but the start itself is wrong.
    assert kinds(report) == {STARTED_WHILE_RUNNING: 1}
    assert report.in_flight == {"a": "running", "b": "running"}


@pytest.mark.parametrize("where", ["before_start", "after_end", "never_started", "write_after_stop"])
def test_records_outside_their_run_are_caught(where):
    log = Log()
    log.accept("a")
    if where == "before_start":
        log.ckpt("a")
    log.ev(contracts.RunStarted, "a")
    log.ckpt("a")
    if where == "write_after_stop":
        log.ev(contracts.RunCancelled, "a", action="interrupt")
        log.ev(contracts.RunStopped, "a")
        log.write("a")  # a zombie executor wrote after its stop was confirmed
    else:
        log.ev(contracts.RunSucceeded, "a")
    if where == "after_end":
        log.ckpt("a")
    if where == "never_started":
        log.accept("b")
        log.ev(contracts.RunCancelled, "b", action="interrupt")
        log.write("b")
    report = log.check()
    assert kinds(report) == {OUTSIDE: 1}, report.violations


def test_records_of_another_runs_execution_are_caught():
    log = Log()
    log.run_ok("a")
    log.accept("b")
    log.ev(contracts.RunStarted, "b")
    log.ckpt("a")  # inside b's execution, but it is a's record
    log.ev(contracts.RunSucceeded, "b")
    assert kinds(log.check()) == {OUTSIDE: 1}


@pytest.mark.parametrize(
    "outcomes",
    [
        (contracts.RunSucceeded, contracts.RunFailed),
        (contracts.RunStopped, contracts.RunSucceeded),
        (contracts.RunInterrupted, contracts.RunSucceeded),
    ],
)
def test_two_terminal_outcomes_are_caught(outcomes):
    log = Log()
    log.accept("a")
    log.ev(contracts.RunStarted, "a")
    for cls in outcomes:
        extra = {"error": "E", "message": "m"} if cls is contracts.RunFailed else {}
        log.ev(cls, "a", **extra)
    assert kinds(log.check()) == {TERMINAL: 1}


def test_a_cancelled_pending_run_that_also_succeeds_is_caught():
    log = Log()
    log.accept("a")
    log.ev(contracts.RunCancelled, "a", action="interrupt")
    log.ev(contracts.RunStarted, "a")
    log.ev(contracts.RunSucceeded, "a")
    report = log.check()
    assert kinds(report) == {TERMINAL: 1, LIFECYCLE: 1}
    assert any("started after its terminal" in v.detail for v in report.violations)


def test_enqueue_order_violations_are_caught():
    log = Log()
    log.accept("a")
    log.accept("b")
    log.run_ok("b", accept=False)
    log.run_ok("a", accept=False)
    report = log.check()
    assert kinds(report) == {ORDER: 1}
    assert report.violations[0].run_id == "a"


def test_cancelled_runs_do_not_count_for_the_order():
    log = Log()
    log.accept("a")
    log.accept("b")
    log.ev(contracts.RunCancelled, "a", action="interrupt")
    log.run_ok("b", accept=False)
    assert log.check().ok


@pytest.mark.parametrize("leftover", ["control", "checkpoint", "write", "resurrected"])
def test_leftovers_of_rolled_back_runs_are_caught(leftover):
    log = Log()
    if leftover == "control":
        log.ev(contracts.RunStopped, "a")  # compaction missed it
    log.ev(contracts.RunRolledBack, "a")
    if leftover == "checkpoint":
        log.ckpt("a")
    if leftover == "write":
        log.write("a")
    if leftover == "resurrected":
        log.ev(contracts.RunSucceeded, "a")  # a zombie executor appended after the compaction
    log.run_ok("b")
    report = log.check()
    assert kinds(report) == {LEFTOVER: 1}, report.violations
    assert report.violations[0].run_id == "a"


def rolled_back_history() -> Log:
    """A history recorded live: the rolled-back run's events are there, followed by its tombstone."""
    log = Log()
    log.accept("a")
    log.ev(contracts.RunStarted, "a")
    log.ckpt("a")
    log.request("b", "rollback")
    log.ev(contracts.RunCancelled, "a", action="rollback")
    log.ev(contracts.RunAccepted, "b")
    log.ev(contracts.RunStopped, "a")
    log.ev(contracts.RunRolledBack, "a")
    log.ev(contracts.RunStarted, "b")
    log.ckpt("b")
    log.ev(contracts.RunSucceeded, "b")
    return log


def test_a_history_with_a_rollback_passes_but_not_as_a_compacted_log():
    log = rolled_back_history()
    assert log.check(compacted=False).ok
    # The same messages read as a compacted log: the rollback was not compacted.
    assert kinds(log.check(compacted=True)) == {LEFTOVER: 1}


def test_a_history_shows_overlaps_that_compaction_erased():
    log = Log()
    log.accept("a")
    log.ev(contracts.RunStarted, "a")
    log.request("b", "rollback")
    log.ev(contracts.RunCancelled, "a", action="rollback")
    log.ev(contracts.RunAccepted, "b")
    log.ev(contracts.RunStarted, "b")  # before a confirmed its stop
    log.ev(contracts.RunStopped, "a")
    log.ev(contracts.RunRolledBack, "a")
    log.ev(contracts.RunSucceeded, "b")
    assert kinds(log.check(compacted=False)) == {OVERLAP: 1, STARTED_WHILE_RUNNING: 1}
    compacted = Log()
    compacted.records = [r for r in log.records if subjects.run_of(r[1]) != "a" or r[1].endswith(".rolledback")]
    assert compacted.check(compacted=True).ok  # what the compacted log cannot show


def test_a_history_tolerates_purged_gaps_but_not_writes_after_the_tombstone():
    log = rolled_back_history()
    # The recorder missed a's RunAccepted, RunStarted and RunStopped (purged before delivery).
    gappy = Log()
    gappy.records = [r for r in log.records if r[0] not in (2, 3, 8)]
    assert gappy.check(compacted=False).ok
    gappy.ckpt("a")  # but a record of a after its tombstone is a resurrection
    assert kinds(gappy.check(compacted=False)) == {LEFTOVER: 1}


def test_lifecycle_oddities_are_caught():
    log = Log()
    log.ev(contracts.RunStarted, "a")  # never accepted
    log.ev(contracts.RunSucceeded, "a")
    log.accept("b")
    log.ev(contracts.RunRejected, "b", reason="busy", detail="busy")
    log.accept("c")
    log.ev(contracts.RunSucceeded, "c")  # never started
    report = log.check()
    assert kinds(report) == {LIFECYCLE: 3}, report.violations


def test_a_thread_deletion_starts_afresh():
    log = Log()
    log.accept("a")
    log.ev(contracts.RunStarted, "a")  # in flight when the thread was deleted
    log.ev(contracts.ThreadDeleted)
    log.ev(contracts.ThreadCreated)
    log.run_ok("b")
    report = log.check()
    assert report.ok and report.in_flight == {}


def test_duplicate_sequences_count_once_and_order_does_not_matter():
    log = Log()
    log.run_ok("a")
    shuffled = list(reversed(log.records)) + log.records[:3]
    report = check_thread(TID, shuffled)
    assert report.ok and report.entries == log.seq


def test_report_aggregates_threads():
    bad = Log("t-bad")
    bad.accept("a")
    bad.accept("b")
    bad.ev(contracts.RunStarted, "a")
    bad.ev(contracts.RunStarted, "b")
    bad.ev(contracts.RunSucceeded, "a")
    bad.ev(contracts.RunSucceeded, "b")
    good = Log("t-good")
    good.run_ok("c")
    good.accept("d")
    report = verify.check_threads({"t-bad": bad.records, "t-good": good.records})
    assert not report.ok
    assert report.counts()[OVERLAP] == 1 and report.counts()[STARTED_WHILE_RUNNING] == 1
    assert sum(report.counts().values()) == 2
    assert report.in_flight() == {"t-good": {"d": "pending"}}
    data = report.to_dict()
    json.dumps(data)
    assert data["ok"] is False and data["totals"]["threads"] == 2 and data["totals"]["violations"] == 2
    assert data["examples"][OVERLAP][0]["thread_id"] == "t-bad"
    text = report.format()
    assert "FAILED: 2 violation(s)" in text and "in flight: thread t-good run d pending" in text


# -- against a real nats-server --------------------------------------------------------------------
@pytest.fixture
async def private_nats(tmp_path):
    """A nats-server of this test's own: the session server's orchestrator would act on the
    hand-written control events."""
    import nats

    from threadbus import broker
    from threadbus.embedded import EmbeddedNats
    from threadbus.settings import Settings

    server = EmbeddedNats(tmp_path / "nats")
    await asyncio.to_thread(server.start)
    nc = await nats.connect(server.url)
    await broker.bootstrap(nc, Settings(nats_url=server.url))
    try:
        yield server.url, nc
    finally:
        await nc.close()
        await asyncio.to_thread(server.stop)


async def write(nc, log: Log) -> None:
    from threadbus.threadlog import ThreadLog

    tlog = ThreadLog(nc)
    for seq, subject, event in log.records:
        payload = contracts.encode(event) if event is not None else b"{}"
        await tlog.append(subject, payload, msg_id=str(uuid.uuid4()))


async def test_verify_reads_threads_from_the_broker(private_nats):
    url, nc = private_nats
    good_tid, bad_tid = str(uuid.uuid4()), "a thread.id"  # the second one needs token encoding
    good = Log(good_tid)
    good.ev(contracts.ThreadCreated)
    good.run_ok("r1")
    bad = Log(bad_tid)
    bad.ev(contracts.RunRolledBack, "r2")
    bad.ckpt("r2")
    await write(nc, good)
    await write(nc, bad)

    assert await verify.thread_ids(nc) == sorted([good_tid, bad_tid])
    report = await verify.verify(nc)
    assert {t.thread_id: t.ok for t in report.threads} == {good_tid: True, bad_tid: False}
    assert report.counts()[LEFTOVER] == 1
    assert (await verify.verify(nc, [good_tid])).ok

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "threadbus.cli", "verify", *args],
            env={**os.environ, "NATS_URL": url},
            capture_output=True,
            text=True,
            timeout=60,
        )

    failed, passed = await asyncio.gather(
        asyncio.to_thread(cli, "--json"), asyncio.to_thread(cli, "--thread", good_tid)
    )
    assert failed.returncode == 1, failed.stderr
    data = json.loads(failed.stdout)
    assert data["violations"][LEFTOVER] == 1 and data["totals"]["threads"] == 2
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert passed.stdout.strip().endswith("OK")
