"""The read model as a pure fold of the thread log.

``project(thread, event, seq)`` takes a thread's row (or None before the thread exists) and one
event of its log, and returns the row after the event and the changes to the thread's runs and
checkpoint index. No I/O: the projector applies the changes to PostgreSQL, and a reader that must
see events the projector has not applied yet applies the same changes to the rows it read.

A thread's row keeps its fold (:class:`threadbus.thread_state.ThreadState`) so that projecting
the next event never needs the events before it. The fold is kept without run statuses, which
grow with the number of runs: the statuses an event changes are read off the fold right after
that event, and become changes to the runs' rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import msgspec

import contracts
from threadbus.jsonable import jsonable
from threadbus.thread_state import ThreadState, evolve


@dataclass
class ThreadRow:
    thread_id: str
    created_at: datetime
    updated_at: datetime
    state_updated_at: datetime
    metadata: dict[str, Any]
    fold: ThreadState
    log_seq: int
    status: str = "idle"
    values: Any = None
    interrupts: dict[str, Any] = field(default_factory=dict)
    # The last run's failure, as long as no run has ended otherwise since; shown while the thread
    # is in error (the fold's ``failed`` follows the same events).
    error: dict[str, Any] | None = None


@dataclass
class RunRow:
    run_id: str
    thread_id: str
    assistant_id: str
    created_at: datetime
    updated_at: datetime
    status: str
    metadata: dict[str, Any]
    multitask_strategy: str
    kwargs: dict[str, Any]


@dataclass(frozen=True)
class RunAdded:
    run: RunRow


@dataclass(frozen=True)
class RunChanged:
    """The run's status (None: unchanged) and when it last changed."""

    run_id: str
    status: str | None
    updated_at: datetime


@dataclass(frozen=True)
class RunRemoved:
    """Rolled back (its checkpoints go too) or deleted (its checkpoints stay: they are the thread's)."""

    run_id: str
    with_checkpoints: bool


@dataclass(frozen=True)
class CheckpointIndexed:
    thread_id: str
    checkpoint_ns: str
    checkpoint_id: str
    run_id: str | None
    parent_checkpoint_id: str | None
    seq: int
    metadata: contracts.TypedBlob
    checkpoint: contracts.TypedBlob


@dataclass(frozen=True)
class ThreadRemoved:
    thread_id: str


Change = RunAdded | RunChanged | RunRemoved | CheckpointIndexed | ThreadRemoved

# Events of a run that leave nothing of it to update: before it is a run, or after it is gone.
_NOT_A_CHANGE = (contracts.RunRequested, contracts.RunAccepted, contracts.RunRejected, contracts.RunRolledBack, contracts.RunDeleted)


def new_thread(thread_id: str, at: datetime, seq: int, metadata: dict[str, Any] | None = None) -> ThreadRow:
    return ThreadRow(
        thread_id=thread_id,
        created_at=at,
        updated_at=at,
        state_updated_at=at,
        metadata=dict(metadata or {}),
        fold=ThreadState(thread_id=thread_id, seq=seq),
        log_seq=seq,
    )


def project(thread: ThreadRow | None, event: contracts.events.AnyEvent, seq: int) -> tuple[ThreadRow | None, list[Change]]:
    """The thread's row after ``event`` (stored at ``seq``), and what changed besides it."""
    if isinstance(event, contracts.ThreadDeleted):
        return None, [ThreadRemoved(event.thread_id)] if thread is not None else []
    if thread is None:
        # Normally ThreadCreated; a producer that appends runs to a thread it never created still
        # gets a thread.
        meta = event.metadata if isinstance(event, contracts.ThreadCreated) else None
        thread = new_thread(event.thread_id, event.at, seq, meta)
    elif seq <= thread.log_seq:
        return thread, []  # seen already: a redelivery
    thread = replace(thread, log_seq=seq)
    if isinstance(event, contracts.CheckpointSaved):
        return _checkpoint(thread, event, seq)
    if isinstance(event, contracts.WritesSaved):
        return thread, []
    changes: list[Change] = []
    run_id = getattr(event, "run_id", None)
    before = thread.fold
    fold = evolve(before, event, seq)
    match event:
        case contracts.ThreadUpdated(metadata=metadata):
            thread.metadata = dict(metadata)
        case contracts.RunAccepted():
            request = next((r for r in before.inbox if isinstance(r, contracts.RunRequested) and r.run_id == run_id), None)
            if request is not None:
                changes.append(RunAdded(run_row(request, "pending", event.at)))
        # An outcome of a run being rolled back says nothing of the thread: the run is compacted.
        case contracts.RunInterrupted(interrupts=interrupts) if run_id not in fold.to_compact:
            thread.interrupts, thread.error = dict(interrupts), None
        case contracts.RunSucceeded() | contracts.RunStopped() if run_id not in fold.to_compact:
            thread.interrupts, thread.error = {}, None
        case contracts.RunFailed(error=error, message=message) if run_id not in fold.to_compact:
            thread.interrupts, thread.error = {}, {"error": error, "message": message}
        case contracts.RunRolledBack():
            changes.append(RunRemoved(run_id, with_checkpoints=True))
        case contracts.RunDeleted():
            changes.append(RunRemoved(run_id, with_checkpoints=False))
    # The fold starts each event without statuses, so those it has now are the ones this event set.
    for rid, status in fold.statuses.items():
        if not isinstance(event, contracts.RunAccepted):
            changes.append(RunChanged(rid, status, event.at))
    if run_id is not None and run_id not in fold.statuses and not isinstance(event, _NOT_A_CHANGE):
        changes.append(RunChanged(run_id, None, event.at))
    thread.fold = replace(fold, statuses={})
    thread.status = thread.fold.status
    thread.updated_at = event.at
    return thread, changes


def _checkpoint(thread: ThreadRow, event: contracts.CheckpointSaved, seq: int) -> tuple[ThreadRow, list[Change]]:
    if event.checkpoint_ns == "":
        thread.state_updated_at = event.at
    return thread, [
        CheckpointIndexed(
            thread_id=event.thread_id,
            checkpoint_ns=event.checkpoint_ns,
            checkpoint_id=event.checkpoint_id,
            run_id=event.run_id,
            parent_checkpoint_id=event.parent_checkpoint_id,
            seq=seq,
            metadata=event.metadata,
            checkpoint=event.checkpoint,
        )
    ]


def run_row(request: contracts.RunRequested, status: str, updated_at: datetime) -> RunRow:
    return RunRow(
        run_id=request.run_id,
        thread_id=request.thread_id,
        assistant_id=request.assistant_id,
        created_at=request.at,
        updated_at=updated_at,
        status=status,
        metadata=dict(request.metadata),
        multitask_strategy=request.multitask_strategy,
        kwargs=msgspec.to_builtins(request.kwargs),
    )


def apply_to_runs(runs: dict[str, RunRow], changes: list[Change]) -> None:
    """The changes to runs, applied to rows held in memory (what the projector does in SQL)."""
    for change in changes:
        match change:
            case RunAdded(run=run):
                runs[run.run_id] = run
            case RunChanged(run_id=run_id, status=status, updated_at=at) if run_id in runs:
                row = runs[run_id]
                runs[run_id] = replace(row, status=status or row.status, updated_at=at)
            case RunRemoved(run_id=run_id):
                runs.pop(run_id, None)
            case ThreadRemoved():
                runs.clear()


def state_values(checkpoint: dict[str, Any]) -> Any:
    """A thread's values from its newest root checkpoint: the state channels, without the
    channels LangGraph keeps for its own bookkeeping (``__start__``, ``branch:to:<node>``, ...)."""
    channels = checkpoint.get("channel_values") or {}
    return jsonable({k: v for k, v in channels.items() if not k.startswith(("__", "branch:"))})


def fold_to_json(fold: ThreadState) -> Any:
    return msgspec.to_builtins(replace(fold, statuses={}))


def fold_from_json(data: Any) -> ThreadState:
    return msgspec.convert(data, ThreadState)
