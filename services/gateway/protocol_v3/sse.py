"""``POST /threads/{thread_id}/stream/events``: the thread's v3 events as server-sent events.

Body ``{"channels": [...], "namespaces"?, "depth"?, "since"?}``; a bad filter is 400 with
``detail``. Frames are ``event: <method>`` / ``data: <event>`` / ``id: <seq>``, a comment
heartbeat when idle; events already waiting are written in one piece. A cursor older than what is
retained gets one unsolicited error frame (``resume_gap``, with ``min_available_seq``), which the
SDK raises, and the stream ends.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from services.gateway import streams
from services.gateway.protocol_v3 import events, filters
from services.gateway.protocol_v3.access import check_readable

router = APIRouter(tags=["thread protocol (v3)"])

HEADERS = {"cache-control": "no-store", "x-accel-buffering": "no"}


@router.post(
    "/threads/{thread_id}/stream/events",
    responses={400: {"description": "not JSON, or a subscription the protocol does not allow ({detail})"}},
)
async def stream_events(thread_id: str, request: Request) -> Response:
    try:
        body = orjson.loads(await request.body())
        wanted = filters.parse(body)
        since = filters.parse_since(body)
    except orjson.JSONDecodeError as err:
        return JSONResponse({"detail": f"the body is not JSON: {err}"}, status_code=400)
    except filters.InvalidFilter as err:
        return JSONResponse({"detail": str(err)}, status_code=400)
    backend = request.app.state.backend
    await check_readable(backend, thread_id)
    try:
        await events.check_retained(backend.js, thread_id, since or 0)
    except events.ResumeGap as gap:
        frame = orjson.dumps(
            {"type": "error", "id": None, "error": "resume_gap", "message": str(gap), "min_available_seq": gap.min_available_seq}
        )
        return StreamingResponse(iter([b"event: error\ndata: " + frame + b"\n\n"]), media_type="text/event-stream", headers=HEADERS)
    stack = AsyncExitStack()
    try:
        queue = await events.follow(backend.js, thread_id, since, stack)
    except BaseException:
        await stack.aclose()
        raise
    body_iter = _relay(queue, wanted, backend.settings.stream_heartbeat_s, request.app.state.closing, stack)
    return StreamingResponse(body_iter, media_type="text/event-stream", headers=HEADERS)


async def _relay(queue, wanted: filters.Filter, heartbeat_s: float, closing: asyncio.Event, stack: AsyncExitStack):
    """Until the client goes away, or the gateway stops (the client reconnects elsewhere with ``since``)."""
    try:
        while (batch := await events.next_batch(queue, closing, heartbeat_s)) is not None:
            if not batch:
                yield b": heartbeat\n\n"
                continue
            frames = [e.sse() for e in batch if wanted.matches(e.method, e.namespace, e.custom_name)]
            if frames:
                yield b"".join(frames)
    finally:
        await streams.release(stack)
