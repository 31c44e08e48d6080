"""The gateway's one subscription to run decisions and outcomes, shared by every HTTP request.

Following a run with an ordered consumer per request costs a consumer created and deleted on the
broker each time, and the request's own events delivered to it. Instead each gateway holds one
ordered consumer, for its whole life, on the events a waiting request needs (decisions and
outcomes of every run; not ``RunStarted``, which every gateway would receive for every run and no
waiter needs: a cancel says whether it ends a pending run), and hands each event to the requests
that wait on its run. A consumer, not a plain subscription: a subscriber would also receive decisions the
stream refused (a stale orchestrator's), which never happened as far as the log is concerned.

A request registers before it reads: events of its run stored before it registered are read from
the log (once, on the run's literal subjects), events stored after are delivered by the watch,
and an event both delivered and read is yielded once (by stream sequence). A run whose request is
about to be appended has nothing stored yet and skips the read.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from nats.js.api import ConsumerConfig, DeliverPolicy

import contracts
from contracts import subjects
from threadbus import broker
from threadbus.threadlog import Entry, ThreadLog

# What requests wait for: a decision on the request, the cancel, the end.
WATCHED = ("RunAccepted", "RunRejected", "RunCancelled", *(t.__name__ for t in contracts.TERMINAL_EVENTS))


class RunWatch:
    def __init__(self, log: ThreadLog):
        self.log = log
        self.waiting: defaultdict[str, set[asyncio.Queue]] = defaultdict(set)  # run id -> its waiters
        self._sub = None

    async def start(self) -> None:
        config = ConsumerConfig(
            filter_subjects=[subjects.outcome_any(name) for name in WATCHED], deliver_policy=DeliverPolicy.NEW
        )
        self._sub = await self.log.js.subscribe(
            subjects.all_control(), stream=self.log.stream, ordered_consumer=True, cb=self._deliver, config=config
        )

    async def stop(self) -> None:
        if self._sub is not None:
            await broker.end_ordered(self.log.js, self._sub, self.log.stream)

    async def _deliver(self, msg) -> None:
        queues = self.waiting.get(subjects.run_of(msg.subject))
        if not queues:
            return
        meta = msg.metadata
        entry = Entry(seq=meta.sequence.stream, subject=msg.subject, data=msg.data, msg_id=None, time=meta.timestamp)
        for queue in queues:
            queue.put_nowait(entry)

    @asynccontextmanager
    async def events(self, thread_id: str, run_id: str, *, fresh: bool = False) -> AsyncIterator[RunEvents]:
        """The run's decisions and outcome, from its first: those stored so far, then those to
        come. ``fresh``: the run's request is not appended yet, so nothing is stored to read."""
        queue: asyncio.Queue[Entry] = asyncio.Queue()
        self.waiting[run_id].add(queue)
        try:
            yield RunEvents([] if fresh else await self.log.read(subjects.run_control(thread_id, run_id)), queue)
        finally:
            queues = self.waiting[run_id]
            queues.discard(queue)
            if not queues:
                del self.waiting[run_id]


class RunEvents:
    """One run's control events as an async iterator: ``stored``, those in the log when the
    request registered, then those the watch delivers after them."""

    def __init__(self, stored: list[Entry], queue: asyncio.Queue[Entry]):
        self.stored = stored
        self._events = self._iterate(queue)

    def __aiter__(self) -> RunEvents:
        return self

    def __anext__(self):
        return self._events.__anext__()

    @property
    def ended(self) -> bool:
        """Closed, as a cancelled wait for the next event closes it."""
        return self._events.ag_frame is None

    async def _iterate(self, queue: asyncio.Queue[Entry]) -> AsyncIterator[contracts.Event]:
        seen = 0
        for entry in self.stored:
            seen = entry.seq
            yield entry.event()
        while True:
            entry = await queue.get()
            if entry.seq > seen:
                seen = entry.seq
                yield entry.event()
