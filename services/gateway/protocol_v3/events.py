"""Reading a thread's v3 event stream (``tb.events.<thread>`` in ``TB_THREADEVENTS``).

An event's ``seq`` and ``event_id`` are its stream sequence: strictly increasing within a thread
across runs (with gaps, the sequence being shared by every thread), the same on every connection
and every gateway, so a client that reconnects anywhere with ``since`` gets every later event
exactly once. A stream follows the thread, not a run: it is an ordered consumer from ``since``
(from the first retained event without it) that stays open across interrupts, run ends and later
runs, until the client goes away; on a thread that has no event yet it simply waits.

Retention is the stream's age limit (``THREADBUS_STREAM_MAX_AGE_S``), so what is kept of a thread
is always a suffix of it: a cursor is served when the thread's first retained event is at or
before it, or when nothing after it has expired; otherwise events after it may be lost and the
reader gets ``resume_gap`` with the first seq still available.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import msgspec
import nats.js.errors
from nats.js.api import ConsumerConfig, DeliverPolicy

from contracts import subjects
from threadbus import broker


class _HeadParams(msgspec.Struct):
    namespace: list[str] = []
    data: msgspec.Raw = msgspec.Raw(b"null")


class _Head(msgspec.Struct):
    """What filtering needs of a stored event; the rest is relayed as it was stored."""

    method: str
    params: _HeadParams


_head = msgspec.json.Decoder(_Head)


@dataclass(frozen=True, slots=True)
class StoredEvent:
    seq: int
    method: str
    namespace: list[str]
    custom_name: Any
    payload: bytes  # the stored JSON: {"method": ..., "params": {...}}

    @classmethod
    def of(cls, seq: int, payload: bytes) -> StoredEvent:
        head = _head.decode(payload)
        name = None
        if head.method == "custom":
            data = msgspec.json.decode(head.params.data)
            name = data.get("name") if isinstance(data, dict) else None
        return cls(seq, head.method, head.params.namespace, name, payload)

    def wire(self) -> bytes:
        """The event as clients get it: the stored JSON with ``type``, ``event_id`` and ``seq`` first."""
        return b'{"type":"event","event_id":"%d","seq":%d,%s' % (self.seq, self.seq, self.payload[1:])

    def sse(self) -> bytes:
        return b"event: %s\ndata: %s\nid: %d\n\n" % (self.method.encode(), self.wire(), self.seq)


class ResumeGap(Exception):
    def __init__(self, since: int, min_available_seq: int):
        super().__init__(
            f"events after seq {since} are no longer retained; the first available is {min_available_seq}"
        )
        self.min_available_seq = min_available_seq


async def last_seq(js, thread_id: str) -> int:
    """The seq of the thread's newest event, 0 when it has none."""
    try:
        msg = await js.get_last_msg(subjects.THREAD_EVENTS_STREAM, subjects.thread_events(thread_id), direct=True)
    except nats.js.errors.NotFoundError:
        return 0
    return msg.seq


async def check_retained(js, thread_id: str, since: int) -> None:
    """Raises :class:`ResumeGap` when events of the thread after ``since`` may have expired."""
    if since <= 0:
        return
    info = await js.stream_info(subjects.THREAD_EVENTS_STREAM)
    if since + 1 >= info.state.first_seq:
        return  # nothing after the cursor has expired
    try:
        first = await js.get_msg(
            subjects.THREAD_EVENTS_STREAM, seq=1, subject=subjects.thread_events(thread_id), direct=True, next=True
        )
    except nats.js.errors.NotFoundError:
        raise ResumeGap(since, info.state.last_seq + 1) from None
    if first.seq > since:
        raise ResumeGap(since, first.seq)


async def follow(js, thread_id: str, since: int | None, stack: AsyncExitStack) -> asyncio.Queue[StoredEvent]:
    """A queue of the thread's events after ``since`` (all retained ones without it), then live;
    the consumer is removed when ``stack`` closes."""
    queue: asyncio.Queue[StoredEvent] = asyncio.Queue()

    async def on_msg(msg):
        queue.put_nowait(StoredEvent.of(msg.metadata.sequence.stream, msg.data))

    if not since:
        config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
    else:
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=since + 1)
    sub = await js.subscribe(
        subjects.thread_events(thread_id), stream=subjects.THREAD_EVENTS_STREAM, ordered_consumer=True, cb=on_msg, config=config
    )
    stack.push_async_callback(broker.end_ordered, js, sub, subjects.THREAD_EVENTS_STREAM)
    return queue


async def next_batch(queue: asyncio.Queue[StoredEvent], closing: asyncio.Event, timeout: float) -> list[StoredEvent] | None:
    """The events waiting (at least one), [] when none came within ``timeout``, None once ``closing`` is set."""
    if closing.is_set():
        return None
    if queue.empty():
        getting = asyncio.ensure_future(queue.get())
        stopping = asyncio.ensure_future(closing.wait())
        try:
            await asyncio.wait({getting, stopping}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not getting.done():
                getting.cancel()
        if closing.is_set() and not getting.done():
            return None
        if not getting.done() or getting.cancelled():
            return []
        return drain(queue, getting.result())
    return drain(queue, queue.get_nowait())


def drain(queue: asyncio.Queue[StoredEvent], first: StoredEvent) -> list[StoredEvent]:
    """``first`` and every event already waiting behind it, to be written in one piece."""
    batch = [first]
    while not queue.empty():
        batch.append(queue.get_nowait())
    return batch
