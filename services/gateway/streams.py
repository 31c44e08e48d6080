"""Server-sent events from a run's stream log.

A stream relays the run's ``StreamChunk`` messages from an ordered consumer, in stream order,
while it watches the run's control events. Once the run has ended it drains what remains of the
stream log (the executor stores every chunk before it appends the outcome), sends ``error`` if
the run failed, then ``end``. With ``stream_resumable`` every event carries its stream sequence
as ``id:``, so ``Last-Event-ID`` resumes after it on any gateway.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import msgspec
import nats.js.errors
from nats.js.api import ConsumerConfig, DeliverPolicy

import contracts
from contracts import subjects
from services.gateway import views
from threadbus import logs
from threadbus.jsonable import dumps

log = logs.get("threadbus.gateway.streams")

_chunk = msgspec.json.Decoder(contracts.StreamChunk)


def frame(event: str, data: Any, event_id: int | None = None) -> bytes:
    head = f"event: {event}\n".encode()
    tail = f"id: {event_id}\n\n".encode() if event_id is not None else b"\n"
    return head + b"data: " + dumps(data) + b"\n" + tail


def wanted(event: str, modes: set[str] | None) -> bool:
    if not modes:
        return True
    base = event.split("|", 1)[0]
    if base.startswith("messages"):
        return any(m.startswith("messages") for m in modes)
    return base in modes


@dataclass
class StreamOptions:
    modes: set[str] | None = None
    after_seq: int = 0  # relay what came after this stream sequence
    replay: bool = True  # False: the client asked only for events from now on (a join without Last-Event-ID)
    with_ids: bool = False
    first: tuple[str, Any] | None = None  # e.g. the `metadata` event of a new run


async def open_chunks(js, thread_id: str, run_id: str, after_seq: int, stack: AsyncExitStack) -> asyncio.Queue:
    """An ordered consumer on the run's stream log, starting after ``after_seq``."""
    queue: asyncio.Queue = asyncio.Queue()

    async def on_msg(msg):
        queue.put_nowait(msg)

    subject = subjects.run_stream(thread_id, run_id)
    if after_seq == 0:
        config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
    else:
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after_seq + 1)
    sub = await js.subscribe(subject, stream=subjects.RUN_STREAM, ordered_consumer=True, cb=on_msg, config=config)
    stack.push_async_callback(sub.unsubscribe)
    return queue


async def last_seq(js, thread_id: str, run_id: str) -> int:
    try:
        msg = await js.get_last_msg(subjects.RUN_STREAM, subjects.run_stream(thread_id, run_id), direct=True)
    except nats.js.errors.NotFoundError:
        return 0
    return msg.seq


async def relay(
    js,
    thread_id: str,
    run_id: str,
    chunks: asyncio.Queue,
    control: AsyncIterator[contracts.Event],
    options: StreamOptions,
    heartbeat_s: float,
    final_values,
) -> AsyncIterator[bytes]:
    """The SSE body. ``final_values`` gives the thread's values, sent when there is nothing to replay."""
    if options.first:
        yield frame(*options.first)
    outcome_task = asyncio.ensure_future(views.outcome(control))
    next_chunk = asyncio.ensure_future(chunks.get())
    relayed = options.after_seq
    end_seq: int | None = None
    sent_any = False
    try:
        while end_seq is None or relayed < end_seq:
            waiting = {next_chunk} if outcome_task.done() else {next_chunk, outcome_task}
            done, _ = await asyncio.wait(waiting, timeout=heartbeat_s, return_when=asyncio.FIRST_COMPLETED)
            if not done:
                yield b": heartbeat\n\n"
                continue
            if outcome_task in done and end_seq is None:
                end_seq = await last_seq(js, thread_id, run_id)
            if next_chunk in done:
                msg = next_chunk.result()
                relayed = msg.metadata.sequence.stream
                next_chunk = asyncio.ensure_future(chunks.get())
                chunk = _chunk.decode(msg.data)
                if wanted(chunk.event, options.modes):
                    sent_any = True
                    yield frame(chunk.event, chunk.data, relayed if options.with_ids else None)
        outcome = outcome_task.result()
        if isinstance(outcome, contracts.RunFailed):
            yield frame("error", {"error": outcome.error, "message": outcome.message})
        elif not sent_any and (not options.replay or not end_seq) and wanted("values", options.modes):
            # Joined after the run's events were gone (it ended before, or its log expired): its result.
            yield frame("values", await final_values())
        yield frame("end", None)
    finally:
        outcome_task.cancel()
        next_chunk.cancel()
