"""Threads: records in the ``tb_threads`` bucket, statuses from the thread log, state and history
from the checkpoints."""

from __future__ import annotations

import contextlib
import re
import uuid
from typing import Any

from fastapi import HTTPException

import contracts
from services.gateway import auth, views
from services.gateway.domain import records
from services.gateway.models import ThreadCount, ThreadCreate, ThreadSearch
from threadbus import runrequest
from threadbus.checkpointer import JetStreamSaver
from threadbus.graphs import GraphRegistry
from threadbus.read_model import projection, rows
from threadbus.read_model.reads import Reads
from threadbus.threadlog import ThreadLog


class Threads:
    def __init__(self, log: ThreadLog, saver: JetStreamSaver, graphs: GraphRegistry, kv, reads: Reads, store: Any = None):
        self.log = log
        self.store = store  # what graph factories get as runtime.store
        self.saver = saver
        self.graphs = graphs
        self.kv = kv
        self.reads = reads

    async def record(self, thread_id: str) -> dict[str, Any]:
        return (await self.record_and_revision(thread_id))[0]

    async def record_and_revision(self, thread_id: str) -> tuple[dict[str, Any], int]:
        """The thread's record as the caller may see it, and its revision in the bucket."""
        records.check_uuid(thread_id, "thread")
        found = await records.get(self.kv, thread_id)
        if found is None or not auth.owns(found[0].get("metadata")):
            raise records.not_found(f"Thread with ID {thread_id}")
        filters = await auth.authorize("threads", "read", {"thread_id": thread_id})
        if not auth.satisfies(found[0].get("metadata"), filters):
            raise records.not_found(f"Thread with ID {thread_id}")
        return found

    async def create(self, body: ThreadCreate) -> dict[str, Any]:
        thread_id = records.check_uuid(body.thread_id, "thread") if body.thread_id else str(uuid.uuid4())
        # A create handler may add to the metadata (a tenant, a label) before it is stored.
        value = {"thread_id": thread_id, "metadata": dict(body.metadata or {}), "if_exists": body.if_exists}
        await auth.authorize("threads", "create", value)
        now = records.iso_now()
        record = {
            "thread_id": thread_id,
            "created_at": now,
            "updated_at": now,
            "state_updated_at": now,
            "metadata": records.owned(value["metadata"]),
        }
        if await records.put_new(self.kv, thread_id, record):
            created = contracts.ThreadCreated(thread_id=thread_id, metadata=record["metadata"])
            seq = await self.log.append_event(created)
            # A new thread's log is this one event: the thread is what projecting it gives.
            row, _ = projection.project(None, created, seq)
            return rows.thread_object(row)
        if body.if_exists == "do_nothing":
            await self.record(thread_id)
            return await self.as_object(thread_id)
        raise HTTPException(409, f"Thread {thread_id} already exists")

    async def patch(self, thread_id: str, metadata: dict[str, Any] | None) -> dict[str, Any]:
        await self.record(thread_id)

        def change(record):
            current = record.get("metadata", {})
            # The owner is who created the thread, not something a patch can change.
            owner = {"owner": current["owner"]} if "owner" in current else {}
            record["metadata"] = {**current, **(metadata or {}), **owner}
            record["updated_at"] = records.iso_now()
            return record

        updated = await records.update(self.kv, thread_id, change)
        if updated is None:
            raise records.not_found(f"Thread with ID {thread_id}")
        await self.log.append_event(contracts.ThreadUpdated(thread_id=thread_id, metadata=updated["metadata"]))
        return await self.as_object(thread_id)

    async def copy(self, thread_id: str) -> dict[str, Any]:
        """A new thread with the same metadata and the whole checkpoint history (not the runs)."""
        record = await self.record(thread_id)
        copy = await self.create(ThreadCreate(metadata=record.get("metadata") or {}))
        await self.saver.acopy_thread(thread_id, copy["thread_id"])
        return await self.as_object(copy["thread_id"])

    async def delete(self, thread_id: str) -> None:
        await self.record(thread_id)
        await auth.authorize("threads", "delete", {"thread_id": thread_id})
        await self.log.delete_thread(thread_id)
        await self.kv.delete(thread_id)

    async def as_object(self, thread_id: str) -> dict[str, Any]:
        """The thread as its log says it is now: the read model's row and the events after it."""
        view = await self.reads.thread(thread_id)
        if view.row is None:
            raise records.not_found(f"Thread with ID {thread_id}")
        thread = rows.thread_object(view.row)
        if view.values_stale:
            # A run ended after the row was written: its result is in the newest checkpoint.
            thread["values"] = await self._newest_values(thread_id)
        return thread

    async def _newest_values(self, thread_id: str) -> Any:
        newest = await self.saver.aget_tuple({"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}})
        return projection.state_values(newest.checkpoint) if newest else None

    async def search(self, body: ThreadSearch | ThreadCount, *, count: bool = False) -> list[dict[str, Any]] | int:
        filters = await auth.authorize("threads", "search", {"metadata": body.metadata or {}})
        query = {
            "metadata": body.metadata,
            "values": body.values,
            "status": body.status,
            "ids": getattr(body, "ids", None),
            "required": auth.metadata_conditions(filters),
        }
        if count:
            return await self.reads.count_threads(**query)
        found = await self.reads.search_threads(
            **query, limit=body.limit, offset=body.offset, sort_by=body.sort_by, sort_order=body.sort_order
        )
        threads = [rows.thread_object(row) for row in found]
        if body.extract:
            for thread in threads:
                thread["extracted"] = {alias: extract(thread, path) for alias, path in body.extract.items()}
        if body.select:
            wanted = [*body.select, *(["extracted"] if body.extract else [])]
            threads = [{k: t.get(k) for k in wanted} for t in threads]
        return threads

    @contextlib.asynccontextmanager
    async def graph_of(self, record: dict[str, Any], access_context: str = "threads.read"):
        """The thread's graph with the log's checkpointer, None before a run chose it."""
        graph_id = (record.get("metadata") or {}).get("graph_id")
        if graph_id is None or graph_id not in self.graphs:
            yield None
            return
        config = {"configurable": {"thread_id": record["thread_id"]}}
        async with self.graphs.graph(graph_id, config, access_context=access_context, store=self.store) as graph:
            yield graph.copy(update={"checkpointer": self.saver})

    async def state(
        self, record: dict[str, Any], *, subgraphs: bool = False, checkpoint: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        async with self.graph_of(record) as graph:
            if graph is None:
                return views.empty_state()
            config = {"configurable": {**(checkpoint or {}), "thread_id": record["thread_id"]}}
            snapshot = await graph.aget_state(config, subgraphs=subgraphs)
        if not snapshot.config:
            return views.empty_state()
        return views.snapshot_object(snapshot)

    async def update_state(self, thread_id: str, values: Any, as_node: str | None, checkpoint: dict | None) -> dict:
        record = await self.record(thread_id)
        if await self.reads.in_flight(thread_id):
            raise HTTPException(409, "Thread is busy: a run is in flight; wait for it or cancel it before editing state")
        async with self.graph_of(record, "threads.update") as graph:
            if graph is None:
                raise HTTPException(400, "Thread has no graph yet: run an assistant on it first")
            config = {"configurable": {**(checkpoint or {}), "thread_id": thread_id}}
            new_config = await graph.aupdate_state(config, values, as_node=as_node)
        return {"checkpoint": views.checkpoint_object(new_config)}

    async def history(self, thread_id: str, *, limit: int, before, metadata, checkpoint) -> list[dict[str, Any]]:
        record = await self.record(thread_id)
        if isinstance(before, str):
            before = {"configurable": {"checkpoint_id": before}}
        elif isinstance(before, dict) and "configurable" not in before:
            before = {"configurable": before}
        async with self.graph_of(record) as graph:
            if graph is None:
                return []
            config = {"configurable": {**(checkpoint or {}), "thread_id": thread_id}}
            return [
                views.snapshot_object(s)
                async for s in graph.aget_state_history(config, limit=limit, before=before, filter=metadata)
            ]

    async def values(self, thread_id: str) -> Any:
        try:
            record = await self.record(thread_id)
        except HTTPException:
            return {}
        return (await self.state(record))["values"]

    async def remember_graph(self, thread_id: str, assistant: dict[str, Any], current: tuple[dict[str, Any], int]) -> None:
        """Record which graph the thread runs, as LangGraph Platform does in thread metadata
        (``current``: the record and revision just read), in the record and in the log, so that
        the read model (and any replay) knows it too. Not one atomic batch with the run's request:
        the broker stages an atomic batch of a file-backed stream on disk, several milliseconds."""
        if runrequest.with_graph(current[0], assistant, "") is None:
            return  # the common case: nothing to write
        changed = False

        def change(record):
            nonlocal changed
            updated = runrequest.with_graph(record, assistant, records.iso_now())
            changed = updated is not None  # not when a concurrent request wrote it first
            return updated

        updated = await records.update(self.kv, thread_id, change, current)
        if changed and updated is not None:
            await self.log.append_event(contracts.ThreadUpdated(thread_id=thread_id, metadata=updated["metadata"]))


_PATH_PART = re.compile(r"([^.\[\]]+)|\[(-?\d+)\]")


def extract(thread: dict[str, Any], path: str) -> Any:
    """The value at ``path`` (``values.messages[-1].content``) in a thread, or None."""
    value: Any = thread
    for key, index in _PATH_PART.findall(path):
        try:
            value = value[int(index)] if index else value[key]
        except (KeyError, IndexError, TypeError):
            return None
    return value
