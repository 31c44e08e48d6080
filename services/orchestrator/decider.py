"""The double-texting policy as a pure decider.

``decide(state) -> events`` returns the decisions a thread's state calls for; the state is the
fold of the thread's log by :func:`threadbus.thread_state.evolve`. Both are pure: no I/O, no
clock, no randomness, so they are tested exhaustively without a broker.

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

from typing import Literal

from contracts.events import (
    Event,
    RunAccepted,
    RunCancelled,
    RunCancelRequested,
    RunRejected,
    RunRequested,
    RunRolledBack,
    RunStarted,
)
from threadbus.thread_state import ThreadState, evolve

PausedPolicy = Literal["restart", "reject"]

BUSY_DETAIL = (
    "Thread is already running a task. Wait for it to finish or choose a different multitask strategy."
)
PAUSED_DETAIL = (
    "Thread is paused in a human-in-the-loop interrupt; resume it with a Command, or send the run"
    " with input to start over once the server's paused-thread policy is 'restart'."
)
NOT_PAUSED_DETAIL = "Thread has no pending interrupt to resume."


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
