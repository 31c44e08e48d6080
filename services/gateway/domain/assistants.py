"""Assistants: records in the ``tb_assistants`` bucket, every version in ``tb_assistant_versions``.
A graph of ``langgraph.json`` is an assistant too, created at start with a deterministic id."""

from __future__ import annotations

import uuid
from typing import Any

import nats.js.errors
import orjson
from fastapi import HTTPException

from services.gateway.domain import records
from services.gateway.models import AssistantCreate, AssistantPatch
from threadbus import broker, runrequest
from threadbus.graphs import GraphRegistry, assistant_id_for
from threadbus.kv_mirror import KVMirror


def version_key(assistant_id: str, version: int) -> str:
    return f"{assistant_id}.{version}"


class Assistants:
    def __init__(self, graphs: GraphRegistry, kv, versions_kv):
        self.graphs = graphs
        self.kv = kv
        self.versions_kv = versions_kv
        # Every run names an assistant: answered from memory, kept current by a watch of the bucket.
        self.mirror = KVMirror(kv, "assistants")

    async def start(self) -> None:
        await self.mirror.start()

    async def stop(self) -> None:
        await self.mirror.stop()

    async def register_graphs(self) -> None:
        """Every graph of ``langgraph.json`` as a system assistant, once."""
        for graph_id in self.graphs.ids():
            record = self.new_record(graph_id, system=True)
            if await records.put_new(self.kv, record["assistant_id"], record):
                await self._save_version(record)

    def new_record(self, graph_id: str, *, system: bool = False, **fields: Any) -> dict[str, Any]:
        now = records.iso_now()
        return {
            "assistant_id": fields.get("assistant_id") or assistant_id_for(graph_id),
            "graph_id": graph_id,
            "config": fields.get("config") or {},
            "context": fields.get("context") or {},
            "metadata": fields.get("metadata") or ({"created_by": "system"} if system else {}),
            "name": fields.get("name") or graph_id,
            "description": fields.get("description"),
            "version": 1,
            "created_at": now,
            "updated_at": now,
        }

    async def get(self, assistant_id: str) -> dict[str, Any]:
        if assistant_id in self.graphs:
            assistant_id = assistant_id_for(assistant_id)
        else:
            records.check_uuid(assistant_id, "assistant")
        found = await records.get(self.kv, assistant_id)
        if found is None:
            raise records.not_found(f"Assistant {assistant_id}")
        return found[0]

    async def for_run(self, assistant_id: str) -> dict[str, Any]:
        """The assistant a run names: a graph name or an assistant UUID."""
        if assistant_id not in self.graphs:
            try:
                uuid.UUID(assistant_id)
            except ValueError:
                raise HTTPException(
                    422,
                    f"Invalid assistant: {assistant_id!r}. Must be either:\n- A valid assistant UUID, or\n"
                    f"- One of the registered graphs: {', '.join(self.graphs.ids())}",
                ) from None
        cached = self.mirror.get(assistant_id_for(assistant_id) if assistant_id in self.graphs else assistant_id)
        if cached is not None:
            return cached[0]
        try:
            return await self.get(assistant_id)
        except HTTPException as err:
            if err.status_code == 404:
                raise HTTPException(404, "Thread or assistant not found.") from None
            raise

    async def create(self, body: AssistantCreate) -> dict[str, Any]:
        if body.graph_id not in self.graphs:
            raise HTTPException(404, f"Graph {body.graph_id!r} not found. Expected one of: {sorted(self.graphs.ids())}")
        assistant_id = records.check_uuid(body.assistant_id, "assistant") if body.assistant_id else str(uuid.uuid4())
        record = self.new_record(
            body.graph_id,
            assistant_id=assistant_id,
            config=body.config,
            context=body.context,
            metadata=body.metadata,
            name=body.name or "Untitled",
            description=body.description,
        )
        if await records.put_new(self.kv, assistant_id, record):
            await self._save_version(record)
            return record
        if body.if_exists == "do_nothing":
            return await self.get(assistant_id)
        raise HTTPException(409, f"Assistant {assistant_id} already exists")

    async def patch(self, assistant_id: str, body: AssistantPatch) -> dict[str, Any]:
        """A new version with the changes (metadata merged, the rest replaced), made the active one."""
        if body.graph_id is not None and body.graph_id not in self.graphs:
            raise HTTPException(404, f"Graph {body.graph_id!r} not found")
        changes = body.model_dump(exclude_none=True, exclude={"metadata"})
        if not body.config:
            changes.pop("config", None)
        for _ in range(10):
            current = await self.get(assistant_id)
            aid = current["assistant_id"]
            found = await records.get(self.kv, aid)
            if found is None:
                raise records.not_found(f"Assistant {assistant_id}")
            record, revision = found
            versions = await self.versions(aid)
            record.update(changes)
            record["metadata"] = {**(record.get("metadata") or {}), **(body.metadata or {})}
            record["version"] = max((v["version"] for v in versions), default=0) + 1
            record["updated_at"] = records.iso_now()
            # The version first: an active record always has its version stored.
            if not await records.put_new(self.versions_kv, version_key(aid, record["version"]), record):
                continue  # a concurrent patch took this number
            try:
                self.mirror.invalidate(aid)
                await self.kv.update(aid, orjson.dumps(record), last=revision)
                return record
            except nats.js.errors.KeyWrongLastSequenceError:
                continue
        raise HTTPException(409, f"Assistant {assistant_id} is being updated concurrently; try again")

    async def _save_version(self, record: dict[str, Any]) -> None:
        await self.versions_kv.put(version_key(record["assistant_id"], record["version"]), orjson.dumps(record))

    async def versions(self, assistant_id: str, metadata: dict | None = None) -> list[dict[str, Any]]:
        """Every stored version of the assistant, newest first."""
        versions = [orjson.loads(entry.value) for entry in await broker.kv_scan(self.versions_kv, f"{assistant_id}.*")]
        versions = [v for v in versions if records.matches(v.get("metadata") or {}, metadata)]
        return sorted(versions, key=lambda v: v["version"], reverse=True)

    async def set_latest_version(self, assistant_id: str, version: int) -> dict[str, Any]:
        current = await self.get(assistant_id)
        aid = current["assistant_id"]
        found = await records.get(self.versions_kv, version_key(aid, version))
        if found is None:
            raise records.not_found(f"Version {version} of assistant {assistant_id}")
        chosen = found[0]

        def change(record):
            return {**chosen, "created_at": record["created_at"], "updated_at": records.iso_now()}

        self.mirror.invalidate(aid)
        return await records.update(self.kv, aid, change) or chosen

    async def delete(self, assistant_id: str) -> None:
        current = await self.get(assistant_id)
        self.mirror.invalidate(current["assistant_id"])
        await self.kv.delete(current["assistant_id"])
        for version in await self.versions(current["assistant_id"]):
            await self.versions_kv.purge(version_key(current["assistant_id"], version["version"]))

    async def search(self, graph_id=None, metadata=None, name=None) -> list[dict[str, Any]]:
        found = [
            a
            for a in await records.all_records(self.kv)
            if (graph_id is None or a["graph_id"] == graph_id)
            and records.matches(a.get("metadata") or {}, metadata)
            and (name is None or name.lower() in (a.get("name") or "").lower())
        ]
        return sorted(found, key=lambda a: a["created_at"], reverse=True)

    def graph_for(self, assistant: dict[str, Any], config: dict[str, Any] | None = None, store: Any = None):
        """The assistant's graph for introspection, as an async context manager."""
        config = runrequest.merge_config(assistant.get("config"), config)
        return self.graphs.graph(assistant["graph_id"], config, access_context="assistants.read", store=store)
