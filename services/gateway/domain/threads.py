"""Threads: records in the ``tb_threads`` bucket, statuses from the thread log, state and history
from the checkpoints."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from fastapi import HTTPException

import contracts
from services.gateway import auth, views
from services.gateway.domain import records
from services.gateway.models import ThreadCreate
from threadbus.checkpointer import JetStreamSaver
from threadbus.graphs import GraphRegistry
from threadbus.threadlog import ThreadLog


class Threads:
    def __init__(self, log: ThreadLog, saver: JetStreamSaver, graphs: GraphRegistry, kv):
        self.log = log
        self.saver = saver
        self.graphs = graphs
        self.kv = kv

    async def record(self, thread_id: str) -> dict[str, Any]:
        records.check_uuid(thread_id, "thread")
        found = await records.get(self.kv, thread_id)
        if found is None or not auth.owns(found[0].get("metadata")):
            raise records.not_found(f"Thread with ID {thread_id}")
        filters = await auth.authorize("threads", "read", {"thread_id": thread_id})
        if not auth.satisfies(found[0].get("metadata"), filters):
            raise records.not_found(f"Thread with ID {thread_id}")
        return found[0]

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
            await self.log.append_event(contracts.ThreadCreated(thread_id=thread_id, metadata=record["metadata"]))
            return await self.as_object(record)
        if body.if_exists == "do_nothing":
            return await self.as_object(await self.record(thread_id))
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
        return await self.as_object(updated)

    async def copy(self, thread_id: str) -> dict[str, Any]:
        """A new thread with the same metadata and the whole checkpoint history (not the runs)."""
        record = await self.record(thread_id)
        copy = await self.create(ThreadCreate(metadata=record.get("metadata") or {}))
        await self.saver.acopy_thread(thread_id, copy["thread_id"])
        return await self.as_object(await self.record(copy["thread_id"]))

    async def delete(self, thread_id: str) -> None:
        await self.record(thread_id)
        await auth.authorize("threads", "delete", {"thread_id": thread_id})
        await self.log.delete_thread(thread_id)
        await self.kv.delete(thread_id)

    async def as_object(self, record: dict[str, Any], runs: views.ThreadRuns | None = None) -> dict[str, Any]:
        thread_id = record["thread_id"]
        runs = runs or await views.thread_runs(self.log, thread_id)
        state = await self.state(record)
        interrupts: dict[str, list] = {}
        for task in state["tasks"]:
            if task["interrupts"]:
                interrupts[task["id"]] = task["interrupts"]
        failure = runs.last_outcome if isinstance(runs.last_outcome, contracts.RunFailed) else None
        return {
            "thread_id": thread_id,
            "created_at": record["created_at"],
            "updated_at": record["updated_at"],
            "state_updated_at": state["created_at"] or record.get("state_updated_at", record["updated_at"]),
            "metadata": record.get("metadata", {}),
            "status": runs.state.status,
            "config": {},
            "values": state["values"] if state["checkpoint"] else None,
            "interrupts": interrupts,
            "error": {"error": failure.error, "message": failure.message} if failure and runs.state.status == "error" else None,
        }

    async def search(self, *, metadata=None, values=None, status=None, ids=None) -> list[dict[str, Any]]:
        filters = await auth.authorize("threads", "search", {"metadata": metadata or {}})
        found = [
            r
            for r in await records.all_records(self.kv)
            if auth.owns(r.get("metadata"))
            and auth.satisfies(r.get("metadata"), filters)
            and records.matches(r.get("metadata") or {}, metadata)
        ]
        if ids is not None:
            found = [r for r in found if r["thread_id"] in set(ids)]
        objects = await asyncio.gather(*(self.as_object(r) for r in found))
        return [
            t
            for t in objects
            if (status is None or t["status"] == status) and (not values or records.matches(t["values"] or {}, values))
        ]

    async def _graph(self, record: dict[str, Any]):
        graph_id = (record.get("metadata") or {}).get("graph_id")
        if graph_id is None or graph_id not in self.graphs:
            return None
        graph = await self.graphs.build(graph_id, {"configurable": {"thread_id": record["thread_id"]}})
        return graph.copy(update={"checkpointer": self.saver})

    async def state(
        self, record: dict[str, Any], *, subgraphs: bool = False, checkpoint: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        graph = await self._graph(record)
        if graph is None:
            return views.empty_state()
        config = {"configurable": {**(checkpoint or {}), "thread_id": record["thread_id"]}}
        snapshot = await graph.aget_state(config, subgraphs=subgraphs)
        if not snapshot.config:
            return views.empty_state()
        return views.snapshot_object(snapshot)

    async def update_state(self, thread_id: str, values: Any, as_node: str | None, checkpoint: dict | None) -> dict:
        record = await self.record(thread_id)
        runs = await views.thread_runs(self.log, thread_id)
        if runs.state.in_flight or runs.state.running:
            raise HTTPException(409, "Thread is busy: a run is in flight; wait for it or cancel it before editing state")
        graph = await self._graph(record)
        if graph is None:
            raise HTTPException(400, "Thread has no graph yet: run an assistant on it first")
        config = {"configurable": {**(checkpoint or {}), "thread_id": thread_id}}
        new_config = await graph.aupdate_state(config, values, as_node=as_node)
        return {"checkpoint": views.checkpoint_object(new_config)}

    async def history(self, thread_id: str, *, limit: int, before, metadata, checkpoint) -> list[dict[str, Any]]:
        record = await self.record(thread_id)
        graph = await self._graph(record)
        if graph is None:
            return []
        config = {"configurable": {**(checkpoint or {}), "thread_id": thread_id}}
        if isinstance(before, str):
            before = {"configurable": {"checkpoint_id": before}}
        elif isinstance(before, dict) and "configurable" not in before:
            before = {"configurable": before}
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

    async def remember_graph(self, thread_id: str, assistant: dict[str, Any]) -> None:
        """Record which graph the thread runs, as LangGraph Platform does in thread metadata."""
        wanted = {"graph_id": assistant["graph_id"], "assistant_id": assistant["assistant_id"]}

        def change(r):
            meta = r.get("metadata") or {}
            if all(meta.get(k) == v for k, v in wanted.items()):
                return None
            r["metadata"] = {**meta, **wanted}
            r["updated_at"] = records.iso_now()
            return r

        await records.update(self.kv, thread_id, change)
