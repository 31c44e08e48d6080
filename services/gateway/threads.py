"""Routes: /threads (and their state and history)."""

from __future__ import annotations

from contextlib import AsyncExitStack

from fastapi import APIRouter, Header, HTTPException, Query, Request, Response
from fastapi.responses import StreamingResponse

from contracts import subjects
from services.gateway import streams

from services.gateway.models import (
    ThreadCount,
    ThreadCreate,
    ThreadHistory,
    ThreadPatch,
    ThreadSearch,
    ThreadStateCheckpoint,
    ThreadStateUpdate,
)

router = APIRouter(prefix="/threads", tags=["threads"])


def backend(request: Request):
    return request.app.state.backend


@router.post("")
async def create(body: ThreadCreate, request: Request):
    return await backend(request).threads.create(body)


@router.post("/search")
async def search(body: ThreadSearch, request: Request):
    return await backend(request).threads.search(body)


@router.post("/count")
async def count(body: ThreadCount, request: Request):
    return await backend(request).threads.search(body, count=True)


@router.get("/{thread_id}")
async def get(thread_id: str, request: Request):
    b = backend(request)
    await b.threads.record(thread_id)
    return await b.threads.as_object(thread_id)


@router.patch("/{thread_id}")
async def patch(thread_id: str, body: ThreadPatch, request: Request):
    return await backend(request).threads.patch(thread_id, body.metadata)


@router.delete("/{thread_id}", status_code=204)
async def delete(thread_id: str, request: Request):
    await backend(request).threads.delete(thread_id)
    return Response(status_code=204)


@router.get("/{thread_id}/state")
async def get_state(thread_id: str, request: Request, subgraphs: bool = False):
    b = backend(request)
    return await b.threads.state(await b.threads.record(thread_id), subgraphs=subgraphs)


@router.post("/{thread_id}/state")
async def update_state(thread_id: str, body: ThreadStateUpdate, request: Request):
    checkpoint = body.checkpoint or ({"checkpoint_id": body.checkpoint_id} if body.checkpoint_id else None)
    return await backend(request).threads.update_state(thread_id, body.values, body.as_node, checkpoint)


@router.post("/{thread_id}/state/checkpoint")
async def state_at_checkpoint(thread_id: str, body: ThreadStateCheckpoint, request: Request):
    b = backend(request)
    return await b.threads.state(await b.threads.record(thread_id), subgraphs=body.subgraphs, checkpoint=body.checkpoint)


@router.get("/{thread_id}/state/{checkpoint_id}")
async def state_at(thread_id: str, checkpoint_id: str, request: Request, subgraphs: bool = False):
    b = backend(request)
    record = await b.threads.record(thread_id)
    return await b.threads.state(record, subgraphs=subgraphs, checkpoint={"checkpoint_id": checkpoint_id})


@router.post("/{thread_id}/history")
async def history(thread_id: str, body: ThreadHistory, request: Request):
    return await backend(request).threads.history(
        thread_id, limit=body.limit, before=body.before, metadata=body.metadata, checkpoint=body.checkpoint
    )


@router.get("/{thread_id}/history")
async def history_get(thread_id: str, request: Request, limit: int = 10, before: str | None = None):
    return await backend(request).threads.history(thread_id, limit=limit, before=before, metadata=None, checkpoint=None)


@router.post("/{thread_id}/copy")
async def copy(thread_id: str, request: Request):
    return await backend(request).threads.copy(thread_id)


@router.get("/{thread_id}/stream")
async def join_stream(
    thread_id: str,
    request: Request,
    stream_mode: list[str] | None = Query(None),
    last_event_id: str | None = Header(None),
):
    b = backend(request)
    await b.threads.record(thread_id)
    modes = streams.parse_modes(stream_mode) or {"run_modes"}
    if unknown := modes - streams.THREAD_MODES:
        raise HTTPException(422, f"Unknown thread stream_mode {sorted(unknown)}; use {sorted(streams.THREAD_MODES)}")
    after_seq, replay = await streams.resume_point(b.js, thread_id, None, last_event_id)
    stack = AsyncExitStack()
    try:
        # The thread's events up to now matter only to a replay (which runs ended after the resume point).
        newest = await b.log.last(subjects.thread_control(thread_id))
        backlog_until = newest.seq if newest else 0
        control = await stack.enter_async_context(
            b.log.follow(subjects.thread_control(thread_id), after=0 if replay else backlog_until)
        )
        chunks = await streams.open_chunks(b.js, thread_id, None, after_seq, stack)
    except BaseException:
        await stack.aclose()
        raise

    async def body():
        try:
            async for piece in streams.thread_relay(
                b.js,
                thread_id,
                chunks,
                control,
                after_seq=after_seq,
                backlog_until=backlog_until,
                modes=modes,
                heartbeat_s=b.settings.stream_heartbeat_s,
                thread_values=lambda: b.threads.values(thread_id),
            ):
                yield piece
        finally:
            await streams.release(stack)

    return StreamingResponse(
        body(), media_type="text/event-stream", headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    )
