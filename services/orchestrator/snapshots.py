"""Snapshots of thread states, so that an orchestrator's cold start folds a thread's tail only.

A snapshot is a thread's :class:`ThreadState` and the log sequence it reflects, in the
``tb_thread_snapshots`` KV bucket under the thread's token. The orchestrator that decides for the
thread writes it once ``THREADBUS_ORCHESTRATOR_SNAPSHOT_EVERY`` events were folded since the last
one, whatever the thread is doing, so a cold start folds at most about that many events (more
only while a stop or a compaction holds the snapshot back); on first sight of a thread it folds
the log after the snapshot's sequence instead of from the start. Saving whenever the thread
settles would cost a write or two per run for a tail the fold reads in one batched get anyway; a
thread with fewer events than that has no snapshot and is folded from the start. ``statuses`` (one entry per run the thread ever had) is left out: the decider never reads
it, so a snapshot's size does not grow with the thread's history.

A snapshot is only a cache that survives the process, never the truth: every decision is still an
expected-sequence append, so a snapshot that is stale costs a longer tail, and one that does not
match the log costs a refused append and a fold from the start (the orchestrator then drops it).
What changes the log without an event is covered too: a rollback's compaction removes only events
of runs in flight at the snapshot, and the tombstone it leaves takes them out of the state as the
fold from the start would; a thread's deletion drops its snapshot.
"""

from __future__ import annotations

from dataclasses import replace

import msgspec
import nats.js.errors

from contracts import subjects
from threadbus import broker, logs
from threadbus.thread_state import ThreadState

log = logs.get("threadbus.orchestrator.snapshots")

VERSION = 1


class Snapshot(msgspec.Struct, kw_only=True):
    v: int = VERSION
    state: ThreadState


_decoder = msgspec.json.Decoder(Snapshot)


def key(thread_id: str) -> str:
    """A KV key for any thread id: its subject token, whose ``~`` (not allowed in a key) becomes
    ``=``, which a token never holds."""
    return subjects.token(thread_id).replace("~", "=")


def worth_saving(state: ThreadState, unsaved: int, every: int) -> bool:
    """Whether to snapshot a state with ``unsaved`` events folded since its last snapshot. Never
    while a cancelled run's stop or a compaction is outstanding: the fold from the start would not
    see the events that compaction is about to remove."""
    if state.stopping is not None or state.to_compact:
        return False
    return unsaved >= max(every, 1)


class Snapshots:
    def __init__(self, js):
        self.js = js
        self._kv = None

    async def _bucket(self):
        if self._kv is None:
            self._kv = await self.js.key_value(broker.SNAPSHOTS_BUCKET)
        return self._kv

    async def load(self, thread_id: str) -> ThreadState | None:
        try:
            entry = await (await self._bucket()).get(key(thread_id))
        except nats.js.errors.NotFoundError:  # never written, or dropped
            return None
        try:
            snapshot = _decoder.decode(entry.value)
        except msgspec.DecodeError as err:
            # Written by another version, or damaged: the log has the truth.
            log.warning("snapshot unreadable; folding the thread from the start", thread_id=thread_id, error=str(err))
            return None
        if snapshot.v != VERSION or snapshot.state.thread_id != thread_id:
            return None
        return snapshot.state

    async def save(self, state: ThreadState) -> None:
        await (await self._bucket()).put(key(state.thread_id), msgspec.json.encode(Snapshot(state=replace(state, statuses={}))))

    async def drop(self, thread_id: str) -> None:
        # A purge of the key's subject leaves nothing, where the bucket's own purge would leave a
        # marker behind for every thread ever deleted.
        bucket = broker.SNAPSHOTS_BUCKET
        await self.js.purge_stream(f"KV_{bucket}", subject=f"$KV.{bucket}.{key(thread_id)}")
