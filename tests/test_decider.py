"""The double-texting decider (``services/orchestrator/decider.py``), exhaustively and without a broker.

1. The decision table (DESIGN §4): every strategy × every thread situation. Every situation is
   built by folding a realistic log through ``evolve`` (with the decider's own decisions where
   the orchestrator would have made them), never by setting ``ThreadState`` fields.
2. Edge cases: cancel requests, runs arriving while a cancel is being confirmed, several queued
   runs, human-in-the-loop pauses and the paused-thread policy.
3. Properties (hypothesis): random interleavings of requests, cancel requests and executor
   outcomes, some of them landing in the log together before the orchestrator decides (as the
   orchestrator consumes batches), checked against invariants derived from the log.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.events import (
    Event,
    RunAccepted,
    RunCancelled,
    RunCancelRequested,
    RunFailed,
    RunInterrupted,
    RunKwargs,
    RunRejected,
    RunRequested,
    RunRolledBack,
    RunStarted,
    RunStopped,
    RunSucceeded,
)
from services.orchestrator.decider import BUSY_DETAIL, NOT_PAUSED_DETAIL, PAUSED_DETAIL, decide
from threadbus.thread_state import ThreadState, evolve, fold

TID = "thread-1"
STRATEGIES = ("reject", "enqueue", "interrupt", "rollback")
ACTIONS = ("interrupt", "rollback")
TERMINAL_STATUSES = {"success", "error", "interrupted"}
EXECUTOR_OUTCOMES = (RunStopped, RunSucceeded, RunFailed, RunInterrupted)
REJECT_DETAILS = {"busy": BUSY_DETAIL, "paused": PAUSED_DETAIL, "not_paused": NOT_PAUSED_DETAIL}


# --------------------------------------------------------------------------------------------
# Events and the test driver
# --------------------------------------------------------------------------------------------


def requested(run_id: str, strategy: str = "enqueue", *, resume: bool = False) -> RunRequested:
    """A run as the gateway stores it: new input, or a ``Command(resume=...)`` without input."""
    kwargs = RunKwargs(command={"resume": "approved"}) if resume else RunKwargs(input={"messages": [run_id]})
    return RunRequested(
        thread_id=TID, run_id=run_id, assistant_id="agent", graph_id="agent", multitask_strategy=strategy, kwargs=kwargs
    )


def cancel_requested(run_id: str, action: str = "interrupt") -> RunCancelRequested:
    return RunCancelRequested(thread_id=TID, run_id=run_id, action=action)


def outcome(kind: type[Event], run_id: str) -> Event:
    if kind is RunFailed:
        return RunFailed(thread_id=TID, run_id=run_id, error="ValueError", message="boom")
    return kind(thread_id=TID, run_id=run_id)


def brief(event: Event) -> tuple:
    """A decision as a short tuple: ("accepted", run), ("rejected", run, reason), ("started", run),
    ("cancelled", run, action), ("rolled_back", run)."""
    assert event.thread_id == TID
    match event:
        case RunAccepted(run_id=run_id):
            return ("accepted", run_id)
        case RunRejected(run_id=run_id, reason=reason, detail=detail):
            assert detail == REJECT_DETAILS[reason]
            return ("rejected", run_id, reason)
        case RunStarted(run_id=run_id):
            return ("started", run_id)
        case RunCancelled(run_id=run_id, action=action):
            return ("cancelled", run_id, action)
        case RunRolledBack(run_id=run_id):
            return ("rolled_back", run_id)
    raise AssertionError(f"not a decision: {event!r}")


def briefs(events: list[Event]) -> list[tuple]:
    return [brief(e) for e in events]


class Thread:
    """One thread's log, with the orchestrator deciding after every batch of appended events.

    ``append`` lands events without deciding (the orchestrator has not consumed them yet, or
    consumes them as one batch); ``send`` appends and then lets the orchestrator decide. Every
    event, input or decision, is folded through ``evolve`` with its log sequence.
    """

    def __init__(self, paused_policy: str = "restart", observe=None) -> None:
        self.paused_policy = paused_policy
        self.state = ThreadState(thread_id=TID)
        self.log: list[Event] = []
        self.observe = observe  # called after every event folded, decisions included

    def append(self, *events: Event) -> None:
        for event in events:
            self.log.append(event)
            self.state = evolve(self.state, event, len(self.log))
            if self.observe is not None:
                self.observe(self)

    def settle(self) -> list[Event]:
        decisions = decide(self.state, self.paused_policy)
        self.append(*decisions)
        return decisions

    def send(self, *events: Event) -> list[Event]:
        self.append(*events)
        return self.settle()

    # gateway commands
    def request(self, run_id: str, strategy: str = "enqueue", *, resume: bool = False) -> list[tuple]:
        return briefs(self.send(requested(run_id, strategy, resume=resume)))

    def cancel(self, run_id: str, action: str = "interrupt") -> list[tuple]:
        return briefs(self.send(cancel_requested(run_id, action)))

    # executor outcomes, for the running run
    def executor(self, kind: type[Event]) -> list[tuple]:
        assert self.running is not None, "no run is executing"
        return briefs(self.send(outcome(kind, self.running)))

    def succeed(self) -> list[tuple]:
        return self.executor(RunSucceeded)

    def stop(self) -> list[tuple]:
        assert self.state.stopping is not None, "the executor stops a run only when told to"
        return self.executor(RunStopped)

    def finish(self) -> list[tuple]:
        """The executor answers for every run it is given until nothing runs: ``RunStopped`` for a
        cancelled run, ``RunSucceeded`` otherwise. Returns the decisions made meanwhile."""
        decisions: list[tuple] = []
        while self.running is not None:
            decisions += self.stop() if self.state.stopping else self.succeed()
        return decisions

    @property
    def running(self) -> str | None:
        return self.state.running

    @property
    def statuses(self) -> dict[str, str]:
        return dict(self.state.statuses)

    @property
    def status(self) -> str:
        return self.state.status


# --------------------------------------------------------------------------------------------
# Thread situations, each built from a realistic log
# --------------------------------------------------------------------------------------------


def idle(t: Thread) -> None:
    """A new thread: no runs."""


def one_pending(t: Thread) -> None:
    """A was accepted while Z ran; Z has just succeeded and the orchestrator has not consumed
    that yet, so A is pending and nothing runs."""
    assert t.request("Z") == [("accepted", "Z"), ("started", "Z")]
    assert t.request("A") == [("accepted", "A")]
    t.append(outcome(RunSucceeded, "Z"))
    assert (t.running, t.statuses) == (None, {"Z": "success", "A": "pending"})


def running(t: Thread) -> None:
    assert t.request("A") == [("accepted", "A"), ("started", "A")]
    assert t.statuses == {"A": "running"}


def running_queued(t: Thread) -> None:
    running(t)
    assert t.request("B") == [("accepted", "B")]


def running_queued_twice(t: Thread) -> None:
    running_queued(t)
    assert t.request("C") == [("accepted", "C")]


def stopping_interrupt(t: Thread) -> None:
    """A running, cancelled with interrupt; its executor has not confirmed with RunStopped."""
    running(t)
    assert t.cancel("A", "interrupt") == [("cancelled", "A", "interrupt")]
    assert t.statuses == {"A": "running"}


def stopping_rollback(t: Thread) -> None:
    running(t)
    assert t.cancel("A", "rollback") == [("cancelled", "A", "rollback")]
    assert t.statuses == {"A": "running"}


def awaiting_compaction(t: Thread) -> None:
    """A was cancelled with rollback and stopped; the orchestrator has not compacted it yet."""
    stopping_rollback(t)
    t.append(outcome(RunStopped, "A"))
    assert t.running is None and t.status == "busy"


def paused(t: Thread) -> None:
    """A ended in a human-in-the-loop interrupt."""
    running(t)
    assert t.executor(RunInterrupted) == []
    assert (t.statuses, t.status) == ({"A": "success"}, "interrupted")


def failed(t: Thread) -> None:
    running(t)
    assert t.executor(RunFailed) == []
    assert (t.statuses, t.status) == ({"A": "error"}, "error")


SITUATIONS = {
    "idle": (idle, "restart"),
    "one_pending": (one_pending, "restart"),
    "running": (running, "restart"),
    "running_queued": (running_queued, "restart"),
    "running_queued_twice": (running_queued_twice, "restart"),
    "stopping_interrupt": (stopping_interrupt, "restart"),
    "stopping_rollback": (stopping_rollback, "restart"),
    "awaiting_compaction": (awaiting_compaction, "restart"),
    "paused_restart": (paused, "restart"),
    "paused_reject": (paused, "reject"),
    "failed": (failed, "restart"),
}


# Situations whose last event the orchestrator has not consumed yet.
UNDECIDED = {"one_pending", "awaiting_compaction"}


def thread_in(situation: str) -> Thread:
    build, policy = SITUATIONS[situation]
    t = Thread(paused_policy=policy)
    build(t)
    assert (decide(t.state, policy) == []) == (situation not in UNDECIDED)
    return t


# --------------------------------------------------------------------------------------------
# 1. The decision table: a new run N (with input) arrives, for every strategy and situation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Expect:
    decisions: list[tuple]  # what the orchestrator appends on N's arrival
    statuses: dict[str, str]  # run statuses right after
    then: list[tuple]  # decisions while the executor stops/finishes every run it is given
    final: dict[str, str]  # run statuses at the end
    status: str = "busy"  # thread status right after
    final_status: str = "idle"  # thread status at the end


def same_for_all(expect: Expect) -> dict[str, Expect]:
    return {strategy: expect for strategy in STRATEGIES}


TABLE: dict[str, dict[str, Expect]] = {
    "idle": same_for_all(Expect([("accepted", "N"), ("started", "N")], {"N": "running"}, [], {"N": "success"})),
    "one_pending": {
        "reject": Expect(
            [("rejected", "N", "busy"), ("started", "A")],
            {"Z": "success", "A": "running"},
            [],
            {"Z": "success", "A": "success"},
        ),
        "enqueue": Expect(
            [("accepted", "N"), ("started", "A")],
            {"Z": "success", "A": "running", "N": "pending"},
            [("started", "N")],
            {"Z": "success", "A": "success", "N": "success"},
        ),
        "interrupt": Expect(
            [("cancelled", "A", "interrupt"), ("accepted", "N"), ("started", "N")],
            {"Z": "success", "A": "interrupted", "N": "running"},
            [],
            {"Z": "success", "A": "interrupted", "N": "success"},
        ),
        "rollback": Expect(
            [("cancelled", "A", "rollback"), ("rolled_back", "A"), ("accepted", "N"), ("started", "N")],
            {"Z": "success", "N": "running"},
            [],
            {"Z": "success", "N": "success"},
        ),
    },
    "running": {
        "reject": Expect([("rejected", "N", "busy")], {"A": "running"}, [], {"A": "success"}),
        "enqueue": Expect(
            [("accepted", "N")], {"A": "running", "N": "pending"}, [("started", "N")], {"A": "success", "N": "success"}
        ),
        "interrupt": Expect(
            [("cancelled", "A", "interrupt"), ("accepted", "N")],
            {"A": "running", "N": "pending"},
            [("started", "N")],
            {"A": "interrupted", "N": "success"},
        ),
        "rollback": Expect(
            [("cancelled", "A", "rollback"), ("accepted", "N")],
            {"A": "running", "N": "pending"},
            [("rolled_back", "A"), ("started", "N")],
            {"N": "success"},
        ),
    },
    "running_queued": {
        "reject": Expect(
            [("rejected", "N", "busy")],
            {"A": "running", "B": "pending"},
            [("started", "B")],
            {"A": "success", "B": "success"},
        ),
        "enqueue": Expect(
            [("accepted", "N")],
            {"A": "running", "B": "pending", "N": "pending"},
            [("started", "B"), ("started", "N")],
            {"A": "success", "B": "success", "N": "success"},
        ),
        "interrupt": Expect(
            [("cancelled", "A", "interrupt"), ("cancelled", "B", "interrupt"), ("accepted", "N")],
            {"A": "running", "B": "interrupted", "N": "pending"},
            [("started", "N")],
            {"A": "interrupted", "B": "interrupted", "N": "success"},
        ),
        "rollback": Expect(
            [("cancelled", "A", "rollback"), ("cancelled", "B", "rollback"), ("rolled_back", "B"), ("accepted", "N")],
            {"A": "running", "N": "pending"},
            [("rolled_back", "A"), ("started", "N")],
            {"N": "success"},
        ),
    },
    "running_queued_twice": {
        "reject": Expect(
            [("rejected", "N", "busy")],
            {"A": "running", "B": "pending", "C": "pending"},
            [("started", "B"), ("started", "C")],
            {"A": "success", "B": "success", "C": "success"},
        ),
        "enqueue": Expect(
            [("accepted", "N")],
            {"A": "running", "B": "pending", "C": "pending", "N": "pending"},
            [("started", "B"), ("started", "C"), ("started", "N")],
            {"A": "success", "B": "success", "C": "success", "N": "success"},
        ),
        "interrupt": Expect(
            [
                ("cancelled", "A", "interrupt"),
                ("cancelled", "B", "interrupt"),
                ("cancelled", "C", "interrupt"),
                ("accepted", "N"),
            ],
            {"A": "running", "B": "interrupted", "C": "interrupted", "N": "pending"},
            [("started", "N")],
            {"A": "interrupted", "B": "interrupted", "C": "interrupted", "N": "success"},
        ),
        "rollback": Expect(
            [
                ("cancelled", "A", "rollback"),
                ("cancelled", "B", "rollback"),
                ("rolled_back", "B"),
                ("cancelled", "C", "rollback"),
                ("rolled_back", "C"),
                ("accepted", "N"),
            ],
            {"A": "running", "N": "pending"},
            [("rolled_back", "A"), ("started", "N")],
            {"N": "success"},
        ),
    },
    # A run being cancelled is no longer in flight: N is decided as on a thread without runs,
    # but starts only once the executor confirmed the stop (and, for rollback, after compaction).
    "stopping_interrupt": same_for_all(
        Expect(
            [("accepted", "N")],
            {"A": "running", "N": "pending"},
            [("started", "N")],
            {"A": "interrupted", "N": "success"},
        )
    ),
    "stopping_rollback": same_for_all(
        Expect(
            [("accepted", "N")],
            {"A": "running", "N": "pending"},
            [("rolled_back", "A"), ("started", "N")],
            {"N": "success"},
        )
    ),
    "awaiting_compaction": same_for_all(
        Expect([("rolled_back", "A"), ("accepted", "N"), ("started", "N")], {"N": "running"}, [], {"N": "success"})
    ),
    # A paused thread has no in-flight run; what happens to new input is the server's policy.
    "paused_restart": same_for_all(
        Expect(
            [("accepted", "N"), ("started", "N")],
            {"A": "success", "N": "running"},
            [],
            {"A": "success", "N": "success"},
        )
    ),
    "paused_reject": same_for_all(
        Expect([("rejected", "N", "paused")], {"A": "success"}, [], {"A": "success"}, "interrupted", "interrupted")
    ),
    "failed": same_for_all(
        Expect(
            [("accepted", "N"), ("started", "N")],
            {"A": "error", "N": "running"},
            [],
            {"A": "error", "N": "success"},
        )
    ),
}


def test_the_table_covers_every_situation_and_strategy():
    assert set(TABLE) == set(SITUATIONS)
    assert all(set(row) == set(STRATEGIES) for row in TABLE.values())


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("situation", list(SITUATIONS))
def test_decision_table(situation: str, strategy: str):
    expect = TABLE[situation][strategy]
    t = thread_in(situation)

    assert t.request("N", strategy) == expect.decisions
    assert (t.statuses, t.status) == (expect.statuses, expect.status)
    assert decide(t.state, t.paused_policy) == []

    assert t.finish() == expect.then
    assert (t.statuses, t.status) == (expect.final, expect.final_status)


# A resume Command (``command={"resume": ...}``, no input) is checked against the pause only
# when nothing is in flight; with runs in flight "reject" and "enqueue" decide as for any other
# run ("interrupt"/"rollback" with runs in flight: see test_a_rejected_request_cancels_nothing).
RESUME_TABLE: dict[str, dict[str, list[tuple]]] = {
    "idle": same_for_all([("rejected", "N", "not_paused")]),
    "failed": same_for_all([("rejected", "N", "not_paused")]),
    "stopping_interrupt": same_for_all([("rejected", "N", "not_paused")]),
    "stopping_rollback": same_for_all([("rejected", "N", "not_paused")]),
    "awaiting_compaction": same_for_all([("rolled_back", "A"), ("rejected", "N", "not_paused")]),
    "paused_restart": same_for_all([("accepted", "N"), ("started", "N")]),
    "paused_reject": same_for_all([("accepted", "N"), ("started", "N")]),
    "running": {"reject": [("rejected", "N", "busy")], "enqueue": [("accepted", "N")]},
    "running_queued": {"reject": [("rejected", "N", "busy")], "enqueue": [("accepted", "N")]},
    "one_pending": {
        "reject": [("rejected", "N", "busy"), ("started", "A")],
        "enqueue": [("accepted", "N"), ("started", "A")],
    },
}


@pytest.mark.parametrize(
    "situation,strategy", [(situation, strategy) for situation, row in RESUME_TABLE.items() for strategy in row]
)
def test_resume_command(situation: str, strategy: str):
    t = thread_in(situation)
    decisions = t.request("N", strategy, resume=True)
    assert decisions == RESUME_TABLE[situation][strategy]
    if any(d[0] == "rejected" for d in decisions):
        assert "N" not in t.statuses
        assert not any(d[0] == "cancelled" for d in decisions)


# --------------------------------------------------------------------------------------------
# 2. Edge cases
# --------------------------------------------------------------------------------------------


def test_rejected_runs_are_never_listed():
    t = thread_in("running_queued")
    assert t.request("N", "reject") == [("rejected", "N", "busy")]
    assert t.request("M", "reject") == [("rejected", "M", "busy")]
    t.finish()
    assert "N" not in t.statuses and "M" not in t.statuses
    assert t.statuses == {"A": "success", "B": "success"}


@pytest.mark.parametrize("kind,status", [(RunSucceeded, "success"), (RunFailed, "error"), (RunInterrupted, "success")])
def test_an_enqueued_run_starts_only_after_the_previous_one_ends(kind, status):
    t = thread_in("running_queued")
    assert t.request("N") == [("accepted", "N")]
    assert t.executor(kind) == [("started", "B")]
    assert t.statuses == {"A": status, "B": "running", "N": "pending"}
    assert t.executor(kind) == [("started", "N")]
    assert t.executor(kind) == []
    assert t.statuses == {"A": status, "B": status, "N": status}


def test_ten_enqueued_runs_all_succeed_in_order():
    t = Thread()
    runs = [f"r{i}" for i in range(10)]
    decisions = [d for run in runs for d in t.request(run, "enqueue")]
    assert decisions == [("accepted", "r0"), ("started", "r0")] + [("accepted", r) for r in runs[1:]]
    assert t.finish() == [("started", r) for r in runs[1:]]
    assert t.statuses == {r: "success" for r in runs}
    assert [e.run_id for e in t.log if isinstance(e, RunSucceeded)] == runs
    assert t.status == "idle"


def test_a_running_b_queued_c_interrupts():
    t = thread_in("running_queued")
    assert t.request("C", "interrupt") == [
        ("cancelled", "A", "interrupt"),
        ("cancelled", "B", "interrupt"),
        ("accepted", "C"),
    ]
    assert t.statuses == {"A": "running", "B": "interrupted", "C": "pending"}
    assert t.stop() == [("started", "C")]
    assert t.statuses == {"A": "interrupted", "B": "interrupted", "C": "running"}
    assert t.succeed() == []
    assert (t.statuses, t.status) == ({"A": "interrupted", "B": "interrupted", "C": "success"}, "idle")


def test_a_running_b_queued_c_rolls_back():
    t = thread_in("running_queued")
    assert t.request("C", "rollback") == [
        ("cancelled", "A", "rollback"),
        ("cancelled", "B", "rollback"),
        ("rolled_back", "B"),
        ("accepted", "C"),
    ]
    assert t.statuses == {"A": "running", "C": "pending"}
    assert t.stop() == [("rolled_back", "A"), ("started", "C")]
    assert t.statuses == {"C": "running"}
    assert t.succeed() == []
    assert (t.statuses, t.status) == ({"C": "success"}, "idle")


def test_the_run_after_a_rollback_waits_for_every_compaction():
    t = thread_in("running_queued_twice")
    decisions = t.request("N", "rollback")
    rolled_back = [d[1] for d in decisions if d[0] == "rolled_back"]
    assert rolled_back == ["B", "C"] and ("started", "N") not in decisions
    assert t.stop() == [("rolled_back", "A"), ("started", "N")]


@pytest.mark.parametrize("action", ACTIONS)
def test_cancel_the_running_run(action: str):
    t = thread_in("running_queued")
    assert t.cancel("A", action) == [("cancelled", "A", action)]
    assert t.statuses == {"A": "running", "B": "pending"} and t.status == "busy"
    # B waits for the executor's confirmation, not for the cancel decision.
    assert decide(t.state) == []
    if action == "interrupt":
        assert t.stop() == [("started", "B")]
        assert t.statuses == {"A": "interrupted", "B": "running"}
    else:
        assert t.stop() == [("rolled_back", "A"), ("started", "B")]
        assert t.statuses == {"B": "running"}


def test_cancel_a_pending_run_with_interrupt():
    t = thread_in("running_queued_twice")
    assert t.cancel("B", "interrupt") == [("cancelled", "B", "interrupt")]
    assert t.statuses == {"A": "running", "B": "interrupted", "C": "pending"}
    assert t.finish() == [("started", "C")]
    assert t.statuses == {"A": "success", "B": "interrupted", "C": "success"}


def test_cancel_a_pending_run_with_rollback():
    t = thread_in("running_queued_twice")
    assert t.cancel("B", "rollback") == [("cancelled", "B", "rollback"), ("rolled_back", "B")]
    assert t.statuses == {"A": "running", "C": "pending"}
    assert t.finish() == [("started", "C")]
    assert t.statuses == {"A": "success", "C": "success"}


def _finished(t: Thread) -> None:
    running(t)
    t.succeed()


def _rejected(t: Thread) -> None:
    running(t)
    t.request("N", "reject")


def _pending_interrupted(t: Thread) -> None:
    running_queued(t)
    t.cancel("B")


def _rolled_back(t: Thread) -> None:
    running_queued(t)
    t.cancel("B", "rollback")


@pytest.mark.parametrize(
    "build,run_id",
    [
        (idle, "unknown"),
        (running, "unknown"),
        (_finished, "A"),
        (paused, "A"),
        (failed, "A"),
        (_rejected, "N"),
        (_pending_interrupted, "B"),
        (_rolled_back, "B"),
        (stopping_interrupt, "A"),
        (stopping_rollback, "A"),
    ],
    ids=lambda v: getattr(v, "__name__", v),
)
@pytest.mark.parametrize("action", ACTIONS)
def test_cancel_request_for_a_run_not_in_flight_is_ignored(build, run_id: str, action: str):
    t = Thread()
    build(t)
    before = t.state
    assert t.cancel(run_id, action) == []
    assert t.state == replace(before, seq=t.state.seq)


def test_a_second_cancel_request_before_the_first_is_answered_is_ignored():
    t = thread_in("running")
    t.append(cancel_requested("A", "interrupt"), cancel_requested("A", "rollback"))
    assert briefs(t.settle()) == [("cancelled", "A", "interrupt")]
    assert t.stop() == []
    assert t.statuses == {"A": "interrupted"}


def test_a_new_run_while_a_cancel_is_being_confirmed_is_decided_after_that_cancel():
    t = thread_in("stopping_interrupt")
    # A no longer counts as in flight: even "reject" is accepted, but N waits for A's stop.
    assert t.request("N", "reject") == [("accepted", "N")]
    assert t.statuses == {"A": "running", "N": "pending"}
    assert t.stop() == [("started", "N")]


def test_interrupt_while_a_cancel_is_being_confirmed_cancels_only_the_queue():
    t = thread_in("running_queued")
    assert t.cancel("A", "rollback") == [("cancelled", "A", "rollback")]
    # A is already being rolled back; only B is in flight.
    assert t.request("N", "interrupt") == [("cancelled", "B", "interrupt"), ("accepted", "N")]
    assert t.request("M", "reject") == [("rejected", "M", "busy")]
    assert t.stop() == [("rolled_back", "A"), ("started", "N")]
    assert t.statuses == {"B": "interrupted", "N": "running"}


def test_outcome_racing_a_cancel_request_ends_the_run_with_its_outcome():
    # The executor finished A just as the cancel request landed; the orchestrator consumes both
    # together. A keeps its outcome and the queued run starts.
    t = thread_in("running_queued")
    t.append(cancel_requested("A", "rollback"), outcome(RunSucceeded, "A"))
    decisions = briefs(t.settle())
    assert ("started", "B") in decisions and ("rolled_back", "A") not in decisions
    assert t.statuses == {"A": "success", "B": "running"}


def test_paused_thread_restart_policy_accepts_new_input_and_drops_the_pause():
    t = thread_in("paused_restart")
    assert t.request("N", "reject") == [("accepted", "N"), ("started", "N")]
    assert t.status == "busy"
    t.succeed()
    assert t.status == "idle"


def test_paused_thread_reject_policy_refuses_new_input_but_resumes():
    t = thread_in("paused_reject")
    assert t.request("N") == [("rejected", "N", "paused")]
    assert t.status == "interrupted" and "N" not in t.statuses
    assert t.request("R", resume=True) == [("accepted", "R"), ("started", "R")]
    assert t.succeed() == []
    assert (t.statuses, t.status) == ({"A": "success", "R": "success"}, "idle")


def test_paused_thread_reject_policy_accepts_a_run_without_input():
    # No input and no command continues from the latest checkpoint (as after interrupt_before).
    t = thread_in("paused_reject")
    request = RunRequested(thread_id=TID, run_id="N", assistant_id="agent", graph_id="agent")
    assert briefs(t.send(request)) == [("accepted", "N"), ("started", "N")]


@pytest.mark.parametrize("when", ["before_its_answer", "while_it_runs", "while_it_waits"])
def test_a_request_published_twice_is_decided_once(when: str):
    # Beyond the stream's duplicate window the broker stores the copy: the log decides it once.
    t = thread_in("paused_restart")
    if when == "before_its_answer":
        t.append(requested("R", resume=True))
        assert t.request("R", resume=True) == [("accepted", "R"), ("started", "R")]
    elif when == "while_it_runs":
        assert t.request("R", resume=True) == [("accepted", "R"), ("started", "R")]
        assert t.request("R", resume=True) == []
    else:
        assert t.request("R", resume=True) == [("accepted", "R"), ("started", "R")]
        assert t.request("Q") == [("accepted", "Q")]
        assert t.request("Q") == []
    t.finish()
    ran = {"A": "success", "R": "success"} | ({"Q": "success"} if when == "while_it_waits" else {})
    assert (t.statuses, t.status) == (ran, "idle")


def test_pause_then_resume_then_pause_again():
    t = thread_in("paused_restart")
    assert t.request("R1", resume=True) == [("accepted", "R1"), ("started", "R1")]
    assert t.executor(RunInterrupted) == []
    assert t.status == "interrupted"
    assert t.request("R2", resume=True) == [("accepted", "R2"), ("started", "R2")]
    assert t.succeed() == []
    assert t.request("R3", resume=True) == [("rejected", "R3", "not_paused")]


def test_a_resume_enqueued_behind_a_run_that_pauses_resumes_it():
    t = thread_in("running")
    assert t.request("R", "enqueue", resume=True) == [("accepted", "R")]
    assert t.executor(RunInterrupted) == [("started", "R")]
    assert t.succeed() == []
    assert (t.statuses, t.status) == ({"A": "success", "R": "success"}, "idle")


def test_thread_status_follows_the_last_outcome():
    t = thread_in("failed")
    assert t.request("N") == [("accepted", "N"), ("started", "N")]
    assert t.status == "busy"
    assert t.executor(RunInterrupted) == []
    assert t.status == "interrupted"
    t.request("M")
    assert t.succeed() == []
    assert t.status == "idle"


def test_replaying_an_unanswered_command_answers_it_once():
    t = thread_in("running")
    t.append(requested("N", "enqueue"))
    replayed = fold(ThreadState(thread_id=TID), enumerate(t.log, 1))
    assert replayed == t.state
    assert briefs(decide(replayed)) == [("accepted", "N")]
    t.settle()
    assert decide(fold(ThreadState(thread_id=TID), enumerate(t.log, 1))) == []


# --------------------------------------------------------------------------------------------
# Regressions: rollback restores the pause, rejections cancel nothing, commands in log order
# --------------------------------------------------------------------------------------------


def compacted(log: list[Event]) -> list[tuple[int, Event]]:
    """The log as the broker keeps it: a rolled-back run's events before its tombstone are purged
    (``compact(thread, run, below=seq)``; DESIGN invariant 5). Entries keep their sequences."""
    kept: list[tuple[int, Event]] = []
    for seq, event in enumerate(log, 1):
        if isinstance(event, RunRolledBack):
            kept = [(s, e) for s, e in kept if getattr(e, "run_id", None) != event.run_id]
        kept.append((seq, event))
    return kept


@pytest.mark.parametrize("ending,status", [(RunInterrupted, "interrupted"), (RunFailed, "error")])
def test_rolling_back_a_run_restores_the_thread_status_before_it(ending, status):
    # Rolling back R makes the thread what it was before R (DESIGN invariant 5): here paused (or
    # failed) again, both live and when rebuilt from the compacted log, so the thread status and
    # the resume/paused-policy decisions never depend on whether a process restarted.
    t = thread_in("running")
    t.executor(ending)
    assert t.status == status
    assert t.request("R", resume=ending is RunInterrupted) == [("accepted", "R"), ("started", "R")]
    assert t.cancel("R", "rollback") == [("cancelled", "R", "rollback")]
    assert t.stop() == [("rolled_back", "R")]

    replayed = fold(ThreadState(thread_id=TID), compacted(t.log))
    assert replayed.status == status
    assert t.status == status


def test_rollback_and_resume_in_one_request():
    # The classic "answer the interrupt again" double text: A paused, R resumed it, and N
    # (rollback, Command(resume=...)) replaces R. Rolling back R puts the thread back into A's
    # pause, so N is a valid resume.
    t = thread_in("paused_restart")
    assert t.request("R", resume=True) == [("accepted", "R"), ("started", "R")]
    assert t.request("N", "rollback", resume=True) == [("cancelled", "R", "rollback"), ("accepted", "N")]
    assert t.stop() == [("rolled_back", "R"), ("started", "N")]


@pytest.mark.parametrize("strategy", ["interrupt", "rollback"])
def test_a_rejected_request_cancels_nothing(strategy: str):
    # A runs on a thread that is not paused; N is a Command(resume=...) with an interrupt or
    # rollback strategy. N is refused as "not_paused", and a refused request must leave earlier
    # runs unchanged (DESIGN §4: reject → "unchanged"), so A is not cancelled first.
    t = thread_in("running")
    decisions = t.request("N", strategy, resume=True)
    cancelled = [d for d in decisions if d[0] == "cancelled"]
    rejected = [d for d in decisions if d[0] == "rejected"]
    assert not (cancelled and rejected), f"N was rejected after cancelling {cancelled}"


def test_commands_are_answered_in_log_order():
    # Commands are answered in log order, also when the orchestrator takes them as one batch: N
    # (reject) landed before the cancel request for A, so N meets a busy thread whether the
    # orchestrator was quick or busy.
    t = thread_in("running")
    t.append(requested("N", "reject"), cancel_requested("A", "interrupt"))
    assert briefs(t.settle()) == [("rejected", "N", "busy"), ("cancelled", "A", "interrupt")]


# --------------------------------------------------------------------------------------------
# 3. Properties
# --------------------------------------------------------------------------------------------

# Inputs: ("request", strategy, resume), ("cancel", which known run, action), ("executor", outcome).
REQUEST_OP = st.tuples(st.just("request"), st.sampled_from(STRATEGIES), st.sampled_from([False, False, False, True]))
CANCEL_OP = st.tuples(st.just("cancel"), st.integers(0, 40), st.sampled_from(ACTIONS))
EXECUTOR_OP = st.tuples(st.just("executor"), st.sampled_from([RunSucceeded, RunFailed, RunInterrupted]))
OP = st.one_of(REQUEST_OP, REQUEST_OP, CANCEL_OP, EXECUTOR_OP, EXECUTOR_OP)
# Usually the orchestrator decides after every event; sometimes several land before it does.
BATCH = st.one_of(st.lists(OP, min_size=1, max_size=1), st.lists(OP, min_size=2, max_size=3))
SCENARIO = st.tuples(st.sampled_from(["restart", "reject"]), st.lists(BATCH, max_size=40))


class Simulation:
    """The gateway and the executors around one thread, driven by generated inputs."""

    def __init__(self, paused_policy: str, observe=None) -> None:
        self.thread = Thread(paused_policy, observe)
        self.run_ids: list[str] = []

    def apply(self, op: tuple) -> None:
        t = self.thread
        match op:
            case ("request", strategy, resume):
                run_id = f"r{len(self.run_ids)}"
                self.run_ids.append(run_id)
                t.append(requested(run_id, strategy, resume=resume))
            case ("cancel", index, action):
                known = self.run_ids + ["unknown"]
                t.append(cancel_requested(known[index % len(known)], action))
            case ("executor", kind):
                if t.running is None:
                    return
                # An executor told to cancel answers RunStopped; otherwise the graph's outcome. An
                # outcome may still race a cancel: both land before the orchestrator decides.
                t.append(outcome(RunStopped if t.state.stopping else kind, t.running))

    def step(self, batch: list[tuple]) -> None:
        for op in batch:
            self.apply(op)
        self.thread.settle()

    def drain(self) -> None:
        self.thread.finish()


@dataclass
class LogFacts:
    """What the log says about every run, derived without the decider."""

    requested: list[str]
    accepted: list[str]
    rejected: set[str]
    started: list[str]
    rolled_back: set[str]
    open: set[str]  # requested and not answered, or accepted and not ended
    outcomes: dict[str, str]  # the terminal status the log gives a run that was not rolled back


def facts(log: list[Event]) -> LogFacts:
    requested, accepted, started = [], [], []
    rejected, rolled_back, rollback_cancelled, ended = set(), set(), set(), set()
    outcomes: dict[str, str] = {}
    for event in log:
        run_id = getattr(event, "run_id", None)
        match event:
            case RunRequested():
                requested.append(run_id)
            case RunAccepted():
                accepted.append(run_id)
            case RunRejected():
                rejected.add(run_id)
                ended.add(run_id)
            case RunStarted():
                started.append(run_id)
            case RunCancelled(action=action) if run_id in accepted and run_id not in ended:
                if action == "rollback":
                    rollback_cancelled.add(run_id)
                elif run_id not in started:
                    outcomes[run_id] = "interrupted"
                    ended.add(run_id)
            case RunStopped() | RunSucceeded() | RunFailed() | RunInterrupted():
                if run_id not in rollback_cancelled:
                    outcomes[run_id] = {
                        RunStopped: "interrupted",
                        RunSucceeded: "success",
                        RunInterrupted: "success",
                        RunFailed: "error",
                    }[type(event)]
                    ended.add(run_id)
            case RunRolledBack():
                rolled_back.add(run_id)
                ended.add(run_id)
    return LogFacts(
        requested=requested,
        accepted=accepted,
        rejected=rejected,
        started=started,
        rolled_back=rolled_back,
        open={r for r in requested if r not in ended},
        outcomes=outcomes,
    )


def check_log(log: list[Event]) -> None:
    """Invariants of the event sequence itself, with in-flight runs as the log shows them."""
    requests: dict[str, RunRequested] = {}
    executing: str | None = None
    executing_cancelled = False
    queued: list[str] = []
    awaiting_compaction: set[str] = set()
    seen: set[tuple[type, str]] = set()
    for event in log:
        run_id = getattr(event, "run_id", None)
        if not isinstance(event, (RunRequested, RunCancelRequested)):
            # One decision / outcome of each kind per run.
            assert (type(event), run_id) not in seen, f"{type(event).__name__} twice for {run_id}"
            seen.add((type(event), run_id))
        in_flight = ([executing] if executing is not None and not executing_cancelled else []) + queued
        match event:
            case RunRequested():
                requests[run_id] = event
            case RunRejected(reason=reason):
                # The table: only "reject" refuses a run because of in-flight runs; the pause checks
                # apply to the state the run would start on, which for "reject" and "enqueue" means
                # with nothing in flight.
                strategy = requests[run_id].multitask_strategy
                if reason == "busy":
                    assert strategy == "reject" and in_flight
                elif in_flight:
                    assert strategy in ("interrupt", "rollback"), (run_id, strategy, reason, in_flight)
            case RunAccepted():
                # "reject" accepts only with nothing in flight; "interrupt"/"rollback" cancel every
                # in-flight run before accepting.
                strategy = requests[run_id].multitask_strategy
                if strategy != "enqueue":
                    assert not in_flight, f"{run_id} ({strategy}) accepted with {in_flight} in flight"
                queued.append(run_id)
            case RunStarted():
                # (b) at most one run executes; a run after a rollback starts from the compacted state.
                assert executing is None, f"{run_id} started while {executing} had not ended"
                assert not awaiting_compaction, f"{run_id} started before {awaiting_compaction} were compacted"
                assert queued and queued[0] == run_id, f"{run_id} started out of turn (queue: {queued})"
                queued.remove(run_id)
                executing, executing_cancelled = run_id, False
            case RunStopped() | RunSucceeded() | RunFailed() | RunInterrupted():
                assert run_id == executing, f"an outcome for {run_id}, which is not executing"
                if isinstance(event, RunStopped):
                    assert executing_cancelled, f"{run_id} stopped without being cancelled"
                executing = None
            case RunCancelled(action=action) if run_id in in_flight:
                # (A cancel decided for a run that ended meanwhile changes nothing.)
                if run_id in queued:
                    queued.remove(run_id)
                else:
                    executing_cancelled = True
                if action == "rollback":
                    awaiting_compaction.add(run_id)
            case RunRolledBack():
                assert run_id != executing, f"{run_id} rolled back before its executor stopped"
                awaiting_compaction.discard(run_id)


def check_event(t: Thread) -> None:
    """After every event, decisions included, settled or not."""
    state, known = t.state, facts(t.log)
    # (f) rolled-back runs are gone; rejected runs were never there.
    assert not known.rolled_back & state.statuses.keys()
    assert not known.rejected & state.statuses.keys()
    # every answered run is answered once; terminal statuses agree with the log.
    assert not known.rejected & set(known.accepted)
    for run_id, status in known.outcomes.items():
        assert state.statuses.get(run_id) == status
    # (g) busy iff something is running, queued, awaiting compaction or undecided.
    assert (state.status == "busy") == bool(known.open), (state.status, known.open)


def check_settled(t: Thread) -> None:
    """After the orchestrator decided."""
    state, log = t.state, t.log
    known = facts(log)
    # (a) settled: nothing more to decide.
    assert decide(state, t.paused_policy) == []
    # (b) the log's own invariants, and every request answered per the table.
    check_log(log)
    # (d) FIFO: runs start in acceptance order.
    started = set(known.started)
    assert known.started == [r for r in known.accepted if r in started]
    # (e) replay of the full log from an empty state gives the same state.
    assert fold(ThreadState(thread_id=TID), enumerate(log, 1)) == state
    check_event(t)


def check_drained(t: Thread) -> None:
    known = facts(t.log)
    assert t.running is None and t.status != "busy" and not known.open
    # (c) every accepted run has exactly one outcome: a terminal status, or a rollback.
    for run_id in known.accepted:
        terminal = t.statuses.get(run_id) in TERMINAL_STATUSES
        assert terminal != (run_id in known.rolled_back), (run_id, t.statuses.get(run_id))
    # every request was answered; rejected runs never appear.
    assert set(known.requested) == set(known.accepted) | known.rejected
    assert set(t.statuses) == set(known.accepted) - known.rolled_back


@settings(max_examples=300, deadline=None)
@given(SCENARIO)
def test_invariants_hold_for_any_interleaving(scenario):
    paused_policy, batches = scenario
    sim = Simulation(paused_policy, observe=check_event)
    for batch in batches:
        sim.step(batch)
        check_settled(sim.thread)
    sim.drain()
    check_settled(sim.thread)
    check_drained(sim.thread)


@settings(max_examples=300, deadline=None)
@given(SCENARIO)
def test_replaying_the_compacted_log_gives_the_same_state(scenario):
    # After a started run is rolled back and compacted, folding the log as the broker keeps it
    # (what an orchestrator rebuilds after a restart, or a new gateway instance) gives the state
    # the running orchestrator has.
    paused_policy, batches = scenario
    sim = Simulation(paused_policy)
    for batch in [*batches, None]:
        if batch is None:
            sim.drain()
        else:
            sim.step(batch)
        assert fold(ThreadState(thread_id=TID), compacted(sim.thread.log)) == sim.thread.state
