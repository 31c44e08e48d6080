"""The projector: applies the thread log to the read model.

It reads every thread's control events and checkpoint records in log order from the position
stored in ``projection_positions``, and applies each batch in one transaction that also moves the
position, so a batch is applied entirely or not at all, and never twice (the position is read
under a row lock, and events at or below it are skipped: two projectors, say during a hand-over
between orchestrators, serialise on that row and agree).

One projector for the whole log, not one per partition: its position is then one number, which
tells any reader exactly which events the read model holds (:mod:`threadbus.read_model.reads`).
Its work is a few statements per event in batches of hundreds; the database, not the projector,
is what a busier deployment needs more of.

The broker keeps nothing for it, and is asked nothing per event: the consumer is an ordered push
consumer (ephemeral, in memory, without acknowledgements) created from the stored position, so an
event costs its delivery alone, where a pull consumer's fetches cost a request and an end-of-batch
answer for every few events. What has arrived is taken as one batch. Flow control is answered only
once the projector has taken what preceded it, so when the database is away the batch is kept and
tried again and the broker stops pushing soon after; a gap (a message lost on the way, a consumer
lost with its server, seen as missing heartbeats) makes the client recreate the consumer after the
last event it received.
"""

from __future__ import annotations

import asyncio
import functools

import msgspec
import nats.errors
import nats.js.errors
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
    def __init__(self, nc: NATS, db: Database):
        self.nc = nc
        self.js = nc.jetstream()
        self.db = db

    async def run(self) -> None:
        """Projects until cancelled (or until the connection is closed)."""
        position = await self._retrying(self._position)
        log.info("projecting the thread log", position=position)
        sub = await self._subscribe(position)
        try:
            await self._consume(sub)
        finally:
            await broker.end_ordered(self.js, sub, subjects.THREAD_STREAM)

    async def _consume(self, sub) -> None:
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
            while len(msgs) < _BATCH and sub.pending_msgs:
                msgs.append(await sub.next_msg())
            entries = [_entry(m) for m in msgs]
            await self._retrying(functools.partial(self.apply, entries))

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
        async with self.db.connection() as conn, conn.transaction():
            await conn.execute(
                "insert into projection_positions (projection, position) values (%s, 0) on conflict do nothing", (PROJECTION,)
            )
            stored = await (
                await conn.execute("select position from projection_positions where projection = %s for update", (PROJECTION,))
            ).fetchone()
            fresh = [e for e in entries if e.seq > stored["position"]]
            if not fresh:
                return stored["position"]
            threads = await rows.load_threads(conn, {subjects.thread_of(e.subject) for e in fresh})
            touched: dict[str, projection.ThreadRow | None] = {}
            newest_values: dict[str, projection.CheckpointIndexed] = {}
            # Not in pipeline mode: a projector cancelled mid-batch (its partition handed over)
            # must roll back and end at once, which psycopg's pipeline exit does not promise.
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
                    await _write(conn, change)
            for tid, row in touched.items():
                if row is None:
                    continue
                if tid in newest_values:
                    row.values = projection.state_values(_serde.loads_typed(_blob(newest_values[tid].checkpoint)))
                await rows.save_thread(conn, row)
            await conn.execute(
                "update projection_positions set position = %s where projection = %s", (fresh[-1].seq, PROJECTION)
            )
            return fresh[-1].seq


async def _write(conn, change: projection.Change) -> None:
    match change:
        case projection.RunAdded(run=run):
            await rows.insert_run(conn, run)
        case projection.RunChanged(run_id=run_id, status=status, updated_at=at):
            await conn.execute(
                "update runs set status = coalesce(%s, status), updated_at = %s where run_id = %s", (status, at, run_id)
            )
        case projection.RunRemoved(run_id=run_id, with_checkpoints=with_checkpoints):
            await conn.execute("delete from runs where run_id = %s", (run_id,))
            if with_checkpoints:
                await conn.execute("delete from checkpoints where run_id = %s", (run_id,))
        case projection.CheckpointIndexed():
            metadata = jsonable(_serde.loads_typed(_blob(change.metadata)))
            await conn.execute(
                "insert into checkpoints (thread_id, checkpoint_ns, checkpoint_id, run_id, parent_checkpoint_id, metadata, seq)"
                " values (%s, %s, %s, %s, %s, %s, %s) on conflict do nothing",
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
        case projection.ThreadRemoved(thread_id=tid):
            for table in ("threads", "runs", "checkpoints"):
                await conn.execute(f"delete from {table} where thread_id = %s", (tid,))


def _blob(blob: contracts.TypedBlob) -> tuple[str, bytes]:
    return blob.type, blob.data


def _entry(msg) -> Entry:
    return Entry(seq=msg.metadata.sequence.stream, subject=msg.subject, data=msg.data, msg_id=None, time=msg.metadata.timestamp)
