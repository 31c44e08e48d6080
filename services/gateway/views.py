"""What the gateway shows that is not a read model row: how a run ends (from its own control
events), one run's view from its own events (for webhooks), and LangGraph state snapshots as the
API shows them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec

import contracts
from contracts import subjects
from threadbus.thread_state import ThreadState, evolve
from threadbus.jsonable import jsonable
from threadbus.read_model import projection, rows
from threadbus.threadlog import Entry, ThreadLog


@dataclass
class RunRecord:
    requested: contracts.RunRequested
    updated_at: datetime
    outcome: contracts.Event | None = None


async def run_view(
    log: ThreadLog, thread_id: str, run_id: str, *, after: int = 0, seen: tuple[int, contracts.Event] | None = None
) -> tuple[RunRecord, str] | None:
    """One run and its status from the run's own control events (those after ``after``, which
    must include its ``RunRequested``), without reading the rest of the thread: a run's status
    depends on its own events only. ``seen`` is an event of the run the caller was delivered, folded
    in when a lagging replica's read does not include it yet. None when the run is not in the log,
    is deleted, or is being rolled back."""
    return run_of(thread_id, run_id, await log.read(subjects.run_control(thread_id, run_id), after=after), seen=seen)


def run_of(
    thread_id: str, run_id: str, entries: list[Entry], *, seen: tuple[int, contracts.Event] | None = None
) -> tuple[RunRecord, str] | None:
    """:func:`run_view` of control events the caller has read."""
    events = []
    for entry in entries:
        try:
            events.append((entry.seq, entry.event()))
        except msgspec.DecodeError:
            continue
    if seen is not None and (not events or events[-1][0] < seen[0]):
        events.append(seen)
    state, record = ThreadState(thread_id=thread_id), None
    for seq, event in events:
        if isinstance(event, contracts.RunDeleted):  # the fold keeps no trace of a deletion
            return None
        state = evolve(state, event, seq)
        if isinstance(event, contracts.RunRequested):
            record = RunRecord(requested=event, updated_at=event.at)
        elif record is not None:
            record.updated_at = event.at
            if isinstance(event, contracts.TERMINAL_EVENTS):
                record.outcome = event
    status = state.statuses.get(run_id)
    return (record, status) if record is not None and status is not None else None


async def outcome(events: AsyncIterator[contracts.Event]) -> contracts.Event:
    """The event that ends a run, from the run's control events (read from the beginning)."""
    started = False
    async for event in events:
        if isinstance(event, (*contracts.TERMINAL_EVENTS, contracts.RunRejected)):  # refused: nothing more comes
            return event
        if isinstance(event, contracts.RunStarted):  # read from the log: the watch does not deliver it
            started = True
        elif isinstance(event, contracts.RunCancelled) and event.action == "interrupt":
            if event.pending or (event.pending is None and not started):
                return event  # a pending run ends with its cancel; a running one with RunStopped
    raise AssertionError("control events ended")


def run_object(record: RunRecord, status: str) -> dict[str, Any]:
    return rows.run_object(projection.run_row(record.requested, status, record.updated_at))


def checkpoint_object(config: dict[str, Any] | None) -> dict[str, Any] | None:
    if not config:
        return None
    c = config.get("configurable", {})
    return {
        "thread_id": c.get("thread_id"),
        "checkpoint_ns": c.get("checkpoint_ns", ""),
        "checkpoint_id": c.get("checkpoint_id"),
        "checkpoint_map": c.get("checkpoint_map"),
    }


def interrupt_object(interrupt: Any) -> dict[str, Any]:
    data = jsonable(interrupt)
    return {k: v for k, v in data.items() if k in ("value", "id") or v is not None}


def snapshot_object(snapshot) -> dict[str, Any]:
    """A LangGraph ``StateSnapshot`` as LangGraph Platform's ``ThreadState``."""
    tasks = []
    for task in snapshot.tasks:
        state = task.state
        tasks.append(
            {
                "id": task.id,
                "name": task.name,
                "path": jsonable(task.path),
                "error": repr(task.error) if task.error else None,
                "interrupts": [interrupt_object(i) for i in task.interrupts],
                "checkpoint": checkpoint_object(state) if isinstance(state, dict) else None,
                "state": snapshot_object(state) if state is not None and not isinstance(state, dict) else None,
                "result": jsonable(task.result) if task.result is not None else None,
            }
        )
    return {
        "values": jsonable(snapshot.values),
        "next": list(snapshot.next),
        "tasks": tasks,
        "checkpoint": checkpoint_object(snapshot.config),
        "metadata": jsonable(snapshot.metadata),
        "created_at": snapshot.created_at,
        "parent_checkpoint": checkpoint_object(snapshot.parent_config),
        "interrupts": [interrupt_object(i) for i in snapshot.interrupts],
    }


def empty_state() -> dict[str, Any]:
    return {
        "values": {},
        "next": [],
        "tasks": [],
        "checkpoint": None,
        "metadata": None,
        "created_at": None,
        "parent_checkpoint": None,
        "interrupts": [],
    }
