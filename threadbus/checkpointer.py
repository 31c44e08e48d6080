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

Reads: the newest checkpoint of a namespace is the newest by stream sequence; pending writes are
applied in log order, the first write of a ``(task, idx >= 0)`` winning and the last one of a
special negative index, as ``InMemorySaver`` does.

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
from threadbus.threadlog import Conflict, Entry, ThreadLog

UNGUARDED_RUN = "_"


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
        clone._ahead = None
        return clone

    # -- async API ----------------------------------------------------------------------------
    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        conf = config["configurable"]
        entry = await self.log.last(
            subjects.checkpoints(conf["thread_id"], conf.get("checkpoint_ns", ""), get_checkpoint_id(config))
        )
        return await self._tuple(entry.event()) if entry else None

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        if config is None:
            source = subjects.checkpoints(None)
        else:
            conf = config["configurable"]
            source = subjects.checkpoints(conf["thread_id"], conf.get("checkpoint_ns"), get_checkpoint_id(config))
        # A checkpoint stored twice (a put or copy repeated after the dedup window) counts once.
        newest: dict[tuple[str, str, str], Entry] = {}
        for entry in await self.log.read(source):
            newest[_checkpoint_key(entry.subject)] = entry
        before_id = get_checkpoint_id(before) if before else None
        remaining = limit
        for key in sorted(newest, key=lambda k: k[2], reverse=True):
            if remaining is not None and remaining <= 0:
                return
            if before_id is not None and key[2] >= before_id:
                continue
            event = newest[key].event()
            metadata = self._load(event.metadata)
            if filter and any(metadata.get(k) != v for k, v in filter.items()):
                continue
            yield await self._tuple(event, metadata)
            if remaining is not None:
                remaining -= 1

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
            self.current_checkpoint_id = checkpoint_id
        # A fresh id per call: append reuses it for the call's own retries, and a checkpoint saved
        # again later (a redelivered run, a copy after a delete) is a new record, read as the newest.
        await self._append(subjects.checkpoint(thread_id, run, ns, checkpoint_id), event, str(uuid.uuid4()))
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
            subjects.writes_record(thread_id, self._run, ns, checkpoint_id, task_id), event, str(uuid.uuid4())
        )

    async def adelete_thread(self, thread_id: str) -> None:
        # The thread's control events stay: the thread and its runs are the orchestrator's.
        await self.log.purge(subjects.checkpoints(thread_id))
        await self.log.purge(subjects.writes(thread_id))

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        for run_id in run_ids:
            # Writes made against the run's checkpoints go with them, whichever run made them.
            for entry in await self.log.read(subjects.run_records(run_id, "ckpt")):
                thread_id, ns, checkpoint_id = _checkpoint_key(entry.subject)
                await self.log.purge(subjects.writes(thread_id, ns, checkpoint_id))
            await self.log.purge(subjects.run_records(run_id, "ckpt"))
            await self.log.purge(subjects.run_records(run_id, "write"))

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        records = await self.log.read(subjects.checkpoints(source_thread_id))
        records += await self.log.read(subjects.writes(source_thread_id))
        # Log order is what "newest checkpoint" and write precedence are defined by.
        for entry in sorted(records, key=lambda e: e.seq):
            event = msgspec.structs.replace(entry.event(), thread_id=target_thread_id)
            if isinstance(event, contracts.CheckpointSaved):
                subject = subjects.checkpoint(target_thread_id, event.run_id, event.checkpoint_ns, event.checkpoint_id)
            else:
                subject = subjects.writes_record(
                    target_thread_id, event.run_id, event.checkpoint_ns, event.checkpoint_id, event.task_id
                )
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

    async def _append(self, subject: str, event: contracts.Event, msg_id: str) -> None:
        guard = self.guard
        if guard is None:
            await self.log.append(subject, contracts.encode(event), msg_id=msg_id)
            return
        try:
            await self.log.append(
                subject,
                contracts.encode(event),
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

    async def _pending_writes(self, thread_id: str, ns: str, checkpoint_id: str) -> list[PendingWrite]:
        applied: dict[tuple[str, int], tuple[str, str, contracts.TypedBlob]] = {}
        for entry in await self.log.read(subjects.writes(thread_id, ns, checkpoint_id)):
            record = entry.event()
            for write in record.writes:
                key = (record.task_id, write.idx)
                if write.idx >= 0 and key in applied:
                    continue
                applied[key] = (record.task_path, write.channel, write.value)
        # get_tuple's contract: writes in writes_sort_key order, which is how replays apply them.
        ordered = sorted(applied.items(), key=lambda item: writes_sort_key(item[1][0], *item[0]))
        return [(task_id, channel, self._load(blob)) for (task_id, _), (_, channel, blob) in ordered]

    async def _tuple(self, event: contracts.CheckpointSaved, metadata: Any = None) -> CheckpointTuple:
        thread_id, ns = event.thread_id, event.checkpoint_ns
        return CheckpointTuple(
            config=_config(thread_id, ns, event.checkpoint_id),
            checkpoint=self._load(event.checkpoint),
            metadata=self._load(event.metadata) if metadata is None else metadata,
            parent_config=_config(thread_id, ns, event.parent_checkpoint_id) if event.parent_checkpoint_id else None,
            pending_writes=await self._pending_writes(thread_id, ns, event.checkpoint_id),
        )


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
