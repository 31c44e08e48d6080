"""Crons: runs on a schedule, kept in the ``tb_crons`` KV bucket and fired by the gateways.

Every gateway ticks; a due cron fires with a run id derived from the cron and the scheduled
time, so when two gateways (or one that restarted halfway) fire the same occurrence, the
second ``RunRequested`` is a duplicate the stream drops (its ``Nats-Msg-Id`` is the same).
Then the cron's ``next_run_date`` moves on with a revision check: one writer wins, the others
read the new date on their next tick. A thread cron runs on its thread (its multitask
strategy applies to overlapping occurrences); a stateless cron runs each occurrence on a new
thread, deleted afterwards unless ``on_run_completed`` is ``keep``.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import datetime, timezone
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import nats.js.errors
import orjson
from croniter import croniter
from fastapi import APIRouter, HTTPException, Request, Response
from pydantic import Field

from services.gateway import auth
from services.gateway.models import Body, RunCreate, ThreadCreate
from threadbus import logs
from threadbus.kv_mirror import KVMirror

log = logs.get("threadbus.gateway.crons")
router = APIRouter(tags=["crons"])

_OCCURRENCE = uuid.UUID("8f5cbb62-3a2e-4c47-9a8e-4d2f6c1b7e01")  # namespace of occurrence ids


class CronCreate(RunCreate):
    schedule: str
    timezone: str | None = None
    end_time: datetime | None = None
    enabled: bool = True
    on_run_completed: Literal["delete", "keep"] | None = None


class CronPatch(Body):
    schedule: str | None = None
    timezone: str | None = None
    end_time: datetime | None = None
    enabled: bool | None = None
    input: Any = None
    metadata: dict[str, Any] | None = None
    config: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    webhook: str | None = None
    on_run_completed: Literal["delete", "keep"] | None = None


class CronSearch(Body):
    assistant_id: str | None = None
    thread_id: str | None = None
    enabled: bool | None = None
    metadata: dict[str, Any] | None = None
    limit: int = Field(10, ge=1, le=1000)
    offset: int = Field(0, ge=0)
    sort_by: str | None = None
    sort_order: Literal["asc", "desc"] | None = None
    select: list[str] | None = None


def _zone(name: str | None):
    try:
        return ZoneInfo(name) if name else timezone.utc
    except ZoneInfoNotFoundError:
        raise HTTPException(422, f"Unknown timezone {name!r}") from None


def next_run(schedule: str, zone: str | None, after: datetime) -> datetime:
    if not croniter.is_valid(schedule):
        raise HTTPException(422, f"Invalid cron schedule {schedule!r}")
    return croniter(schedule, after.astimezone(_zone(zone))).get_next(datetime).astimezone(timezone.utc)


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Crons:
    def __init__(self, backend, kv):
        self.backend = backend
        self.kv = kv
        # Every tick reads every cron: from memory, kept current by one watch of the bucket.
        self.mirror = KVMirror(kv, "crons")

    async def start(self) -> None:
        await self.mirror.start()

    async def stop(self) -> None:
        await self.mirror.stop()

    async def all(self) -> list[tuple[dict[str, Any], int]]:
        return list(self.mirror.items())

    async def get(self, cron_id: str) -> tuple[dict[str, Any], int]:
        try:
            entry = await self.kv.get(cron_id)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError, nats.js.errors.InvalidKeyError):
            entry = None
        record = orjson.loads(entry.value) if entry and entry.value else None
        if record is None or not _visible(record):
            raise HTTPException(404, f"Cron {cron_id} not found")
        return record, entry.revision

    async def create(self, body: CronCreate, thread_id: str | None) -> dict[str, Any]:
        if thread_id is not None:
            await self.backend.threads.record(thread_id)  # exists, and is the caller's
        await self.backend.assistants.for_run(body.assistant_id)
        now = _now()
        payload = body.model_dump(
            exclude_none=True, exclude={"schedule", "timezone", "end_time", "enabled", "on_run_completed"}
        )
        record = {
            "cron_id": str(uuid.uuid4()),
            "assistant_id": body.assistant_id,
            "thread_id": thread_id,
            "schedule": body.schedule,
            "timezone": body.timezone,
            "end_time": body.end_time.isoformat() if body.end_time else None,
            "enabled": body.enabled,
            "on_run_completed": body.on_run_completed if thread_id is None else None,
            "payload": payload,
            "metadata": body.metadata or {},
            "user_id": auth.current_identity.get(),
            "created_at": now.isoformat(),
            "updated_at": now.isoformat(),
            "next_run_date": next_run(body.schedule, body.timezone, now).isoformat(),
        }
        revision = await self.kv.create(record["cron_id"], orjson.dumps(record))
        self.mirror.note(record["cron_id"], revision, record)
        log.info("cron created", cron_id=record["cron_id"], schedule=body.schedule, thread_id=thread_id)
        return record

    async def patch(self, cron_id: str, body: CronPatch) -> dict[str, Any]:
        record, revision = await self.get(cron_id)
        changes = body.model_dump(exclude_unset=True)
        for key in ("schedule", "timezone", "enabled", "metadata", "on_run_completed"):
            if key in changes:
                record[key] = changes[key]
        if "end_time" in changes:
            record["end_time"] = body.end_time.isoformat() if body.end_time else None
        for key in ("input", "config", "context", "webhook"):
            if key in changes:
                record["payload"][key] = changes[key]
        record["next_run_date"] = next_run(record["schedule"], record["timezone"], _now()).isoformat()
        record["updated_at"] = _now().isoformat()
        try:
            revision = await self.kv.update(cron_id, orjson.dumps(record), last=revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            raise HTTPException(409, f"Cron {cron_id} changed meanwhile; try again") from None
        self.mirror.note(cron_id, revision, record)
        return record

    async def delete(self, cron_id: str) -> None:
        _, revision = await self.get(cron_id)
        await self.kv.delete(cron_id)
        # The delete's own revision is not returned; any later one is, and supersedes this.
        self.mirror.note(cron_id, revision + 1, None)

    # -- scheduling ---------------------------------------------------------------------------
    async def run(self, tick_s: float, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.tick()
            except Exception:  # noqa: BLE001 - a bad tick must not stop the schedule
                log.exception("cron tick failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), tick_s)

    async def tick(self) -> None:
        now = _now()
        for record, revision in await self.all():
            due = datetime.fromisoformat(record["next_run_date"])
            if not record["enabled"] or due > now:
                continue
            ended = record["end_time"] and due >= datetime.fromisoformat(record["end_time"])
            if not ended:
                await self._fire(record, due)
            record["next_run_date"] = next_run(record["schedule"], record["timezone"], max(now, due)).isoformat()
            record["enabled"] = not ended
            try:
                revision = await self.kv.update(record["cron_id"], orjson.dumps(record), last=revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                continue  # another gateway moved it on, or the cron was changed: read afresh next tick
            self.mirror.note(record["cron_id"], revision, record)

    async def _fire(self, record: dict[str, Any], due: datetime) -> None:
        occurrence = f"{record['cron_id']}:{due.isoformat()}"
        run_id = str(uuid.uuid5(_OCCURRENCE, occurrence))
        body = RunCreate(**record["payload"])
        body.metadata = {**(body.metadata or {}), "cron_id": record["cron_id"]}
        thread_id = record["thread_id"]
        temporary = False
        if thread_id is None:
            thread_id = str(uuid.uuid5(_OCCURRENCE, occurrence + ":thread"))
            temporary = record.get("on_run_completed") != "keep"
            if not temporary:
                await self.backend.threads.create(
                    ThreadCreate(thread_id=thread_id, if_exists="do_nothing", metadata={"cron_id": record["cron_id"]})
                )
        request = await self.backend.runs.prepare(thread_id, body, temporary=temporary, run_id=run_id)
        await self.backend.log.append_event(request)
        log.info("cron fired", cron_id=record["cron_id"], thread_id=thread_id, run_id=run_id, due=due.isoformat())


def _visible(record: dict[str, Any]) -> bool:
    identity = auth.current_identity.get()
    return identity is None or record.get("user_id") == identity


def crons(request: Request) -> Crons:
    return request.app.state.crons


async def _create_authorized(body: CronCreate, thread_id: str | None) -> None:
    """The caller's ``@auth.on.crons.create`` handler sees the cron and may add metadata."""
    value = {"payload": body.model_dump(exclude_none=True), "schedule": body.schedule, "thread_id": thread_id}
    value |= {"user_id": auth.current_identity.get(), "end_time": body.end_time, "metadata": body.metadata or {}}
    await auth.authorize("crons", "create", value)
    body.metadata = value["metadata"]


async def _authorized(request: Request, action: str, cron_id: str, **value: Any) -> None:
    """A cron the caller's ``@auth.on.crons`` handler filters out is a 404, as a missing one."""
    filters = await auth.authorize("crons", action, {"cron_id": cron_id, **value})
    record, _ = await crons(request).get(cron_id)
    auth.visible_or_404(record.get("metadata"), filters, f"Cron {cron_id}")


@router.post("/threads/{thread_id}/runs/crons")
async def create_for_thread(thread_id: str, body: CronCreate, request: Request):
    await _create_authorized(body, thread_id)
    return await crons(request).create(body, thread_id)


@router.post("/runs/crons")
async def create(body: CronCreate, request: Request):
    await _create_authorized(body, None)
    return await crons(request).create(body, None)


@router.patch("/runs/crons/{cron_id}")
async def patch(cron_id: str, body: CronPatch, request: Request):
    await _authorized(request, "update", cron_id, **body.model_dump(exclude_unset=True))
    return await crons(request).patch(cron_id, body)


@router.delete("/runs/crons/{cron_id}", status_code=204)
async def delete(cron_id: str, request: Request):
    await _authorized(request, "delete", cron_id)
    await crons(request).delete(cron_id)
    return Response(status_code=204)


async def _matching(records: list[dict[str, Any]], body: CronSearch) -> list[dict[str, Any]]:
    value = {"assistant_id": body.assistant_id, "thread_id": body.thread_id, "limit": body.limit, "offset": body.offset}
    filters = await auth.authorize("crons", "search", value)
    return [
        r
        for r in records
        if _visible(r)
        and auth.satisfies(r.get("metadata"), filters)
        and (body.assistant_id is None or r["assistant_id"] == body.assistant_id)
        and (body.thread_id is None or r["thread_id"] == body.thread_id)
        and (body.enabled is None or r["enabled"] == body.enabled)
        and all((r.get("metadata") or {}).get(k) == v for k, v in (body.metadata or {}).items())
    ]


@router.post("/runs/crons/search")
async def search(body: CronSearch, request: Request):
    found = await _matching([r for r, _ in await crons(request).all()], body)
    key = body.sort_by or "created_at"
    found.sort(key=lambda r: str(r.get(key) or ""), reverse=body.sort_order != "asc")
    page = found[body.offset : body.offset + body.limit]
    return [{k: r.get(k) for k in body.select} for r in page] if body.select else page


@router.post("/runs/crons/count")
async def count(body: CronSearch, request: Request):
    return len(await _matching([r for r, _ in await crons(request).all()], body))
