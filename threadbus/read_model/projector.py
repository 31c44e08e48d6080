"""The projector: applies the thread log to the read model.

It reads every thread's control events and checkpoint records in log order from the position
stored in ``projection_positions``, and applies each batch in one transaction that also moves the
position, so a batch is applied entirely or not at all, and never twice. The transaction starts by
moving the position from where this projector last left it (``advance_projection``): when another
projector moved it meanwhile (two of them during a hand-over between orchestrators), the batch
fails as a whole, and the projector reads the position and the rows again before it retries. So
while it is alone, which is nearly always, it keeps the rows of the threads it projects and reads
only those of threads it has not seen, and a batch costs one query: its statements sent together.

One projector for the whole log, not one per partition: its position is then one number, which
tells any reader exactly which events the read model holds (:mod:`threadbus.read_model.reads`).
Its work is a few statements per event in batches of hundreds; the database, not the projector,
is what a busier deployment needs more of.

The broker keeps nothing for it, and is asked nothing per event: the consumer is an ordered push
consumer (ephemeral, in memory, without acknowledgements) created from the stored position, so an
event costs its delivery alone, where a pull consumer's fetches cost a request and an end-of-batch
answer for every few events. What has arrived is taken as one batch; while events keep coming,
after a short wait (``projector_batch_wait_s``) that gathers more of them. Flow control is answered only
once the projector has taken what preceded it, so when the database is away the batch is kept and
tried again and the broker stops pushing soon after; a gap (a message lost on the way, a consumer
lost with its server, seen as missing heartbeats) makes the client recreate the consumer after the
last event it received.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import math

import msgspec
import nats.errors
import nats.js.errors
import psycopg
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from nats.aio.client import Client as NATS
from nats.js.api import ConsumerConfig, DeliverPolicy
from psycopg.types.json import Jsonb

import contracts
from contracts import subjects
from threadbus import broker, logs
from threadbus.jsonable import jsonable
from threadbus.read_model import projection, rows
from threadbus.read_model.database import Database, DatabaseUnavailable
from threadbus.threadlog import Entry

log = logs.get("threadbus.projector")

_BATCH = 512
_serde = JsonPlusSerializer()


PROJECTION = "thread_log"


def projected_subjects() -> list[str]:
    """What the read model is made of: control events and checkpoints (pending writes are the
    executor's business until they are folded into the next checkpoint)."""
    return [subjects.all_control(), subjects.checkpoints(None)]


class Projector:
    def __init__(self, nc: NATS, db: Database, *, batch_wait_s: float = 0.0, cached_threads: int = 1024):
        self.nc = nc
        self.batch_wait_s = batch_wait_s
        self.js = nc.jetstream()
        self.db = db
        self._conn: psycopg.AsyncConnection | None = None
        # Where the stored position was when this projector last read or moved it (None: unknown),
        # and the thread rows as they were then: while no other projector moves the position,
        # the rows need not be read again.
        self.position: int | None = None
        self.threads = ThreadCache(cached_threads)

    async def run(self) -> None:
        """Projects until cancelled (or until the connection is closed)."""
        self.position = await self._retrying(self._position)
        log.info("projecting the thread log", position=self.position)
        try:
            while True:
                sub = await self._subscribe(self.position)
                try:
                    await self._consume(sub)
                    return
                except PositionRewound:
                    log.warning(
                        "read model holds less than this projector applied (commits lost, or the database restored);"
                        " projecting again from its position",
                        position=self.position,
                    )
                finally:
                    await broker.end_ordered(self.js, sub, subjects.THREAD_STREAM)
        finally:
            await self.close()

    async def _consume(self, sub) -> None:
        loop = asyncio.get_running_loop()
        applied_at = -math.inf
        while True:
            try:
                msgs = [await sub.next_msg(timeout=None)]
            except broker.UNREACHABLE:
                # A closed connection is the process ending (it reconnects forever otherwise):
                # nats-py then reports a cancellation of next_msg as this error.
                if self.nc.is_closed:
                    return
                await asyncio.sleep(0.5)
                continue
            if loop.time() - applied_at < self.batch_wait_s:
                # Events are coming one after another (a run's come within milliseconds of each
                # other): the ones a short wait brings make one transaction with this one. An event
                # after a quiet spell is applied at once.
                await asyncio.sleep(self.batch_wait_s)
            while len(msgs) < _BATCH and sub.pending_msgs:
                msgs.append(await sub.next_msg())
            entries = [_entry(m) for m in msgs]
            await self._retrying(functools.partial(self.apply, entries))
            applied_at = loop.time()

    async def _subscribe(self, position: int):
        config = ConsumerConfig(
            filter_subjects=projected_subjects(),
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=position + 1,
        )
        while True:
            try:
                # With filter_subjects set, the subject only names what the consumer reads.
                return await self.js.subscribe(
                    subjects.PREFIX + ".>", stream=subjects.THREAD_STREAM, ordered_consumer=True, config=config
                )
            except (*broker.UNREACHABLE, nats.js.errors.APIError) as err:
                log.info("projection consumer not created yet; trying again", error=repr(err))
                await asyncio.sleep(1.0)

    async def _retrying(self, work):
        delay = 0.1
        while True:
            try:
                return await work()
            except DatabaseUnavailable as err:
                log.warning("read model database unavailable; projection paused", error=str(err)[:200], retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _position(self) -> int:
        async with self.db.connection() as conn:
            row = await (
                await conn.execute("select position from projection_positions where projection = %s", (PROJECTION,))
            ).fetchone()
        return row["position"] if row else 0

    async def apply(self, entries: list[Entry]) -> int | None:
        """Applies the entries past the stored position in one transaction; returns the new
        position (None when there was nothing to apply)."""
        if not entries:
            return None
        while True:
            try:
                return await self._apply(entries)
            except _PositionMoved:
                # Another projector applied a batch since this one's last: what it holds is stale.
                expected = self.position
                log.info("projection position moved by another projector; reading it again", expected=expected)
                self.threads.clear()
                self.position = await self._position()
                if self.position < expected:
                    raise PositionRewound(self.position) from None

    async def _apply(self, entries: list[Entry]) -> int:
        async with self.db.translated_errors():
            conn = await self._connection()
            try:
                if self.position is None:
                    self.position = await self._position()
                fresh = [e for e in entries if e.seq > self.position]
                if not fresh:
                    return self.position
                statements, rows_after = await self._statements(conn, fresh)
                # One query of many statements: PostgreSQL runs it as one transaction (the first
                # statement failing fails them all), and it costs one round trip, not one a row.
                cursor = psycopg.AsyncClientCursor(conn)
                try:
                    await cursor.execute("; ".join(cursor.mogrify(sql, params) for sql, params in statements))
                except psycopg.errors.SerializationFailure as err:  # raised by advance_projection
                    raise _PositionMoved from err
            except BaseException:
                # Cancelled or failed mid-query, the connection's state is not known: a new one next time.
                self._conn = None
                await conn.close()
                raise
        self.position = fresh[-1].seq
        for tid, row in rows_after.items():
            self.threads.put(tid, row)
        return self.position

    async def _statements(self, conn, fresh: list[Entry]) -> tuple[list[rows.Statement], dict[str, projection.ThreadRow | None]]:
        """What applying ``fresh`` writes, starting with the move of the position, and the thread
        rows after it."""
        wanted = {subjects.thread_of(e.subject) for e in fresh}
        threads = {tid: self.threads.get(tid) for tid in wanted if tid in self.threads}
        if missing := wanted - threads.keys():
            threads.update(dict.fromkeys(missing))
            threads.update(await rows.load_threads(conn, missing))
        statements: list[rows.Statement] = [
            ("select advance_projection(%s, %s, %s)", (PROJECTION, self.position, fresh[-1].seq))
        ]
        touched: dict[str, projection.ThreadRow | None] = {}
        newest_values: dict[str, projection.CheckpointIndexed] = {}
        for entry in fresh:
            try:
                event = entry.event()
            except msgspec.DecodeError:
                log.warning("invalid event not projected", subject=entry.subject, seq=entry.seq)
                continue
            tid = event.thread_id
            row, changes = projection.project(threads.get(tid), event, entry.seq)
            threads[tid] = touched[tid] = row
            for change in changes:
                if isinstance(change, projection.ThreadRemoved):
                    newest_values.pop(tid, None)
                elif isinstance(change, projection.CheckpointIndexed) and change.checkpoint_ns == "":
                    newest_values[tid] = change
                statements.extend(_writes(change))
        for tid, row in touched.items():
            if row is None:
                continue
            if tid in newest_values:
                row.values = projection.state_values(_serde.loads_typed(_blob(newest_values[tid].checkpoint)))
            statements.append(rows.thread_upsert(row, values_changed=tid in newest_values))
        return statements, threads

    async def _connection(self) -> psycopg.AsyncConnection:
        """The projector's own connection, outside the pool: it is used back to back, and the
        pool's check of a connection before lending it would be a round trip per batch."""
        if self._conn is None or self._conn.closed:
            self._conn = await self.db.connect()
        return self._conn

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None


class _PositionMoved(Exception):
    """The stored position is not where this projector left it."""


class PositionRewound(Exception):
    """The stored position is behind what this projector applied: the events between were lost
    from the read model, and are projected again from the stored position."""


class ThreadCache:
    """Thread rows as of the projector's position, the newest used kept, without their values (a
    thread's whole state, which a projection never reads: it replaces them from a checkpoint; rows
    are loaded without them too, :func:`rows.load_threads`)."""

    def __init__(self, size: int):
        self.size = size
        self.rows: collections.OrderedDict[str, projection.ThreadRow | None] = collections.OrderedDict()

    def __contains__(self, thread_id: str) -> bool:
        return thread_id in self.rows

    def get(self, thread_id: str) -> projection.ThreadRow | None:
        self.rows.move_to_end(thread_id)
        row = self.rows[thread_id]
        return dataclasses.replace(row) if row is not None else None

    def put(self, thread_id: str, row: projection.ThreadRow | None) -> None:
        self.rows[thread_id] = dataclasses.replace(row, values=None) if row is not None else None
        self.rows.move_to_end(thread_id)
        while len(self.rows) > self.size:
            self.rows.popitem(last=False)

    def clear(self) -> None:
        self.rows.clear()


def _writes(change: projection.Change) -> list[rows.Statement]:
    match change:
        case projection.RunAdded(run=run):
            return [rows.run_upsert(run)]
        case projection.RunChanged(run_id=run_id, status=status, updated_at=at):
            return [("update runs set status = coalesce(%s, status), updated_at = %s where run_id = %s", (status, at, run_id))]
        case projection.RunRemoved(run_id=run_id, with_checkpoints=with_checkpoints):
            removed = [("delete from runs where run_id = %s", (run_id,))]
            if with_checkpoints:
                removed.append(("delete from checkpoints where run_id = %s", (run_id,)))
            return removed
        case projection.CheckpointIndexed():
            metadata = jsonable(_serde.loads_typed(_blob(change.metadata)))
            return [
                (
                    (
                        "insert into checkpoints (thread_id, checkpoint_ns, checkpoint_id, run_id, parent_checkpoint_id,"
                        " metadata, seq) values (%s, %s, %s, %s, %s, %s, %s) on conflict do nothing"
                    ),
                    (
                        change.thread_id,
                        change.checkpoint_ns,
                        change.checkpoint_id,
                        change.run_id,
                        change.parent_checkpoint_id,
                        Jsonb(metadata),
                        change.seq,
                    ),
                )
            ]
        case projection.ThreadRemoved(thread_id=tid):
            return [(f"delete from {table} where thread_id = %s", (tid,)) for table in ("threads", "runs", "checkpoints")]
    return []


def _blob(blob: contracts.TypedBlob) -> tuple[str, bytes]:
    return blob.type, blob.data


def _entry(msg) -> Entry:
    return Entry(seq=msg.metadata.sequence.stream, subject=msg.subject, data=msg.data, msg_id=None, time=msg.metadata.timestamp)
