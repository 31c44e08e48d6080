"""A LangGraph checkpointer whose storage is the thread log.

Each ``put`` appends one ``CheckpointSaved`` (the whole checkpoint, channel values included) on
``tb.thread.<t>.run.<r>.ckpt.<ns>.<id>`` and each ``put_writes`` one ``WritesSaved`` on
``...run.<r>.write.<ns>.<id>.<task>``. ``<r>`` is the run that wrote the record, so rolling a run
back (:meth:`ThreadLog.compact`) removes its checkpoints and writes with its control events;
writes made outside a run (the gateway's state updates) use the run token ``_``.

A saver bound to a :class:`RunGuard` appends only while the run's last control event is still
its ``RunStarted``: once the orchestrator has appended anything newer for the run (cancel,
rollback) every append fails with :class:`RunSuperseded`, so a deposed executor cannot write
state after the next run may have started.

With every checkpoint two small pointers are stored (``contracts.subjects``): the namespace's
head (``...head.<ns>``: the run that wrote its newest checkpoint) and the checkpoint's ref
(``...index.ckpt.<ns>.<id>``: the run that wrote it). They turn "the newest checkpoint" and
"checkpoint <id>" into gets of a literal subject, whose cost on the broker does not grow with the
thread's history, where a last-by-subject over ``run.*`` walks every run's subjects. The pointers
are stored before their record, in the same round trip (:meth:`JetStreamSaver._append_checkpoint`).
A pointer carries the writing run's ``RunStarted`` sequence (``writes_after``), which the
checkpoint's pending writes all come after, so a reader fetches the checkpoint and its writes at
once.

Reads: a namespace without a head has no checkpoint (every put stores one first, deleting a thread
purges both), and an id without a ref is not stored. The newest checkpoint of a namespace is the
head's, unless its checkpoint is gone (rolled back, pruned, deleted for its run, or never stored),
when the newest by stream sequence over every run answers until the next checkpoint points the
head again. ``get_tuple`` takes two round trips: the pointer, then the checkpoint and its writes
together. ``list`` walks the log backwards from the newest (or from ``before``) in windows of
sequences and decodes only the checkpoints it returns (and the metadata of those a ``filter``
rejects), newest by stream sequence first: the same as newest id first, since LangGraph's ids are
time-ordered (uuid6) and made when saved. Pending writes are applied in log order, the first write
of a ``(task, idx >= 0)`` winning and the last one of a special negative index, as
``InMemorySaver`` does.

Records are filed under the run that wrote them: the guard's run, or for an unguarded saver
``metadata["run_id"]`` (how LangGraph names a checkpoint's run), so ``delete_for_runs`` is a
purge of the runs' subjects, as rollback's compaction is.
"""

from __future__ import annotations

import asyncio
import copy
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    PendingWrite,
    SerializerProtocol,
    get_checkpoint_id,
    get_checkpoint_metadata,
    writes_sort_key,
)

import contracts
from contracts import subjects
from threadbus import metrics
from threadbus.threadlog import Conflict, Entry, ThreadLog

UNGUARDED_RUN = "_"
ROOT_NS = ""
# Sequences looked at by the first step of list's backward walk; each next step doubles it.
_FIRST_WINDOW = 64



class RunSuperseded(Exception):
    """The orchestrator cancelled or compacted the run: its executor must stop writing."""


@dataclass(frozen=True, slots=True)
class RunGuard:
    thread_id: str
    run_id: str
    started_seq: int  # stream sequence of the run's RunStarted


def _config(thread_id: str, ns: str, checkpoint_id: str) -> RunnableConfig:
    return {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": checkpoint_id}}


def _checkpoint_key(subject: str) -> tuple[str, str, str]:
    """(thread, ns, id) of ``tb.thread.<t>.<p>.run.<r>.ckpt.<ns>.<id>``, without decoding the payload."""
    parts = subjects.published_tokens(subject)
    return subjects.thread_of(subject), subjects.untoken(parts[6]), subjects.untoken(parts[7])


# The base class's integer channel versions suffice: values are stored whole in each checkpoint,
# not as blobs keyed by version, so versions reused on two forks of a thread cannot collide.
class JetStreamSaver(BaseCheckpointSaver[int]):
    def __init__(self, log: ThreadLog, *, serde: SerializerProtocol | None = None, guard: RunGuard | None = None):
        super().__init__(serde=serde)
        self.log = log
        self.guard = guard
        # The root namespace's checkpoint this saver last wrote or wrote against: the state a run
        # ended in, known without reading it back.
        self.current_checkpoint_id: str | None = None
        # That checkpoint as LangGraph handed it over, when this saver wrote it (else None).
        self.current_checkpoint: Checkpoint | None = None
        try:
            self.loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self.loop = None

    def bound(self, guard: RunGuard) -> RunSaver:
        """A saver for one run: same log, serde and loop, appends guarded by ``guard``."""
        clone = copy.copy(self)
        clone.__class__ = RunSaver
        clone.guard = guard
        clone.current_checkpoint_id = None
        clone.current_checkpoint = None
        clone._ahead = None
        return clone

    # -- async API ----------------------------------------------------------------------------
    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        conf = config["configurable"]
        thread_id, ns, checkpoint_id = conf["thread_id"], conf.get("checkpoint_ns", ROOT_NS), get_checkpoint_id(config)
        pointers = subjects.checkpoint_refs(thread_id, ns, checkpoint_id) if checkpoint_id else subjects.checkpoint_heads(thread_id, ns)
        pointer = await self.log.last(pointers)
        if pointer is None:
            return None
        found = await self._pointed(pointer.event())
        if found is not None or checkpoint_id:
            return found
        # The head's checkpoint is gone (rolled back, pruned, never stored): the newest one still stored.
        entry = await self.log.last(subjects.checkpoints(thread_id, ns))
        return await self._tuple(entry) if entry else None

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        if limit is not None and limit <= 0:
            return
        before_id = get_checkpoint_id(before) if before else None
        if config is None:
            async for item in self._list_everywhere(filter, before_id, limit):
                yield item
            return
        conf = config["configurable"]
        thread_id, ns, checkpoint_id = conf["thread_id"], conf.get("checkpoint_ns"), get_checkpoint_id(config)
        if checkpoint_id is not None:
            entry = await self._by_id(thread_id, ns, checkpoint_id)
            if entry is not None and (before_id is None or checkpoint_id < before_id):
                event = entry.event()
                metadata = self._load(event.metadata)
                if _matches(metadata, filter):
                    yield await self._tuple(entry, event, metadata)
            return
        # The walk starts at the newest sequence that can hold a wanted checkpoint.
        start = await self._by_id(thread_id, ns, before_id) if before_id is not None else None
        if start is not None:
            top = start.seq - 1
        elif ns is not None:
            newest = await self._newest(thread_id, ns)
            if newest is None:
                return
            top = newest.seq
        else:
            top = await self.log.last_seq()
        source = subjects.checkpoints(thread_id, ns)
        seen: set[tuple[str, str, str]] = set()
        remaining, window, floor = limit, max(_FIRST_WINDOW, 4 * (limit or 0)), None
        newest = top
        while floor is None or top >= floor:
            bottom = max(0, top - window)
            for entry in reversed(await self.log.read(source, after=bottom, until=top)):
                key = _checkpoint_key(entry.subject)
                # A checkpoint stored twice (a put or copy repeated after the dedup window)
                # counts once, as its newest copy.
                if key in seen:
                    continue
                seen.add(key)
                if before_id is not None and key[2] >= before_id:
                    continue
                event = entry.event()
                metadata = self._load(event.metadata) if filter else None
                if not _matches(metadata, filter):
                    continue
                yield await self._tuple(entry, event, metadata)
                if remaining is not None:
                    remaining -= 1
                    if remaining == 0:
                        return
            if floor is None:
                # More to look for than the newest window held: the walk stops at the oldest.
                floor = await self.log.next_seq(source, after=0) or top + 1
            if remaining is not None and not filter and seen:
                # As many sequences as the checkpoints still wanted took so far, twice over, rather
                # than twice the last window: a window's read also returns the records above it (the
                # broker bounds a batch by count, not by sequence), as many as the window is long.
                window = max(2 * remaining * (newest - bottom) // len(seen), 1)
            else:
                window *= 2
            top = bottom

    async def _list_everywhere(
        self, filter: dict[str, Any] | None, before_id: str | None, limit: int | None
    ) -> AsyncIterator[CheckpointTuple]:
        """Every thread's checkpoints, newest id first: a maintenance read, O(every checkpoint)
        in subjects, decoding only what it returns."""
        newest: dict[tuple[str, str, str], Entry] = {}
        for entry in await self.log.read(subjects.checkpoints(None)):
            newest[_checkpoint_key(entry.subject)] = entry
        remaining = limit
        for key in sorted(newest, key=lambda k: k[2], reverse=True):
            if before_id is not None and key[2] >= before_id:
                continue
            event = newest[key].event()
            metadata = self._load(event.metadata)
            if not _matches(metadata, filter):
                continue
            yield await self._tuple(newest[key], event, metadata)
            if remaining is not None:
                remaining -= 1
                if remaining == 0:
                    return

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        conf = config["configurable"]
        thread_id, ns, checkpoint_id = conf["thread_id"], conf.get("checkpoint_ns", ""), checkpoint["id"]
        metadata = get_checkpoint_metadata(config, metadata)
        run = self.guard.run_id if self.guard else str(metadata.get("run_id") or UNGUARDED_RUN)
        event = contracts.CheckpointSaved(
            thread_id=thread_id,
            run_id=run,
            checkpoint_ns=ns,
            checkpoint_id=checkpoint_id,
            parent_checkpoint_id=conf.get("checkpoint_id"),
            checkpoint=self._dump(checkpoint),
            metadata=self._dump(metadata),
        )
        if not ns:
            # Set when called: LangGraph puts a thread's checkpoints one after the other, newest last.
            self.current_checkpoint_id, self.current_checkpoint = checkpoint_id, checkpoint
        writes_after = self.guard.started_seq if self.guard else 0
        await self._append_checkpoint(event, writes_after)
        return _config(thread_id, ns, checkpoint_id)

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        conf = config["configurable"]
        thread_id, ns, checkpoint_id = conf["thread_id"], conf.get("checkpoint_ns", ""), conf["checkpoint_id"]
        event = contracts.WritesSaved(
            thread_id=thread_id,
            run_id=self._run,
            checkpoint_ns=ns,
            checkpoint_id=checkpoint_id,
            task_id=task_id,
            task_path=task_path,
            writes=[
                contracts.PendingWrite(WRITES_IDX_MAP.get(channel, i), channel, self._dump(value))
                for i, (channel, value) in enumerate(writes)
            ],
        )
        if not ns and self.current_checkpoint_id is None:
            # Writes against a checkpoint the run did not write (a resume): that is its state so
            # far. Writes of a step may complete after the next step's checkpoint is put: they
            # never stand for the newest.
            self.current_checkpoint_id = checkpoint_id
        # Two calls with the same writes are distinct records (the reader dedups by (task, idx));
        # only the retries of one call must be deduplicated, and append reuses the id for those.
        await self._append(
            subjects.writes_record(thread_id, self._run, ns, checkpoint_id, task_id), contracts.encode(event), str(uuid.uuid4())
        )

    async def adelete_thread(self, thread_id: str) -> None:
        # The thread's control events stay: the thread and its runs are the orchestrator's.
        await self.log.purge(subjects.checkpoints(thread_id))
        await self.log.purge(subjects.writes(thread_id))
        await self.log.purge(subjects.checkpoint_heads(thread_id))
        await self.log.purge(subjects.checkpoint_refs(thread_id))

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        for run_id in run_ids:
            # Writes made against the run's checkpoints go with them, whichever run made them.
            for entry in await self.log.read(subjects.run_records(run_id, "ckpt")):
                thread_id, ns, checkpoint_id = _checkpoint_key(entry.subject)
                await self.log.purge(subjects.writes(thread_id, ns, checkpoint_id))
                await self.log.purge(subjects.checkpoint_refs(thread_id, ns, checkpoint_id))
            # A head left pointing at a purged checkpoint is read past (see the module's docstring).
            await self.log.purge(subjects.run_records(run_id, "ckpt"))
            await self.log.purge(subjects.run_records(run_id, "write"))

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        records = await self.log.read(subjects.checkpoints(source_thread_id))
        records += await self.log.read(subjects.writes(source_thread_id))
        # Log order is what "newest checkpoint" and write precedence are defined by.
        for entry in sorted(records, key=lambda e: e.seq):
            event = msgspec.structs.replace(entry.event(), thread_id=target_thread_id)
            if isinstance(event, contracts.CheckpointSaved):
                # The copies' runs never started in the target thread: no floor for their writes.
                await self._append_checkpoint(event, writes_after=0)
                continue
            subject = subjects.writes_record(target_thread_id, event.run_id, event.checkpoint_ns, event.checkpoint_id, event.task_id)
            await self.log.append(subject, contracts.encode(event), msg_id=str(uuid.uuid4()))

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """``keep_latest`` keeps the newest checkpoint of each namespace (and its writes). Every
        checkpoint stores its full state, so nothing the kept one needs is dropped, unless a graph
        uses LangGraph's beta ``DeltaChannel``, whose history lives in the pruned writes."""
        if strategy not in ("keep_latest", "delete"):
            raise ValueError(f"unknown prune strategy {strategy!r}")
        for thread_id in thread_ids:
            if strategy == "delete":
                await self.adelete_thread(thread_id)
                continue
            stored = [_checkpoint_key(e.subject) for e in await self.log.read(subjects.checkpoints(thread_id))]
            kept = {key[1]: key for key in stored}  # log order: the last of each namespace wins
            for _, ns, checkpoint_id in set(stored) - set(kept.values()):
                await self.log.purge(subjects.checkpoints(thread_id, ns, checkpoint_id))
                await self.log.purge(subjects.writes(thread_id, ns, checkpoint_id))
                await self.log.purge(subjects.checkpoint_refs(thread_id, ns, checkpoint_id))

    # -- sync API: delegated to the loop that owns the NATS connection ---------------------------
    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return self._sync(self.aget_tuple, config)

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        items = self.alist(config, filter=filter, before=before, limit=limit)
        while True:
            try:
                yield self._sync(anext, items)
            except StopAsyncIteration:
                return

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return self._sync(self.aput, config, checkpoint, metadata, new_versions)

    def put_writes(
        self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str, task_path: str = ""
    ) -> None:
        self._sync(self.aput_writes, config, writes, task_id, task_path)

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        return self._sync(self.adelete_for_runs, run_ids)

    def delete_thread(self, thread_id: str) -> None:
        self._sync(self.adelete_thread, thread_id)

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        self._sync(self.acopy_thread, source_thread_id, target_thread_id)

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        self._sync(self.aprune, thread_ids, strategy=strategy)

    # -- internals ----------------------------------------------------------------------------
    @property
    def _run(self) -> str:
        return self.guard.run_id if self.guard else UNGUARDED_RUN

    def _sync(self, fn, *args, **kwargs):
        if self.loop is None:
            raise RuntimeError(
                "JetStreamSaver was created outside an event loop, so its sync methods have no loop to run on"
            )
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            # Blocking this thread on a coroutine scheduled on its own loop would deadlock.
            raise asyncio.InvalidStateError(
                "JetStreamSaver's sync methods cannot run on its event loop's thread: use the async"
                " methods (ainvoke/astream) there, or call from another thread"
            )
        return asyncio.run_coroutine_threadsafe(fn(*args, **kwargs), self.loop).result()

    async def _append(self, subject: str, payload: bytes, msg_id: str) -> None:
        guard = self.guard
        if guard is None:
            await self.log.append(subject, payload, msg_id=msg_id)
            return
        try:
            await self.log.append(
                subject,
                payload,
                msg_id=msg_id,
                expect=guard.started_seq,
                expect_filter=subjects.run_control(guard.thread_id, guard.run_id),
            )
        except Conflict as err:
            raise RunSuperseded(f"run {guard.run_id} of thread {guard.thread_id} was cancelled or rolled back") from err

    def _dump(self, value: Any) -> contracts.TypedBlob:
        return contracts.TypedBlob(*self.serde.dumps_typed(value))

    def _load(self, blob: contracts.TypedBlob) -> Any:
        return self.serde.loads_typed((blob.type, blob.data))

    async def _append_checkpoint(self, event: contracts.CheckpointSaved, writes_after: int) -> None:
        """The checkpoint's ref, its namespace's head and its record, in flight together (one
        round trip) and stored in that order: the broker takes one connection's publishes in
        order, and once the run's guard refuses one it refuses the rest, so a stored checkpoint
        has its pointers (unless a pointer's publish was lost and its retry refused), while a
        pointer stored without its checkpoint is read past. Not an atomic batch: nats-server
        stages each atomic batch of a file-backed stream in a file store of its own, measured at
        3 ms of its CPU and 4-7 ms of latency per batch, where these three cost 0.3 ms and 0.6 ms."""
        thread_id, run, ns, checkpoint_id = event.thread_id, event.run_id, event.checkpoint_ns, event.checkpoint_id
        pointer = contracts.encode(
            contracts.CheckpointPointer(
                thread_id=thread_id, run_id=run, checkpoint_ns=ns, checkpoint_id=checkpoint_id, writes_after=writes_after
            )
        )
        # Fresh ids per call: append reuses them for the call's own retries, and a checkpoint
        # saved again later (a redelivered run, a copy after a delete) is a new record, read as
        # the newest.
        await asyncio.gather(
            self._append(subjects.checkpoint_ref(thread_id, ns, checkpoint_id), pointer, str(uuid.uuid4())),
            self._append(subjects.checkpoint_head(thread_id, ns), pointer, str(uuid.uuid4())),
            self._append(subjects.checkpoint(thread_id, run, ns, checkpoint_id), contracts.encode(event), str(uuid.uuid4())),
        )

    async def _pointed(self, pointer: contracts.CheckpointPointer) -> CheckpointTuple | None:
        """The checkpoint a pointer names, or None when it is gone (rolled back or deleted)."""
        thread_id, ns, checkpoint_id = pointer.thread_id, pointer.checkpoint_ns, pointer.checkpoint_id
        stored = subjects.stored_checkpoint(thread_id, pointer.run_id, ns, checkpoint_id)
        if not pointer.writes_after:
            entry = await self.log.last(stored)
            return await self._tuple(entry) if entry else None
        entry, writes = await asyncio.gather(
            self.log.last(stored), self._pending_writes(thread_id, ns, checkpoint_id, after=pointer.writes_after)
        )
        return await self._tuple(entry, pending_writes=writes) if entry else None

    async def _newest(self, thread_id: str, ns: str) -> Entry | None:
        head = await self.log.last(subjects.checkpoint_heads(thread_id, ns))
        if head is None:
            return None  # no checkpoint was ever put in the namespace, or the thread was deleted
        pointer = head.event()
        entry = await self.log.last(subjects.stored_checkpoint(thread_id, pointer.run_id, ns, pointer.checkpoint_id))
        # Gone (rolled back, pruned, never stored): the newest one still stored.
        return entry or await self.log.last(subjects.checkpoints(thread_id, ns))

    async def _by_id(self, thread_id: str, ns: str | None, checkpoint_id: str) -> Entry | None:
        ref = await self.log.last(subjects.checkpoint_refs(thread_id, ns, checkpoint_id))
        if ref is None:
            return None
        pointer = ref.event()
        # Gone when rolled back or deleted: saved again, it would have a newer ref.
        return await self.log.last(subjects.stored_checkpoint(thread_id, pointer.run_id, pointer.checkpoint_ns, checkpoint_id))

    async def _pending_writes(self, thread_id: str, ns: str, checkpoint_id: str, after: int) -> list[PendingWrite]:
        applied: dict[tuple[str, int], tuple[str, str, contracts.TypedBlob]] = {}
        for entry in await self.log.read(subjects.writes(thread_id, ns, checkpoint_id), after=after):
            record = entry.event()
            for write in record.writes:
                key = (record.task_id, write.idx)
                if write.idx >= 0 and key in applied:
                    continue
                applied[key] = (record.task_path, write.channel, write.value)
        # get_tuple's contract: writes in writes_sort_key order, which is how replays apply them.
        ordered = sorted(applied.items(), key=lambda item: writes_sort_key(item[1][0], *item[0]))
        return [(task_id, channel, self._load(blob)) for (task_id, _), (_, channel, blob) in ordered]

    async def _tuple(
        self,
        entry: Entry,
        event: contracts.CheckpointSaved | None = None,
        metadata: Any = None,
        pending_writes: list[PendingWrite] | None = None,
    ) -> CheckpointTuple:
        event = entry.event() if event is None else event
        thread_id, ns = event.thread_id, event.checkpoint_ns
        metrics.CHECKPOINTS_DECODED.inc()
        return CheckpointTuple(
            config=_config(thread_id, ns, event.checkpoint_id),
            checkpoint=self._load(event.checkpoint),
            metadata=self._load(event.metadata) if metadata is None else metadata,
            parent_config=_config(thread_id, ns, event.parent_checkpoint_id) if event.parent_checkpoint_id else None,
            pending_writes=pending_writes
            if pending_writes is not None
            else await self._pending_writes(thread_id, ns, event.checkpoint_id, after=await self._writes_floor(entry)),
        )

    async def _writes_floor(self, entry: Entry) -> int:
        """A sequence that the writes made against the checkpoint come after, for a checkpoint read
        without its pointer (the pointer's ``writes_after`` says it). A run stores a checkpoint in
        the background while its next tasks already write against it, so its writes may precede
        it, but not the run's ``RunStarted``; writes of later runs come later still. A
        checkpoint of no threadbus run (a state update, a graph run outside an executor) gives no
        such bound: its writes are looked for from the start."""
        run = subjects.run_of(entry.subject)
        if run == UNGUARDED_RUN:
            return 0
        started = await self.log.last(subjects.run_event(subjects.thread_of(entry.subject), run, "RunStarted"))
        return started.seq if started is not None and started.seq < entry.seq else 0


def _matches(metadata: Any, filter: dict[str, Any] | None) -> bool:
    return not filter or all(metadata.get(k) == v for k, v in filter.items())

class RunSaver(JetStreamSaver):
    """A saver bound to one run (:meth:`JetStreamSaver.bound`), which may read the thread's newest
    checkpoint ahead: the executor starts that read while it reads the run's request, and the
    graph's first read of the newest checkpoint takes its answer, one round trip saved. Nothing
    else writes the thread's checkpoints meanwhile: the run is the thread's only one (DESIGN
    invariant 2), and state edits are refused while it is in flight."""

    _ahead: asyncio.Task | None

    def read_ahead(self) -> None:
        newest: RunnableConfig = {"configurable": {"thread_id": self.guard.thread_id, "checkpoint_ns": ""}}
        self._ahead = asyncio.ensure_future(JetStreamSaver.aget_tuple(self, newest))

    def discard_read_ahead(self) -> None:
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            ahead.cancel()
            ahead.add_done_callback(lambda task: task.cancelled() or task.exception())

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        ahead, self._ahead = self._ahead, None
        conf = config["configurable"]
        if ahead is not None and not conf.get("checkpoint_ns") and not get_checkpoint_id(config):
            return await ahead
        if ahead is not None:
            self._ahead = ahead
            self.discard_read_ahead()
        return await super().aget_tuple(config)
