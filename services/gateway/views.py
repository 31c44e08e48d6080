"""Read views derived from the thread log on request.

Run and thread statuses are the fold of the thread's control events with the orchestrator's own
``evolve``, so a client reads its own writes (a ``GET`` right after a ``join`` sees ``success``)
and there is no second copy of the truth to drift.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec

import contracts
from contracts import subjects
from threadbus.thread_state import ThreadState, evolve
from threadbus.jsonable import jsonable
from threadbus.threadlog import ThreadLog


@dataclass
class RunRecord:
    requested: contracts.RunRequested
    updated_at: datetime
    outcome: contracts.Event | None = None


@dataclass
class ThreadRuns:
    state: ThreadState
    runs: dict[str, RunRecord] = field(default_factory=dict)
    last_outcome: contracts.Event | None = None

    def status_of(self, run_id: str) -> str | None:
        return self.state.statuses.get(run_id)

    def run_objects(self) -> list[dict[str, Any]]:
        return [run_object(rec, self.state.statuses[rid]) for rid, rec in self.runs.items() if rid in self.state.statuses]


async def thread_runs(log: ThreadLog, thread_id: str) -> ThreadRuns:
    entries = await log.read(subjects.thread_control(thread_id))
    view = ThreadRuns(state=ThreadState(thread_id=thread_id))
    for entry in entries:
        try:
            event = entry.event()
        except msgspec.DecodeError:
            continue
        view.state = evolve(view.state, event, entry.seq)
        match event:
            case contracts.RunRequested() if event.run_id in view.runs:
                pass  # the same request published again: decided once (evolve), shown once
            case contracts.RunRequested():
                view.runs[event.run_id] = RunRecord(requested=event, updated_at=event.at)
            case contracts.ThreadDeleted():
                view.runs.clear()
            case _ if (run_id := getattr(event, "run_id", None)) in view.runs:
                view.runs[run_id].updated_at = event.at
                if isinstance(event, contracts.TERMINAL_EVENTS):
                    view.runs[run_id].outcome = event
                    view.last_outcome = event
    return view


async def outcome(events: AsyncIterator[contracts.Event]) -> contracts.Event:
    """The event that ends a run, from the run's control events (read from the beginning)."""
    started = False
    async for event in events:
        if isinstance(event, (*contracts.TERMINAL_EVENTS, contracts.RunRejected)):  # refused: nothing more comes
            return event
        if isinstance(event, contracts.RunStarted):
            started = True
        elif isinstance(event, contracts.RunCancelled) and not started and event.action == "interrupt":
            return event  # a pending run ends with its cancel; a running one with RunStopped
    raise AssertionError("control events ended")


def run_object(record: RunRecord, status: str) -> dict[str, Any]:
    req = record.requested
    return {
        "run_id": req.run_id,
        "thread_id": req.thread_id,
        "assistant_id": req.assistant_id,
        "created_at": req.at.isoformat(),
        "updated_at": record.updated_at.isoformat(),
        "status": status,
        "metadata": req.metadata,
        "multitask_strategy": req.multitask_strategy,
        "kwargs": msgspec.to_builtins(req.kwargs),
    }


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
