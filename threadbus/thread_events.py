"""Publishing the v3 thread protocol's events (``tb.events.<thread>``, stream ``TB_THREADEVENTS``).

One writer per run. Publishes are pipelined (no round trip per token); :meth:`flush` waits for
every acknowledgement, and is awaited before anything that tells a reader the run moved on (the
run's outcome in the thread log, an ``input.requested``), so a reader that sees that has every
event before it. A reader gives each event its stream sequence as ``seq`` and ``event_id``: the
same on every connection and every gateway.

Message ids make a retried publish a duplicate: a run's root lifecycle events are keyed by what
they say (``running`` is published once per run however often it is delivered), the events of the
graph by the delivery attempt and their index in it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
import nats.errors

import contracts
from contracts import subjects
from threadbus.jsonable import dumps

# Long enough for a reconnect to resend what was buffered and for the broker to acknowledge it.
FLUSH_TIMEOUT_S = 10.0
CANCELLED = "Run cancelled"


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
        future = await self.js.publish_async(
            self.subject, payload, stream=subjects.THREAD_EVENTS_STREAM, headers={"Nats-Msg-Id": msg_id}
        )
        self.pending.append(future)

    async def flush(self) -> None:
        pending, self.pending = self.pending, []
        if not pending:
            return
        try:
            await asyncio.wait_for(asyncio.gather(*pending), FLUSH_TIMEOUT_S)
        except TimeoutError:
            raise nats.errors.TimeoutError from None


async def publish_cancelled(js, thread_id: str, run_id: str) -> None:
    """A run cancelled before it started still ends on the thread stream, so that clients
    waiting for it (the SDK's iterators) end too."""
    writer = ThreadEventWriter(js, thread_id, run_id)
    await writer.lifecycle("failed", None, error=CANCELLED)
    await writer.flush()
