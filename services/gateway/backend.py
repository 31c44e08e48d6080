"""What the HTTP routes do, against the broker: the gateway's whole behaviour, minus HTTP.

Thread and assistant records live in KV buckets (written here, with revision checks); runs exist
only as events in the thread log. A run is created by appending ``RunRequested`` and waiting for
the orchestrator's ``RunAccepted`` or ``RunRejected``; its end is observed on the same subjects.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import Any

import nats.js.errors
import orjson
from fastapi import HTTPException
from nats.aio.client import Client as NATS

import contracts
from contracts import subjects
from services.gateway import auth, views
from services.gateway.models import AssistantCreate, AssistantPatch, RunCreate, ThreadCreate
from threadbus import broker, logs
from threadbus.checkpointer import JetStreamSaver
from threadbus.graphs import GraphRegistry, assistant_id_for
from threadbus.settings import Settings
from threadbus.store import open_store
from threadbus.threadlog import ThreadLog

log = logs.get("threadbus.gateway")

IN_FLIGHT = ("pending", "running")


def iso_now() -> str:
    return datetime.now(timezone.utc).isoformat()


def not_found(what: str) -> HTTPException:
    return HTTPException(404, f"{what} not found")


def check_uuid(value: str, what: str) -> str:
    try:
        uuid.UUID(value)
    except ValueError:
        raise HTTPException(422, f"Invalid {what} ID: must be a UUID") from None
    return value


def matches(record: dict[str, Any], wanted: dict[str, Any] | None) -> bool:
    return not wanted or all(record.get(k) == v for k, v in wanted.items())


def merge_config(base: dict[str, Any] | None, override: dict[str, Any] | None) -> dict[str, Any]:
    merged = {**(base or {}), **(override or {})}
    configurable = {**((base or {}).get("configurable") or {}), **((override or {}).get("configurable") or {})}
    if configurable:
        merged["configurable"] = configurable
    return merged


def _owned(metadata: dict[str, Any]) -> dict[str, Any]:
    identity = auth.current_identity.get()
    return metadata if identity is None else {**metadata, "owner": identity}


def _version_key(assistant_id: str, version: int) -> str:
    return f"{assistant_id}.{version}"


class Backend:
    def __init__(self, nc: NATS, settings: Settings, graphs: GraphRegistry):
        self.nc = nc
        self.settings = settings
        self.graphs = graphs
        self.log = ThreadLog(nc)
        self.js = nc.jetstream()
        self.saver = JetStreamSaver(self.log)

    async def start(self) -> None:
        await broker.bootstrap(self.nc, self.settings)
        js = self.nc.jetstream()
        self.threads_kv = await js.key_value(broker.THREADS_BUCKET)
        self.assistants_kv = await js.key_value(broker.ASSISTANTS_BUCKET)
        self.versions_kv = await js.key_value(broker.ASSISTANT_VERSIONS_BUCKET)
        self.store = await open_store(js, self.graphs.raw)
        for graph_id in self.graphs.ids():
            record = self._assistant_record(graph_id, system=True)
            if await self._put_new(self.assistants_kv, record["assistant_id"], record):
                await self._save_version(record)

    # -- KV helpers ---------------------------------------------------------------------------
    @staticmethod
    async def _get(kv, key: str) -> tuple[dict[str, Any], int] | None:
        try:
            entry = await kv.get(key)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        if not entry.value:
            return None
        return orjson.loads(entry.value), entry.revision

    @staticmethod
    async def _put_new(kv, key: str, record: dict[str, Any]) -> bool:
        try:
            await kv.create(key, orjson.dumps(record))
            return True
        except nats.js.errors.KeyWrongLastSequenceError:
            return False

    async def _update(self, kv, key: str, change) -> dict[str, Any] | None:
        """Read-modify-write with a revision check, retried on a concurrent update.

        ``change`` returns None when the record already says what it would write, so writers that
        race to set the same value stop at the first re-read instead of exhausting the retries.
        """
        for _ in range(10):
            current = await self._get(kv, key)
            if current is None:
                return None
            record, revision = current
            updated = change(dict(record))
            if updated is None:
                return record
            try:
                await kv.update(key, orjson.dumps(updated), last=revision)
                return updated
            except nats.js.errors.KeyWrongLastSequenceError:
                continue
        raise HTTPException(409, f"{key} is being updated concurrently; try again")

    @staticmethod
    async def _all(kv) -> list[dict[str, Any]]:
        try:
            keys = await kv.keys()
        except nats.js.errors.NoKeysError:
            return []
        records = await asyncio.gather(*(Backend._get(kv, k) for k in keys))
        return [r for r, _ in filter(None, records)]

    # -- assistants ---------------------------------------------------------------------------
    def _assistant_record(self, graph_id: str, *, system: bool = False, **fields: Any) -> dict[str, Any]:
        now = iso_now()
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

    async def get_assistant(self, assistant_id: str) -> dict[str, Any]:
        if assistant_id in self.graphs:
            assistant_id = assistant_id_for(assistant_id)
        else:
            check_uuid(assistant_id, "assistant")
        found = await self._get(self.assistants_kv, assistant_id)
        if found is None:
            raise not_found(f"Assistant {assistant_id}")
        return found[0]

    async def run_assistant(self, assistant_id: str) -> dict[str, Any]:
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
        try:
            return await self.get_assistant(assistant_id)
        except HTTPException as err:
            if err.status_code == 404:
                raise HTTPException(404, "Thread or assistant not found.") from None
            raise

    async def create_assistant(self, body: AssistantCreate) -> dict[str, Any]:
        if body.graph_id not in self.graphs:
            raise HTTPException(404, f"Graph {body.graph_id!r} not found. Expected one of: {sorted(self.graphs.ids())}")
        assistant_id = check_uuid(body.assistant_id, "assistant") if body.assistant_id else str(uuid.uuid4())
        record = self._assistant_record(
            body.graph_id,
            assistant_id=assistant_id,
            config=body.config,
            context=body.context,
            metadata=body.metadata,
            name=body.name or "Untitled",
            description=body.description,
        )
        if await self._put_new(self.assistants_kv, assistant_id, record):
            await self._save_version(record)
            return record
        if body.if_exists == "do_nothing":
            return await self.get_assistant(assistant_id)
        raise HTTPException(409, f"Assistant {assistant_id} already exists")

    async def patch_assistant(self, assistant_id: str, body: AssistantPatch) -> dict[str, Any]:
        """A new version with the changes (metadata merged, the rest replaced), made the active one."""
        if body.graph_id is not None and body.graph_id not in self.graphs:
            raise HTTPException(404, f"Graph {body.graph_id!r} not found")
        changes = body.model_dump(exclude_none=True, exclude={"metadata"})
        if not body.config:
            changes.pop("config", None)
        for _ in range(10):
            current = await self.get_assistant(assistant_id)
            aid = current["assistant_id"]
            found = await self._get(self.assistants_kv, aid)
            if found is None:
                raise not_found(f"Assistant {assistant_id}")
            record, revision = found
            versions = await self.assistant_versions(aid)
            record.update(changes)
            record["metadata"] = {**(record.get("metadata") or {}), **(body.metadata or {})}
            record["version"] = max((v["version"] for v in versions), default=0) + 1
            record["updated_at"] = iso_now()
            # The version first: an active record always has its version stored.
            if not await self._put_new(self.versions_kv, _version_key(aid, record["version"]), record):
                continue  # a concurrent patch took this number
            try:
                await self.assistants_kv.update(aid, orjson.dumps(record), last=revision)
                return record
            except nats.js.errors.KeyWrongLastSequenceError:
                continue
        raise HTTPException(409, f"Assistant {assistant_id} is being updated concurrently; try again")

    async def _save_version(self, record: dict[str, Any]) -> None:
        await self.versions_kv.put(_version_key(record["assistant_id"], record["version"]), orjson.dumps(record))

    async def assistant_versions(self, assistant_id: str, metadata: dict | None = None) -> list[dict[str, Any]]:
        """Every stored version of the assistant, newest first."""
        watcher = await self.versions_kv.watch(f"{assistant_id}.*", ignore_deletes=True)
        versions = []
        try:
            async for entry in watcher:
                if entry is None:
                    break
                versions.append(orjson.loads(entry.value))
        finally:
            await watcher.stop()
        versions = [v for v in versions if matches(v.get("metadata") or {}, metadata)]
        return sorted(versions, key=lambda v: v["version"], reverse=True)

    async def set_latest_version(self, assistant_id: str, version: int) -> dict[str, Any]:
        current = await self.get_assistant(assistant_id)
        aid = current["assistant_id"]
        found = await self._get(self.versions_kv, _version_key(aid, version))
        if found is None:
            raise not_found(f"Version {version} of assistant {assistant_id}")
        chosen = found[0]

        def change(record):
            return {**chosen, "created_at": record["created_at"], "updated_at": iso_now()}

        return await self._update(self.assistants_kv, aid, change) or chosen

    async def delete_assistant(self, assistant_id: str) -> None:
        current = await self.get_assistant(assistant_id)
        await self.assistants_kv.delete(current["assistant_id"])
        for version in await self.assistant_versions(current["assistant_id"]):
            await self.versions_kv.purge(_version_key(current["assistant_id"], version["version"]))

    async def search_assistants(self, graph_id=None, metadata=None, name=None) -> list[dict[str, Any]]:
        found = [
            a
            for a in await self._all(self.assistants_kv)
            if (graph_id is None or a["graph_id"] == graph_id)
            and matches(a.get("metadata") or {}, metadata)
            and (name is None or name.lower() in (a.get("name") or "").lower())
        ]
        return sorted(found, key=lambda a: a["created_at"], reverse=True)

    async def graph_for(self, assistant: dict[str, Any], config: dict[str, Any] | None = None):
        return await self.graphs.build(assistant["graph_id"], merge_config(assistant.get("config"), config))

    # -- threads ------------------------------------------------------------------------------
    async def thread_record(self, thread_id: str) -> dict[str, Any]:
        check_uuid(thread_id, "thread")
        found = await self._get(self.threads_kv, thread_id)
        if found is None or not auth.owns(found[0].get("metadata")):
            raise not_found(f"Thread with ID {thread_id}")
        filters = await auth.authorize("threads", "read", {"thread_id": thread_id})
        if not auth.satisfies(found[0].get("metadata"), filters):
            raise not_found(f"Thread with ID {thread_id}")
        return found[0]

    async def thread_exists(self, thread_id: str) -> bool:
        """Whether the thread has a record, whoever owns it."""
        return await self._get(self.threads_kv, thread_id) is not None

    async def create_thread(self, body: ThreadCreate) -> dict[str, Any]:
        thread_id = check_uuid(body.thread_id, "thread") if body.thread_id else str(uuid.uuid4())
        # A create handler may add to the metadata (a tenant, a label) before it is stored.
        value = {"thread_id": thread_id, "metadata": dict(body.metadata or {}), "if_exists": body.if_exists}
        await auth.authorize("threads", "create", value)
        now = iso_now()
        record = {
            "thread_id": thread_id,
            "created_at": now,
            "updated_at": now,
            "state_updated_at": now,
            "metadata": _owned(value["metadata"]),
        }
        if await self._put_new(self.threads_kv, thread_id, record):
            await self.log.append_event(contracts.ThreadCreated(thread_id=thread_id, metadata=record["metadata"]))
            return await self.thread_object(record)
        if body.if_exists == "do_nothing":
            return await self.thread_object(await self.thread_record(thread_id))
        raise HTTPException(409, f"Thread {thread_id} already exists")

    async def patch_thread(self, thread_id: str, metadata: dict[str, Any] | None) -> dict[str, Any]:
        await self.thread_record(thread_id)

        def change(record):
            current = record.get("metadata", {})
            # The owner is who created the thread, not something a patch can change.
            owner = {"owner": current["owner"]} if "owner" in current else {}
            record["metadata"] = {**current, **(metadata or {}), **owner}
            record["updated_at"] = iso_now()
            return record

        updated = await self._update(self.threads_kv, thread_id, change)
        if updated is None:
            raise not_found(f"Thread with ID {thread_id}")
        await self.log.append_event(contracts.ThreadUpdated(thread_id=thread_id, metadata=updated["metadata"]))
        return await self.thread_object(updated)

    async def copy_thread(self, thread_id: str) -> dict[str, Any]:
        """A new thread with the same metadata and the whole checkpoint history (not the runs)."""
        record = await self.thread_record(thread_id)
        copy = await self.create_thread(ThreadCreate(metadata=record.get("metadata") or {}))
        await self.saver.acopy_thread(thread_id, copy["thread_id"])
        return await self.thread_object(await self.thread_record(copy["thread_id"]))

    async def delete_thread(self, thread_id: str) -> None:
        await self.thread_record(thread_id)
        await auth.authorize("threads", "delete", {"thread_id": thread_id})
        await self.log.delete_thread(thread_id)
        await self.threads_kv.delete(thread_id)

    async def thread_object(self, record: dict[str, Any], runs: views.ThreadRuns | None = None) -> dict[str, Any]:
        thread_id = record["thread_id"]
        runs = runs or await views.thread_runs(self.log, thread_id)
        state = await self.thread_state(record)
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

    async def search_threads(self, *, metadata=None, values=None, status=None, ids=None) -> list[dict[str, Any]]:
        filters = await auth.authorize("threads", "search", {"metadata": metadata or {}})
        records = [
            r
            for r in await self._all(self.threads_kv)
            if auth.owns(r.get("metadata"))
            and auth.satisfies(r.get("metadata"), filters)
            and matches(r.get("metadata") or {}, metadata)
        ]
        if ids is not None:
            records = [r for r in records if r["thread_id"] in set(ids)]
        objects = await asyncio.gather(*(self.thread_object(r) for r in records))
        return [
            t
            for t in objects
            if (status is None or t["status"] == status) and (not values or matches(t["values"] or {}, values))
        ]

    async def _thread_graph(self, record: dict[str, Any]):
        graph_id = (record.get("metadata") or {}).get("graph_id")
        if graph_id is None or graph_id not in self.graphs:
            return None
        graph = await self.graphs.build(graph_id, {"configurable": {"thread_id": record["thread_id"]}})
        return graph.copy(update={"checkpointer": self.saver})

    async def thread_state(
        self, record: dict[str, Any], *, subgraphs: bool = False, checkpoint: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        graph = await self._thread_graph(record)
        if graph is None:
            return views.empty_state()
        config = {"configurable": {**(checkpoint or {}), "thread_id": record["thread_id"]}}
        snapshot = await graph.aget_state(config, subgraphs=subgraphs)
        if not snapshot.config:
            return views.empty_state()
        return views.snapshot_object(snapshot)

    async def update_state(self, thread_id: str, values: Any, as_node: str | None, checkpoint: dict | None) -> dict:
        record = await self.thread_record(thread_id)
        runs = await views.thread_runs(self.log, thread_id)
        if runs.state.in_flight or runs.state.running:
            raise HTTPException(409, "Thread is busy: a run is in flight; wait for it or cancel it before editing state")
        graph = await self._thread_graph(record)
        if graph is None:
            raise HTTPException(400, "Thread has no graph yet: run an assistant on it first")
        config = {"configurable": {**(checkpoint or {}), "thread_id": thread_id}}
        new_config = await graph.aupdate_state(config, values, as_node=as_node)
        return {"checkpoint": views.checkpoint_object(new_config)}

    async def history(self, thread_id: str, *, limit: int, before, metadata, checkpoint) -> list[dict[str, Any]]:
        record = await self.thread_record(thread_id)
        graph = await self._thread_graph(record)
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

    # -- runs ---------------------------------------------------------------------------------
    @asynccontextmanager
    async def run_events(self, thread_id: str, run_id: str) -> AsyncIterator[AsyncIterator[contracts.Event]]:
        async with self.log.follow(subjects.run_control(thread_id, run_id)) as entries:

            async def events():
                async for entry in entries:
                    yield entry.event()

            yield events()

    async def prepare_run(
        self, thread_id: str, body: RunCreate, *, temporary: bool = False, run_id: str | None = None
    ) -> contracts.RunRequested:
        if body.webhook and not body.webhook.startswith(("http://", "https://")):
            raise HTTPException(422, f"webhook must be an http(s) URL, got {body.webhook!r}")
        assistant = await self.run_assistant(body.assistant_id)
        if not temporary:
            try:
                await self.thread_record(thread_id)
            except HTTPException as err:
                if err.status_code != 404:
                    raise
                if body.if_not_exists != "create":
                    raise HTTPException(404, "Thread or assistant not found.") from None
                await self.create_thread(ThreadCreate(thread_id=thread_id, if_exists="do_nothing"))
            await self._remember_graph(thread_id, assistant)
        stream_mode = body.stream_mode or ["values"]
        config = merge_config(assistant.get("config"), body.config)
        return contracts.RunRequested(
            thread_id=thread_id,
            run_id=run_id or str(uuid.uuid4()),
            assistant_id=assistant["assistant_id"],
            graph_id=assistant["graph_id"],
            multitask_strategy=body.multitask_strategy or "enqueue",
            metadata={**(assistant.get("metadata") or {}), **(body.metadata or {}), "assistant_id": assistant["assistant_id"]},
            kwargs=contracts.RunKwargs(
                input=body.input,
                command=body.command.model_dump(exclude_none=True) if body.command else None,
                config=config,
                context={**(assistant.get("context") or {}), **(body.context or {})},
                stream_mode=[stream_mode] if isinstance(stream_mode, str) else list(stream_mode),
                interrupt_before=body.interrupt_before or config.get("interrupt_before"),
                interrupt_after=body.interrupt_after or config.get("interrupt_after"),
                checkpoint_id=body.checkpoint_id,
                checkpoint=body.checkpoint,
                webhook=body.webhook,
                subgraphs=body.stream_subgraphs,
                resumable=body.stream_resumable,
                temporary=temporary,
            ),
        )

    async def _remember_graph(self, thread_id: str, assistant: dict[str, Any]) -> None:
        """Record which graph the thread runs, as LangGraph Platform does in thread metadata."""
        wanted = {"graph_id": assistant["graph_id"], "assistant_id": assistant["assistant_id"]}

        def change(r):
            meta = r.get("metadata") or {}
            if all(meta.get(k) == v for k, v in wanted.items()):
                return None
            r["metadata"] = {**meta, **wanted}
            r["updated_at"] = iso_now()
            return r

        await self._update(self.threads_kv, thread_id, change)

    async def submit(self, request: contracts.RunRequested, events: AsyncIterator[contracts.Event]) -> dict[str, Any]:
        """Append the request and wait for the orchestrator's decision; 409 when it rejects."""
        await self.log.append_event(request)
        try:
            async with asyncio.timeout(self.settings.decision_timeout_s):
                async for event in events:
                    if isinstance(event, contracts.RunRejected):
                        log.info("run rejected", thread_id=request.thread_id, run_id=request.run_id, reason=event.reason)
                        raise HTTPException(400 if event.reason == "not_paused" else 409, event.detail)
                    if isinstance(event, contracts.RunAccepted):
                        break
        except TimeoutError:
            # The request is in the log and will be decided; answer with what is known.
            log.warning("no decision in time", thread_id=request.thread_id, run_id=request.run_id)
        log.info("run accepted", thread_id=request.thread_id, run_id=request.run_id, strategy=request.multitask_strategy)
        return views.run_object(views.RunRecord(requested=request, updated_at=request.at), "pending")

    async def result_values(self, thread_id: str, outcome: contracts.Event) -> Any:
        """What ``wait`` and ``join`` return: the final values, with ``__interrupt__`` or ``__error__``."""
        match outcome:
            case contracts.RunSucceeded(values=values):
                return values
            case contracts.RunInterrupted(values=values, interrupts=interrupts):
                flat = [i for group in interrupts.values() for i in group]
                if not flat:  # paused by interrupt_before/after: no interrupt values to show
                    return values
                return {**(values if isinstance(values, dict) else {}), "__interrupt__": flat}
            case contracts.RunFailed(error=error, message=message):
                return {"__error__": {"error": error, "message": message}}
        return await self.values_of(thread_id)

    async def values_of(self, thread_id: str) -> Any:
        try:
            record = await self.thread_record(thread_id)
        except HTTPException:
            return {}
        return (await self.thread_state(record))["values"]

    async def request_cancel(self, thread_id: str, run_id: str, action: str) -> None:
        await self.log.append_event(contracts.RunCancelRequested(thread_id=thread_id, run_id=run_id, action=action))
        log.info("run cancel requested", thread_id=thread_id, run_id=run_id, action=action)

    async def find_run(self, thread_id: str, run_id: str) -> tuple[views.ThreadRuns, dict[str, Any]]:
        await self.thread_record(thread_id)
        check_uuid(run_id, "run")
        runs = await views.thread_runs(self.log, thread_id)
        status = runs.status_of(run_id)
        if status is None or run_id not in runs.runs:
            raise HTTPException(404, "Run not found")
        return runs, views.run_object(runs.runs[run_id], status)

    async def cancel(self, thread_id: str, run_id: str, action: str, wait: bool) -> None:
        _, run = await self.find_run(thread_id, run_id)
        if run["status"] not in IN_FLIGHT:
            raise HTTPException(
                404,
                "No matching runs to cancel. Please verify the thread ID and run IDs are correct,"
                f" and the runs haven't been deleted or completed (run {run_id} is {run['status']}).",
            )
        async with self.run_events(thread_id, run_id) as events:
            await self.request_cancel(thread_id, run_id, action)
            if not wait:
                return
            await views.outcome(events)

    async def cancel_many(self, thread_id: str | None, run_ids: Iterable[str] | None, status: str | None, action: str) -> None:
        if thread_id is None:
            raise HTTPException(422, "thread_id is required")
        runs = await views.thread_runs(self.log, thread_id)
        wanted = IN_FLIGHT if status in (None, "all") else (status,)
        targets = [
            rid for rid, st in runs.state.statuses.items() if st in wanted and (run_ids is None or rid in run_ids)
        ]
        for rid in targets:
            await self.request_cancel(thread_id, rid, action)

    async def delete_run(self, thread_id: str, run_id: str) -> None:
        _, run = await self.find_run(thread_id, run_id)
        if run["status"] in IN_FLIGHT:
            raise HTTPException(409, f"Run {run_id} is {run['status']}; cancel it before deleting it")
        # Its checkpoints stay: they are part of the thread's state and history.
        await self.log.purge(subjects.run_control(thread_id, run_id))
