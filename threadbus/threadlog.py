"""The thread log: the one module that talks to JetStream about threads.

Every thread is an append-only sequence of events in the ``TB_THREADS`` stream (subject layout
in :mod:`contracts.subjects`). Four verbs, with exact semantics:

``read(filter, after=seq, through=seq, until=seq)``
    Every stored message on ``filter`` with a stream sequence greater than ``after`` (and at
    most ``until``), oldest first, fetched with batched direct gets (no consumer is created).
    The broker starts looking at ``after``, so a read from a known sequence costs what comes
    after it, not the stream's whole history. A snapshot: messages
    appended while it runs may or may not be included. On a replicated stream any replica
    answers a direct get, and a follower may not have applied the newest appends yet; a caller
    that knows the log holds sequence ``through`` on ``filter`` (it was delivered that event)
    gets a read that includes it, asked again until a replica has caught up.

``append(subject, payload, msg_id=..., expect=seq, expect_filter=...)``
    Stores one message and returns its stream sequence. ``msg_id`` is deterministic, so a retry
    is deduplicated by the server. With ``expect``, the append only lands if the last stored
    message on ``expect_filter`` has exactly that sequence (0: there is none); otherwise
    :class:`Conflict` is raised and nothing is stored. A publish whose acknowledgement was lost
    is retried with the same id; if the retry then meets ``wrong last sequence``, the last
    message on the filter is read and, when it carries our id, the first attempt is taken as
    the one that landed.

``follow(filter, after=seq)``
    An async iterator over the messages stored on ``filter`` after ``after``: first those
    already stored, then new ones as they are stored, each once, in stream order. Only stored
    messages: a publish the stream refused is never seen.

``compact(thread, run, below=seq)``
    Removes every message of the run with a sequence below ``below`` (the run's tombstone),
    which drops its control events, checkpoints and writes in one purge. Idempotent.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js.api import ConsumerConfig, DeliverPolicy

import contracts
from contracts import subjects
from threadbus import broker

WRONG_LAST_SEQUENCE = 10071
LAST_SEQUENCE_IN_FLIGHT = 10164  # "wrong last sequence" from a clustered stream, without a sequence
_IN_FLIGHT_TRIES = 12  # about 1.5 s of asking again
_CATCH_UP_TRIES = 9  # about 5 s for a lagging replica
_BATCH = 256


class Conflict(Exception):
    """An expected-sequence check refused the append: the log moved on since the caller read it."""

    def __init__(self, last_seq: int | None):
        super().__init__(f"log moved on (last sequence {last_seq})")
        self.last_seq = last_seq


@dataclass(frozen=True, slots=True)
class Entry:
    seq: int
    subject: str
    data: bytes
    msg_id: str | None
    time: datetime | None = None

    def event(self) -> contracts.events.AnyEvent:
        return contracts.decode(self.data)


def _entry_from_direct(msg) -> Entry:
    h = msg.headers or {}
    stamp = h.get("Nats-Time-Stamp")
    return Entry(
        seq=int(h["Nats-Sequence"]),
        subject=h["Nats-Subject"],
        data=msg.data,
        msg_id=h.get("Nats-Msg-Id"),
        time=datetime.fromisoformat(stamp.replace("Z", "+00:00")) if stamp else None,
    )


class ThreadLog:
    def __init__(self, nc: NATS, stream: str = subjects.THREAD_STREAM, timeout: float = 5.0, attempts: int = 4):
        self.nc = nc
        self.js = nc.jetstream(timeout=timeout)
        self.stream = stream
        self.timeout = timeout
        self.attempts = attempts

    # -- read ---------------------------------------------------------------------------------
    async def read(self, filter_subject: str, after: int = 0, through: int = 0, until: int | None = None) -> list[Entry]:
        for attempt in range(_CATCH_UP_TRIES):
            entries = await self._read(filter_subject, after, until)
            if not through or (entries and entries[-1].seq >= through):
                return entries
            await asyncio.sleep(0.01 * 2**attempt)
        # A replica that stays behind for this long is as good as no answer.
        raise nats.errors.TimeoutError

    async def _read(self, filter_subject: str, after: int, until: int | None) -> list[Entry]:
        out: list[Entry] = []
        start = after + 1
        while until is None or start <= until:
            # A bounded read asks for no more than its range can hold.
            size = _BATCH if until is None else min(_BATCH, until - start + 1)
            batch, pending = await self._direct_batch(filter_subject, start, size)
            out.extend(e for e in batch if until is None or e.seq <= until)
            if not batch or not pending:
                break
            start = batch[-1].seq + 1
        return out

    async def _direct_batch(self, filter_subject: str, start: int, size: int = _BATCH) -> tuple[list[Entry], int]:
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox)
        try:
            req = {"seq": start, "next_by_subj": filter_subject, "batch": size}
            await self.nc.publish(f"$JS.API.DIRECT.GET.{self.stream}", json.dumps(req).encode(), reply=inbox)
            entries: list[Entry] = []
            while True:
                msg = await sub.next_msg(timeout=self.timeout)
                status = msg.headers.get("Status") if msg.headers else None
                if status == "404":
                    return entries, 0
                if status == "204":
                    return entries, int(msg.headers.get("Nats-Num-Pending", "0"))
                if status:
                    raise nats.js.errors.APIError.from_msg(msg)
                entries.append(_entry_from_direct(msg))
        finally:
            await sub.unsubscribe()

    async def exists(self, seq: int) -> bool:
        """Whether the stream still holds ``seq`` (not purged), asked of the stream's leader
        rather than of a replica that may lag."""
        try:
            await self.js.get_msg(self.stream, seq)
        except nats.js.errors.NotFoundError:
            return False
        return True

    async def at(self, seq: int) -> Entry | None:
        """The message stored at ``seq``, or None when there is none (purged), asked of the
        stream's leader."""
        try:
            msg = await self.js.get_msg(self.stream, seq)
        except nats.js.errors.NotFoundError:
            return None
        h = msg.headers or {}
        return Entry(seq=msg.seq, subject=msg.subject, data=msg.data or b"", msg_id=h.get("Nats-Msg-Id"), time=msg.time)

    async def next_seq(self, filter_subject: str, after: int) -> int | None:
        """The sequence of the first stored message on ``filter_subject`` after ``after``, or None."""
        try:
            msg = await self.js.get_msg(self.stream, seq=after + 1, subject=filter_subject, direct=True, next=True)
        except nats.js.errors.NotFoundError:
            return None
        return msg.seq

    async def last_seq(self) -> int:
        """The sequence of the newest message in the stream."""
        return (await self.js.stream_info(self.stream)).state.last_seq

    async def last(self, filter_subject: str) -> Entry | None:
        """The newest stored message on ``filter_subject`` (wildcards allowed), or None."""
        try:
            msg = await self.js.get_last_msg(self.stream, filter_subject, direct=True)
        except nats.js.errors.NotFoundError:
            return None
        h = msg.headers or {}
        return Entry(seq=msg.seq, subject=msg.subject, data=msg.data or b"", msg_id=h.get("Nats-Msg-Id"), time=msg.time)

    # -- append -------------------------------------------------------------------------------
    async def append(
        self,
        subject: str,
        payload: bytes,
        *,
        msg_id: str,
        expect: int | None = None,
        expect_filter: str | None = None,
    ) -> int:
        headers = {"Nats-Msg-Id": msg_id}
        if expect is not None:
            headers["Nats-Expected-Last-Subject-Sequence"] = str(expect)
            if expect_filter is not None:
                headers["Nats-Expected-Last-Subject-Sequence-Subject"] = expect_filter
        attempt = in_flight = 0
        while True:
            try:
                ack = await self.js.publish(subject, payload, headers=headers, stream=self.stream)
                return ack.seq
            except nats.js.errors.APIError as err:
                if err.err_code == LAST_SEQUENCE_IN_FLIGHT and in_flight < _IN_FLIGHT_TRIES:
                    # A clustered stream cannot check the expectation while an earlier append
                    # on the same subjects is still being replicated: the answer is "not yet",
                    # not "no". Nothing was stored and the expectation is unchanged: ask again.
                    await asyncio.sleep(min(0.005 * 2**in_flight, 0.2))
                    in_flight += 1
                    continue
                if err.err_code not in (WRONG_LAST_SEQUENCE, LAST_SEQUENCE_IN_FLIGHT):
                    raise
                if attempt > 0:
                    # Our earlier attempt may have landed before its ack was lost.
                    newest = await self.last(expect_filter or subject)
                    if newest is not None and newest.msg_id == msg_id:
                        return newest.seq
                raise Conflict(_last_seq_from(err)) from None
            except (nats.errors.TimeoutError, nats.js.errors.NoStreamResponseError, nats.errors.ConnectionClosedError):
                attempt += 1
                if attempt == self.attempts:
                    raise
                await asyncio.sleep(0.05 * 2 ** (attempt - 1))
    async def append_event(self, event: contracts.Event, *, expect: int | None = None, scope: str = "thread") -> int:
        """Append a control event on its subject. ``scope`` names what ``expect`` guards:
        ``"thread"`` (all of the thread's control events) or ``"run"`` (the run's)."""
        run_id = getattr(event, "run_id", None)
        name = type(event).__name__
        subject = subjects.control_event(event.thread_id, run_id, name)
        expect_filter = None
        if expect is not None:
            expect_filter = (
                subjects.thread_control(event.thread_id) if scope == "thread" else subjects.run_control(event.thread_id, run_id)
            )
        return await self.append(
            subject, contracts.encode(event), msg_id=event_msg_id(event), expect=expect, expect_filter=expect_filter
        )

    # -- follow -------------------------------------------------------------------------------
    @asynccontextmanager
    async def follow(self, filter_subject: str, after: int = 0) -> AsyncIterator[AsyncIterator[Entry]]:
        """An ordered consumer: what is stored after ``after``, then what is stored from now on.

        Not a plain subscription: a subscriber also receives publishes the stream refused (a
        decision that lost its expected-sequence check), which never happened as far as the log
        is concerned. A consumer delivers only what the stream stored, in stream order.
        """
        queue: asyncio.Queue = asyncio.Queue()

        async def on_msg(msg):
            queue.put_nowait(msg)

        policy = (
            ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
            if after == 0
            else ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after + 1)
        )
        sub = await self.js.subscribe(filter_subject, stream=self.stream, ordered_consumer=True, cb=on_msg, config=policy)
        try:

            async def iterate() -> AsyncIterator[Entry]:
                while True:
                    msg = await queue.get()
                    meta = msg.metadata
                    yield Entry(
                        seq=meta.sequence.stream,
                        subject=msg.subject,
                        data=msg.data,
                        msg_id=(msg.headers or {}).get("Nats-Msg-Id"),
                        time=meta.timestamp,
                    )

            yield iterate()
        finally:
            await broker.end_ordered(self.js, sub, self.stream)

    # -- compact ------------------------------------------------------------------------------
    async def compact(self, thread_id: str, run_id: str, below: int) -> None:
        await self.js.purge_stream(self.stream, subject=subjects.run_all(thread_id, run_id), seq=below)

    async def delete_thread(self, thread_id: str) -> None:
        """Leaves only a ``ThreadDeleted`` tombstone, so that the orchestrator forgets the thread
        and any executor still running one of its runs is refused at its next append."""
        seq = await self.append_event(contracts.ThreadDeleted(thread_id=thread_id))
        await self.js.purge_stream(self.stream, subject=subjects.thread_all(thread_id), seq=seq)
        await self.js.purge_stream(subjects.THREAD_EVENTS_STREAM, subject=subjects.thread_events(thread_id))

    async def purge(self, filter_subject: str) -> None:
        await self.js.purge_stream(self.stream, subject=filter_subject)


def event_msg_id(event: contracts.Event) -> str:
    """Deterministic message id: a retried or replayed append of the same decision is a duplicate."""
    run_id = getattr(event, "run_id", None)
    token = subjects.EVENT_TOKENS[type(event).__name__]
    if run_id is not None:
        return f"{token}:{event.thread_id}:{run_id}"
    # Thread updates can repeat; their identity is their content and time.
    return f"{token}:{event.thread_id}:{event.at.isoformat()}"


def _last_seq_from(err: nats.js.errors.APIError) -> int | None:
    desc = err.description or ""
    try:
        return int(desc.rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return None
