"""The double-texting policy as a pure decider.

``evolve(state, event) -> state`` folds one event of a thread's log into the thread's state;
``decide(state) -> events`` returns the decisions the state calls for. Both are pure: no I/O,
no clock, no randomness, so they are tested exhaustively without a broker, and the gateway uses
the same ``evolve`` to derive run and thread statuses from the log.

Commands reach the decider as events too: ``RunRequested`` and ``RunCancelRequested`` are
appended by the gateway (or any other service) and ``evolve`` files them in the state's inbox.
``decide`` answers each exactly once, in log order, so replaying a log that ends with an
unanswered command answers it again, and nothing else.

The table (DESIGN §4), with "in flight" = pending, or running and not already being cancelled:

============  ================================  ==============================================
strategy      the thread has in-flight runs      the thread has none
============  ================================  ==============================================
reject        ``RunRejected(busy)``              ``RunAccepted``
enqueue       ``RunAccepted`` (waits, FIFO)      ``RunAccepted``
interrupt     ``RunCancelled(r, interrupt)``     ``RunAccepted``
              for each, then ``RunAccepted``
rollback      ``RunCancelled(r, rollback)``      ``RunAccepted``
              for each, then ``RunAccepted``
============  ================================  ==============================================

Interrupt and rollback requests are checked against the pause (a ``Command(resume=...)`` needs
one; the paused-thread policy may refuse plain input) as the thread will be once the in-flight
runs are cancelled, and before any cancel is appended: a refused request changes nothing.

A run is started (``RunStarted``) only when no run of the thread is running (a cancelled run
counts as running until its executor confirms ``RunStopped``) and no rolled-back run is
waiting to be compacted, so at most one run executes per thread and a run that follows a
rollback starts from the state before the rolled-back runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Literal

from contracts.events import (
    RUN_TIMEOUT,
    CancelAction,
    Event,
    RunAccepted,
    RunCancelled,
    RunCancelRequested,
    RunFailed,
    RunInterrupted,
    RunRejected,
    RunRequested,
    RunRolledBack,
    RunStarted,
    RunStopped,
    RunSucceeded,
    ThreadDeleted,
)

RunStatus = Literal["pending", "running", "error", "success", "timeout", "interrupted"]
ThreadStatus = Literal["idle", "busy", "interrupted", "error"]
PausedPolicy = Literal["restart", "reject"]

BUSY_DETAIL = (
    "Thread is already running a task. Wait for it to finish or choose a different multitask strategy."
)
PAUSED_DETAIL = (
    "Thread is paused in a human-in-the-loop interrupt; resume it with a Command, or send the run"
    " with input to start over once the server's paused-thread policy is 'restart'."
)
NOT_PAUSED_DETAIL = "Thread has no pending interrupt to resume."


@dataclass(frozen=True, slots=True)
class ThreadState:
    thread_id: str
    seq: int = 0
    # Commands not answered yet, in log order.
    inbox: tuple[RunRequested | RunCancelRequested, ...] = ()
    # Accepted runs waiting to start, FIFO.
    queue: tuple[str, ...] = ()
    # The run an executor is executing (started, no terminal event yet).
    running: str | None = None
    # Set when ``running`` has been cancelled and its executor has not confirmed the stop yet.
    stopping: CancelAction | None = None
    # Rolled-back runs that no executor runs any more, waiting for their compaction.
    to_compact: tuple[str, ...] = ()
    paused: bool = False
    failed: bool = False
    statuses: dict[str, RunStatus] = field(default_factory=dict)

    @property
    def in_flight(self) -> tuple[str, ...]:
        running = (self.running,) if self.running is not None and self.stopping is None else ()
        return running + self.queue

    @property
    def status(self) -> ThreadStatus:
        if self.running is not None or self.queue or self.to_compact or self.inbox:
            return "busy"
        if self.paused:
            return "interrupted"
        if self.failed:
            return "error"
        return "idle"


def _with_status(state: ThreadState, run_id: str, status: RunStatus | None) -> dict[str, RunStatus]:
    statuses = dict(state.statuses)
    if status is None:
        statuses.pop(run_id, None)
    else:
        statuses[run_id] = status
    return statuses


def _without(items: tuple[str, ...], run_id: str) -> tuple[str, ...]:
    return tuple(r for r in items if r != run_id)


def _drop_cancels(state: ThreadState, run_id: str) -> ThreadState:
    return replace(state, inbox=tuple(c for c in state.inbox if not (isinstance(c, RunCancelRequested) and c.run_id == run_id)))


def _ended(state: ThreadState, run_id: str, status: RunStatus, **flags) -> ThreadState:
    """A run reached a terminal outcome. A rollback-cancelled run still has to be compacted."""
    state = _drop_cancels(state, run_id)
    if state.running == run_id and state.stopping == "rollback":
        return replace(state, running=None, stopping=None, to_compact=state.to_compact + (run_id,))
    if state.running == run_id:
        state = replace(state, running=None, stopping=None)
    return replace(state, statuses=_with_status(state, run_id, status), **flags)


def evolve(state: ThreadState, event: Event, seq: int | None = None) -> ThreadState:
    """The state after ``event``; ``seq`` is the event's stream sequence when it is known."""
    if seq is not None:
        state = replace(state, seq=seq)
    match event:
        case RunRequested(run_id=run_id):
            # The same request again (published twice, beyond the stream's duplicate window) is
            # decided once: a run id the thread already has, or is about to answer, is not new.
            if run_id in state.statuses or any(isinstance(c, RunRequested) and c.run_id == run_id for c in state.inbox):
                return state
            return replace(state, inbox=state.inbox + (event,))
        case RunCancelRequested(run_id=run_id):
            # A cancel is moot unless the run is in flight at this point of the log.
            if run_id not in state.in_flight or any(
                isinstance(c, RunCancelRequested) and c.run_id == run_id for c in state.inbox
            ):
                return state
            return replace(state, inbox=state.inbox + (event,))
        case RunAccepted(run_id=run_id):
            return replace(
                state,
                inbox=tuple(r for r in state.inbox if not (isinstance(r, RunRequested) and r.run_id == run_id)),
                queue=state.queue + (run_id,),
                statuses=_with_status(state, run_id, "pending"),
            )
        case RunRejected(run_id=run_id):
            return replace(state, inbox=tuple(r for r in state.inbox if not (isinstance(r, RunRequested) and r.run_id == run_id)))
        case RunStarted(run_id=run_id):
            return replace(
                state,
                queue=_without(state.queue, run_id),
                running=run_id,
                stopping=None,
                statuses=_with_status(state, run_id, "running"),
            )
        case RunCancelled(run_id=run_id, action=action):
            state = _drop_cancels(state, run_id)
            if run_id == state.running:
                return replace(state, stopping=action)
            if run_id in state.queue:
                state = replace(state, queue=_without(state.queue, run_id))
                if action == "rollback":
                    return replace(state, to_compact=state.to_compact + (run_id,))
                return replace(state, statuses=_with_status(state, run_id, "interrupted"))
            return state
        case RunStopped(run_id=run_id):
            return _ended(state, run_id, "interrupted", paused=False, failed=False)
        case RunSucceeded(run_id=run_id):
            return _ended(state, run_id, "success", paused=False, failed=False)
        case RunInterrupted(run_id=run_id):
            return _ended(state, run_id, "success", paused=True, failed=False)
        case RunFailed(run_id=run_id, error=error):
            return _ended(state, run_id, "timeout" if error == RUN_TIMEOUT else "error", paused=False, failed=True)
        case RunRolledBack(run_id=run_id):
            state = _drop_cancels(state, run_id)
            return replace(
                state,
                to_compact=_without(state.to_compact, run_id),
                queue=_without(state.queue, run_id),
                running=None if state.running == run_id else state.running,
                statuses=_with_status(state, run_id, None),
            )
        case ThreadDeleted():
            return ThreadState(thread_id=state.thread_id, seq=state.seq)
    return state


def fold(state: ThreadState, events: Iterable[tuple[int, Event]]) -> ThreadState:
    for seq, event in events:
        state = evolve(state, event, seq)
    return state


def _pause_rejection(state: ThreadState, request: RunRequested, paused_policy: PausedPolicy) -> RunRejected | None:
    """The rejection a request meets on a thread paused (or not) in a human-in-the-loop interrupt."""
    # A run being stopped with interrupt moved past the pause; one being rolled back did not.
    paused = state.paused and state.stopping != "interrupt"
    tid = state.thread_id
    if request.resumes and not paused:
        return RunRejected(thread_id=tid, run_id=request.run_id, reason="not_paused", detail=NOT_PAUSED_DETAIL)
    if paused and paused_policy == "reject" and request.kwargs.input is not None and not request.kwargs.command:
        return RunRejected(thread_id=tid, run_id=request.run_id, reason="paused", detail=PAUSED_DETAIL)
    return None


def next_decision(state: ThreadState, paused_policy: PausedPolicy = "restart") -> Event | None:
    """The single next event the orchestrator must append, or None when the state is settled."""
    tid = state.thread_id
    if state.to_compact:
        return RunRolledBack(thread_id=tid, run_id=state.to_compact[0])
    if state.inbox and isinstance(state.inbox[0], RunCancelRequested):
        cancel = state.inbox[0]
        return RunCancelled(thread_id=tid, run_id=cancel.run_id, action=cancel.action)
    if state.inbox:
        request = state.inbox[0]
        in_flight = state.in_flight
        if in_flight:
            if request.multitask_strategy == "reject":
                return RunRejected(thread_id=tid, run_id=request.run_id, reason="busy", detail=BUSY_DETAIL)
            if request.multitask_strategy in ("interrupt", "rollback"):
                after = state
                for run_id in in_flight:
                    after = evolve(after, RunCancelled(thread_id=tid, run_id=run_id, action=request.multitask_strategy))
                if (rejection := _pause_rejection(after, request, paused_policy)) is not None:
                    return rejection
                return RunCancelled(thread_id=tid, run_id=in_flight[0], action=request.multitask_strategy)
        elif (rejection := _pause_rejection(state, request, paused_policy)) is not None:
            return rejection
        return RunAccepted(thread_id=tid, run_id=request.run_id)
    if state.running is None and state.queue:
        return RunStarted(thread_id=tid, run_id=state.queue[0])
    return None


def decide(state: ThreadState, paused_policy: PausedPolicy = "restart") -> list[Event]:
    """Every decision the state calls for, in the order they must be appended."""
    decisions: list[Event] = []
    while (event := next_decision(state, paused_policy)) is not None:
        decisions.append(event)
        state = evolve(state, event)
    return decisions
