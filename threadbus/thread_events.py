"""Publishing the v3 thread protocol's events (``tb.events.<thread>``, stream ``TB_THREADEVENTS``).

One writer per run. Publishes are pipelined (no round trip per token) and coalesced: events
produced within ``LINGER_S`` of each other go to the broker in one write, not one socket send each
(a graph yields to the loop between tokens, so nats-py would otherwise flush every event alone;
measured: half the executor's time was socket sends). :meth:`flush` sends what is buffered at
once, then waits for every acknowledgement. The graph's events are flushed before anything that
tells a reader the run moved on (an ``input.requested``, the run's end); the end itself is
flushed while the run's outcome is appended to the thread log, handed to the connection first.
A reader gives each event its stream sequence as ``seq`` and ``event_id``: the same on every
connection and every gateway.

Message ids make a retried publish a duplicate: a run's root lifecycle events are keyed by what
they say (``running`` is published once per run however often it is delivered), the events of the
graph by the delivery attempt and their index in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import msgspec

import contracts
from contracts import subjects
from threadbus import broker
from threadbus.jsonable import dumps

CANCELLED = "Run cancelled"
_PRUNE_AT = 1024
# How long an event may wait for the ones after it; far below what a reader notices.
LINGER_S = 0.003


def encode(method: str, data: Any, namespace: list[str] | tuple[str, ...] = (), timestamp: int | None = None) -> bytes:
    """An event as stored: its data serialized once, embedded as it is."""
    params = contracts.ThreadStreamParams(
        namespace=list(namespace), timestamp=timestamp or int(time.time() * 1000), data=msgspec.Raw(dumps(data))
    )
    return contracts.encode(contracts.ThreadStreamEvent(method=method, params=params))


class ThreadEventWriter:
    def __init__(self, js, thread_id: str, run_id: str, attempt: int = 1):
        self.js = js
        self.subject = subjects.thread_events(thread_id)
        self.run_id = run_id
        self.attempt = attempt
        self.count = 0
        self.buffer: list[tuple[bytes, str]] = []
        self.sending = asyncio.Lock()
        self.draining: asyncio.Task | None = None
        self.failure: Exception | None = None
        self.pending: list[asyncio.Future] = []

    async def publish(self, method: str, data: Any, namespace: list[str] = (), timestamp: int | None = None) -> None:
        self.count += 1
        await self._publish(encode(method, data, namespace, timestamp), f"v3:{self.run_id}:{self.attempt}:{self.count}")

    async def lifecycle(self, event: str, graph_name: str | None, error: str | None = None) -> None:
        """The run's root lifecycle event (``running``, ``completed``, ``failed``, ``interrupted``)."""
        data: dict[str, Any] = {"event": event}
        if graph_name is not None:
            data["graph_name"] = graph_name
        if error is not None:
            data["error"] = error
        await self._publish(encode("lifecycle", data), f"v3:{self.run_id}:lc:{event}")

    async def input_requested(self, interrupt_id: str, value: Any, namespace: list[str] = ()) -> None:
        # The Python SDK reads `value`, the JS SDK `payload`.
        data = {"interrupt_id": interrupt_id, "payload": value, "value": value}
        await self._publish(encode("input.requested", data, namespace), f"v3:{self.run_id}:input:{interrupt_id}")

    async def _publish(self, payload: bytes, msg_id: str) -> None:
        self.buffer.append((payload, msg_id))
        if self.draining is None:
            self.draining = asyncio.create_task(self._drain_soon())

    async def _drain_soon(self) -> None:
        await asyncio.sleep(LINGER_S)
        self.draining = None
        try:
            await self._send()
        except Exception as err:  # raised by the next flush: the run's end must not pass it over
            self.failure = err

    async def _send(self) -> None:
        async with self.sending:  # one batch at a time, so the stream keeps the order of publishing
            batch, self.buffer = self.buffer, []
            for payload, msg_id in batch:
                future = await self.js.publish_async(
                    self.subject, payload, stream=subjects.THREAD_EVENTS_STREAM, headers={"Nats-Msg-Id": msg_id}
                )
                self.pending.append(future)
        if len(self.pending) >= _PRUNE_AT:
            # A long run holds only what is still unacknowledged; a refused publish fails it here.
            for done in [f for f in self.pending if f.done()]:
                done.result()
            self.pending = [f for f in self.pending if not f.done()]

    async def flush(self) -> None:
        """Sends what is buffered, before the first await, and waits until the broker has stored
        all of it."""
        draining, self.draining = self.draining, None
        if draining is not None:
            # Still waiting out its linger (it clears `draining` before it sends): sent here instead.
            draining.cancel()
        await self._send()
        if draining is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await draining
        if self.failure is not None:
            failure, self.failure = self.failure, None
            raise failure
        pending, self.pending = self.pending, []
        await broker.acknowledged(pending)


async def publish_cancelled(js, thread_id: str, run_id: str) -> None:
    """A run cancelled before it started still ends on the thread stream, so that clients
    waiting for it (the SDK's iterators) end too."""
    writer = ThreadEventWriter(js, thread_id, run_id)
    await writer.lifecycle("failed", None, error=CANCELLED)
    await writer.flush()
