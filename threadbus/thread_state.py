"""A thread's state as its log says it is: the fold every service shares.

``evolve(state, event) -> state`` folds one event of a thread's log into the thread's state. It is
pure (no I/O, no clock), so the orchestrator's decisions, the read model's projection and any
replay of the log agree on what state a run is in. The double-texting policy that acts on this
state is the orchestrator's (:mod:`services.orchestrator.decider`).
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
            # decided once while its run is waiting or running: a run id the thread is about to
            # answer, has queued or is running is not new. A copy of a run that ended is refused
            # by its publisher, which finds the run in the log (statuses, which would tell, are
            # not part of the state that snapshots and the read model keep).
            if (
                run_id == state.running
                or run_id in state.queue
                or run_id in state.to_compact
                or any(isinstance(c, RunRequested) and c.run_id == run_id for c in state.inbox)
            ):
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
            # Everything of the run goes, its request too: a reader that saw the request before
            # the compaction and reads on after it (a lagging projection) ends where a replay does.
            state = _drop_cancels(state, run_id)
            return replace(
                state,
                inbox=tuple(c for c in state.inbox if not (isinstance(c, RunRequested) and c.run_id == run_id)),
                to_compact=_without(state.to_compact, run_id),
                queue=_without(state.queue, run_id),
                running=None if state.running == run_id else state.running,
                stopping=None if state.running == run_id else state.stopping,
                statuses=_with_status(state, run_id, None),
            )
        case ThreadDeleted():
            return ThreadState(thread_id=state.thread_id, seq=state.seq)
    return state


def fold(state: ThreadState, events: Iterable[tuple[int, Event]]) -> ThreadState:
    for seq, event in events:
        state = evolve(state, event, seq)
    return state
