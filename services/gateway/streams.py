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
import orjson
from fastapi import HTTPException
from nats.js.api import ConsumerConfig, DeliverPolicy

import contracts
from contracts import subjects
from services.gateway import views
from threadbus import broker, logs, metrics
from threadbus.jsonable import dumps

log = logs.get("threadbus.gateway.streams")

class _StoredChunk(msgspec.Struct):
    """A ``StreamChunk`` as relayed: its data stays the JSON the executor wrote, never re-parsed."""

    event: str
    data: msgspec.Raw = msgspec.Raw(b"null")


_chunk = msgspec.json.Decoder(_StoredChunk)


def frame(event: str, data: Any, event_id: int | None = None) -> bytes:
    return raw_frame(event, dumps(data), event_id)


def raw_frame(event: str, data: bytes, event_id: int | None = None) -> bytes:
    head = f"event: {event}\n".encode()
    tail = f"id: {event_id}\n\n".encode() if event_id is not None else b"\n"
    return b"".join((head, b"data: ", data, b"\n", tail))


def parse_last_event_id(last_event_id: str | None) -> int | None:
    """The stream sequence to resume after: None without the header, 0 for '-' (from the start)."""
    if last_event_id is None:
        return None
    if last_event_id in ("-", "0", ""):
        return 0
    try:
        return int(last_event_id)
    except ValueError:
        raise HTTPException(422, f"Last-Event-ID must be a stream sequence or '-', got {last_event_id!r}") from None


async def resume_point(js, thread_id: str, run_id: str | None, last_event_id: str | None) -> tuple[int, bool]:
    """Where a join starts (the stream sequence to relay after) and whether the client asked for
    a replay. "From now on" is after the newest event stored: subscribing from that sequence,
    rather than with deliver-new, leaves no gap in which an event is neither replayed nor relayed."""
    after_seq = parse_last_event_id(last_event_id)
    if after_seq is not None:
        return after_seq, True
    return await last_seq(js, thread_id, run_id), False


def parse_modes(stream_mode: list[str] | None) -> set[str] | None:
    """`stream_mode` as the SDK sends it: absent, empty, a value, repeated values or a JSON array."""
    modes: set[str] = set()
    for value in stream_mode or []:
        if value.startswith("["):
            modes.update(orjson.loads(value))
        elif value:
            modes.add(value)
    return modes or None


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


async def open_chunks(js, thread_id: str, run_id: str | None, after_seq: int, stack: AsyncExitStack) -> asyncio.Queue:
    """An ordered consumer on the run's stream log (every run's when ``run_id`` is None), after ``after_seq``."""
    queue: asyncio.Queue = asyncio.Queue()

    async def on_msg(msg):
        queue.put_nowait(msg)

    subject = subjects.run_stream(thread_id, run_id)
    if after_seq == 0:
        config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
    else:
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after_seq + 1)
    sub = await js.subscribe(subject, stream=subjects.RUN_STREAM, ordered_consumer=True, cb=on_msg, config=config)
    stack.push_async_callback(broker.end_ordered, js, sub, subjects.RUN_STREAM)
    return queue


_closing: set[asyncio.Task] = set()


async def release(stack: AsyncExitStack, first: Any = None) -> None:
    """Closes what a stream response opened (its consumers), after awaiting ``first`` if given,
    in a task of its own. When a client goes away the response task is being cancelled, and anyio
    cancels every await it makes from then on: done in that task, a cancel asked for on
    disconnect would never be sent and the consumers would stay on the server."""

    async def close() -> None:
        try:
            if first is not None:
                await first
        finally:
            await stack.aclose()

    task = asyncio.create_task(close())
    _closing.add(task)
    task.add_done_callback(_closing.discard)
    await asyncio.shield(task)


async def last_seq(js, thread_id: str, run_id: str | None) -> int:
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
                # Everything already delivered goes out in one write: a token stream is many small events.
                pieces = []
                now = contracts.now()
                for msg in _with_waiting(next_chunk.result(), chunks):
                    relayed = msg.metadata.sequence.stream
                    metrics.STREAM_LAG_SECONDS.observe(max(0.0, (now - msg.metadata.timestamp).total_seconds()))
                    chunk = _chunk.decode(msg.data)
                    if wanted(chunk.event, options.modes):
                        pieces.append(raw_frame(chunk.event, chunk.data, relayed if options.with_ids else None))
                next_chunk = asyncio.ensure_future(chunks.get())
                if pieces:
                    sent_any = True
                    yield b"".join(pieces)
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


def _with_waiting(first, queue: asyncio.Queue):
    yield first
    while not queue.empty():
        yield queue.get_nowait()


THREAD_MODES = {"run_modes", "lifecycle", "state_update"}


async def thread_relay(
    js,
    thread_id: str,
    chunks: asyncio.Queue,
    control: AsyncIterator,
    *,
    after_seq: int,
    backlog_until: int,
    modes: set[str],
    heartbeat_s: float,
    thread_values,
) -> AsyncIterator[bytes]:
    """The SSE body of ``GET /threads/{id}/stream``: every run of the thread, for as long as the
    client listens.

    ``control`` follows the thread's control events (from the start for a replay; the ones up to
    ``backlog_until`` were stored before the client connected). ``run_modes`` relays each run's events (with their stream sequence as ``id``) and a
    ``metadata {"status": "run_done"}`` event once the run has ended and its last event was
    relayed; ``lifecycle`` only ``run_started``/``run_done``; ``state_update`` the thread's values
    after each run. Runs end in the thread log and their events live in the stream log: a run is
    done once the relay has passed the stream sequence its last event had when its outcome was
    read (the executor stores every event before it appends the outcome).
    """
    relayed = after_seq
    current: str | None = None  # the run whose events were relayed last
    waiting: dict[str, int] = {}  # ended run -> stream sequence its `run_done` waits for
    announced: set[str] = set()
    next_chunk = asyncio.ensure_future(chunks.get())
    next_control = asyncio.ensure_future(anext(control))

    async def done(run_id: str) -> AsyncIterator[bytes]:
        waiting.pop(run_id, None)
        if run_id in announced:
            return
        announced.add(run_id)
        if modes & {"run_modes", "lifecycle"}:
            yield frame("metadata", {"status": "run_done", "run_id": run_id})
        if "state_update" in modes:
            yield frame("values", await thread_values())

    try:
        while True:
            finished, _ = await asyncio.wait(
                {next_chunk, next_control}, timeout=heartbeat_s, return_when=asyncio.FIRST_COMPLETED
            )
            if not finished:
                yield b": heartbeat\n\n"
                continue
            if next_chunk in finished:
                msg = next_chunk.result()
                next_chunk = asyncio.ensure_future(chunks.get())
                relayed = msg.metadata.sequence.stream
                run_id = subjects.run_of_stream(msg.subject)
                if current is not None and run_id != current:
                    # One run executes per thread at a time: the previous run ended before this began.
                    async for piece in done(current):
                        yield piece
                current = run_id
                if "run_modes" in modes:
                    chunk = _chunk.decode(msg.data)
                    yield raw_frame(chunk.event, chunk.data, relayed)
            if next_control in finished:
                entry = next_control.result()
                next_control = asyncio.ensure_future(anext(control))
                event = entry.event()
                run_id = getattr(event, "run_id", None)
                if isinstance(event, contracts.RunStarted) and "lifecycle" in modes:
                    yield frame("metadata", {"status": "run_started", "run_id": run_id})
                elif isinstance(event, contracts.TERMINAL_EVENTS) and run_id not in announced:
                    end = await last_seq(js, thread_id, run_id)
                    if entry.seq <= backlog_until and end <= after_seq:
                        announced.add(run_id)  # ended before the point the client resumes from
                    else:
                        waiting[run_id] = end
            for run_id, end in list(waiting.items()):
                if end <= relayed:
                    async for piece in done(run_id):
                        yield piece
    finally:
        next_chunk.cancel()
        next_control.cancel()
