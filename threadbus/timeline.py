"""``threadbus events THREAD_ID``: a thread's log as a readable timeline (the audit trail).

Every control event of the thread, oldest first: when, the stream sequence, the event, the run
and what was decided or how it ended. Rolled-back runs show as their ``RunRolledBack``
tombstone (their other events were compacted away). ``--follow`` keeps printing as events are
appended; ``--json`` prints one JSON object per event instead, for other tools.
"""

from __future__ import annotations

import sys
from typing import TextIO

import msgspec

import contracts
from contracts import subjects
from threadbus import broker
from threadbus.settings import Settings
from threadbus.threadlog import Entry, ThreadLog


def describe(event: contracts.Event) -> str:
    match event:
        case contracts.RunRequested(multitask_strategy=strategy, graph_id=graph, kwargs=kwargs):
            what = "resume" if kwargs.command else "input"
            return f"strategy={strategy} graph={graph} {what}"
        case contracts.RunRejected(reason=reason):
            return f"rejected: {reason}"
        case contracts.RunCancelRequested(action=action) | contracts.RunCancelled(action=action):
            return f"action={action}"
        case contracts.RunSucceeded():
            return "outcome=success"
        case contracts.RunInterrupted():
            return "outcome=paused (human-in-the-loop)"
        case contracts.RunFailed(error=error, message=message):
            return f"outcome=error {error}: {message}"
        case contracts.RunStopped():
            return "outcome=stopped"
        case contracts.RunRolledBack():
            return "rolled back: its events and checkpoints were removed"
        case contracts.RunDeleted():
            return "deleted: no longer listed"
        case contracts.ThreadCreated(metadata=metadata) | contracts.ThreadUpdated(metadata=metadata):
            return f"metadata={metadata}"
    return ""


def line(entry: Entry, as_json: bool) -> str:
    event = entry.event()
    if as_json:
        record = {"seq": entry.seq, **msgspec.to_builtins(event)}
        return msgspec.json.encode(record).decode()
    run = getattr(event, "run_id", None) or "-"
    return f"{event.at.isoformat(timespec='milliseconds')}  {'#' + str(entry.seq):>8}  {type(event).__name__:<18}  run={run}  {describe(event)}".rstrip()


async def run_cli(settings: Settings, thread_id: str, follow: bool, as_json: bool, out: TextIO = sys.stdout) -> int:
    try:
        return await _print(settings, thread_id, follow, as_json, out)
    except BrokenPipeError:  # `threadbus events T | head`
        return 0


async def _print(settings: Settings, thread_id: str, follow: bool, as_json: bool, out: TextIO) -> int:
    nc = await broker.connect(settings, "events")
    try:
        log = ThreadLog(nc)
        control = subjects.thread_control(thread_id)
        if not follow:
            entries = await log.read(control)
            if not entries:
                print(f"thread {thread_id} has no events", file=sys.stderr)
                return 1
            for entry in entries:
                print(line(entry, as_json), file=out, flush=True)
            return 0
        async with log.follow(control) as entries:
            async for entry in entries:
                print(line(entry, as_json), file=out, flush=True)
    finally:
        await nc.close()
    return 0
