"""Routes: runs on a thread, and stateless runs."""

from __future__ import annotations

import uuid
from contextlib import AsyncExitStack
from typing import Literal

from fastapi import APIRouter, Header, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from services.gateway import streams, views
from services.gateway.models import RunCancelMany, RunCreate

router = APIRouter(tags=["runs"])

RunSelectField = Literal[
    "run_id", "thread_id", "assistant_id", "created_at", "updated_at", "status", "metadata", "kwargs", "multitask_strategy"
]

def backend(request: Request):
    return request.app.state.backend


def _location(run: dict, *, join: bool = False) -> dict[str, str]:
    url = f"/threads/{run['thread_id']}/runs/{run['run_id']}"
    # `Location` lets langgraph_sdk re-GET the result if the long-poll connection drops.
    return {"Content-Location": url, "Location": f"{url}/join"} if join else {"Content-Location": url}


async def _create(request: Request, thread_id: str, body: RunCreate, *, temporary: bool = False) -> dict:
    b = backend(request)
    run_request = await b.runs.prepare(thread_id, body, temporary=temporary)
    async with b.runs.events(thread_id, run_request.run_id, fresh=True) as events:
        return await b.runs.submit(run_request, events)


async def _wait(request: Request, thread_id: str, body: RunCreate, *, temporary: bool = False) -> JSONResponse:
    b = backend(request)
    run_request = await b.runs.prepare(thread_id, body, temporary=temporary)
    outcome = None
    async with b.runs.events(thread_id, run_request.run_id, fresh=True) as events:
        run = await b.runs.submit(run_request, events)
        if not events.ended:  # by the decision timeout
            outcome = await views.outcome(events)
    if outcome is None:
        # No decision came in time, and the timeout ended that reader: follow the run afresh.
        async with b.runs.events(thread_id, run_request.run_id) as events:
            outcome = await views.outcome(events)
    result = await b.runs.result_values(thread_id, outcome, run_request.graph_id)
    return JSONResponse(result, headers=_location(run, join=True))


@router.post("/threads/{thread_id}/runs")
async def create(thread_id: str, body: RunCreate, request: Request):
    run = await _create(request, thread_id, body)
    return JSONResponse(run, headers=_location(run))


@router.post("/threads/{thread_id}/runs/wait")
async def wait(thread_id: str, body: RunCreate, request: Request):
    return await _wait(request, thread_id, body)


async def _stream(request: Request, thread_id: str, body: RunCreate, *, temporary: bool = False) -> StreamingResponse:
    b = backend(request)
    run_request = await b.runs.prepare(thread_id, body, temporary=temporary)
    run_id = run_request.run_id
    stack = AsyncExitStack()
    try:
        events = await stack.enter_async_context(b.runs.events(thread_id, run_id, fresh=True))
        chunks = await streams.open_chunks(b.js, thread_id, run_id, 0, stack)
        run = await b.runs.submit(run_request, events)
    except BaseException:
        await stack.aclose()
        raise
    options = streams.StreamOptions(
        after_seq=0, with_ids=body.stream_resumable, first=("metadata", {"run_id": run_id, "attempt": 1})
    )
    body_iter = _sse_body(b, run, stack, chunks, events, options, cancel_on_disconnect=body.on_disconnect == "cancel")
    return _sse_response(body_iter, run)


def _sse_response(body_iter, run: dict) -> StreamingResponse:
    url = f"/threads/{run['thread_id']}/runs/{run['run_id']}"
    headers = {"Location": f"{url}/stream", "Content-Location": url, "Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(body_iter, media_type="text/event-stream", headers=headers)


async def _sse_body(b, run: dict, stack: AsyncExitStack, chunks, events, options, *, cancel_on_disconnect: bool):
    thread_id, run_id = run["thread_id"], run["run_id"]
    finished = False
    try:
        async for piece in streams.relay(
            b.js, thread_id, run_id, chunks, events, options, b.settings.stream_heartbeat_s, lambda: b.threads.values(thread_id)
        ):
            yield piece
        finished = True
    finally:
        # The client went away and asked for its run to go with it.
        cancel = b.runs.request_cancel(thread_id, run_id, "interrupt") if not finished and cancel_on_disconnect else None
        await streams.release(stack, first=cancel)


@router.post("/threads/{thread_id}/runs/stream")
async def stream(thread_id: str, body: RunCreate, request: Request):
    return await _stream(request, thread_id, body)


@router.get("/threads/{thread_id}/runs")
async def list_runs(
    thread_id: str,
    request: Request,
    limit: int = Query(10, ge=1, le=1000),
    offset: int = Query(0, ge=0),
    status: Literal["pending", "running", "error", "success", "timeout", "interrupted"] | None = None,
    select: list[RunSelectField] | None = Query(None),
):
    return await backend(request).runs.list(thread_id, limit=limit, offset=offset, status=status, select=select)


@router.get("/threads/{thread_id}/runs/{run_id}")
async def get(thread_id: str, run_id: str, request: Request):
    return await backend(request).runs.find(thread_id, run_id)


@router.get("/threads/{thread_id}/runs/{run_id}/join")
async def join(thread_id: str, run_id: str, request: Request):
    b = backend(request)
    await b.runs.visible(thread_id, run_id)
    async with b.runs.events(thread_id, run_id) as events:
        run = await b.runs.existing(thread_id, run_id, events.stored)
        outcome = await views.outcome(events)
    return JSONResponse(await b.runs.result_values(thread_id, outcome), headers=_location(run, join=True))


@router.get("/threads/{thread_id}/runs/{run_id}/stream")
async def join_stream(
    thread_id: str,
    run_id: str,
    request: Request,
    stream_mode: list[str] | None = Query(None),
    cancel_on_disconnect: bool = False,
    last_event_id: str | None = Header(None),
):
    b = backend(request)
    run = await b.runs.find(thread_id, run_id)
    after_seq, replay = await streams.resume_point(b.js, thread_id, run_id, last_event_id)
    stack = AsyncExitStack()
    try:
        events = await stack.enter_async_context(b.runs.events(thread_id, run_id))
        chunks = await streams.open_chunks(b.js, thread_id, run_id, after_seq, stack)
    except BaseException:
        await stack.aclose()
        raise
    options = streams.StreamOptions(
        modes=streams.parse_modes(stream_mode),
        after_seq=after_seq,
        replay=replay,
        with_ids=run["kwargs"].get("resumable", False),
    )
    body_iter = _sse_body(b, run, stack, chunks, events, options, cancel_on_disconnect=cancel_on_disconnect)
    return _sse_response(body_iter, run)


@router.post("/threads/{thread_id}/runs/{run_id}/cancel")
async def cancel(
    thread_id: str,
    run_id: str,
    request: Request,
    wait: bool = False,
    action: Literal["interrupt", "rollback"] = "interrupt",
):
    await backend(request).runs.cancel(thread_id, run_id, action, wait)
    if wait:
        return JSONResponse({}, headers=_location({"thread_id": thread_id, "run_id": run_id}, join=True))
    return Response(status_code=202)


@router.post("/runs/cancel", status_code=204)
async def cancel_many(body: RunCancelMany, request: Request, action: Literal["interrupt", "rollback"] = "interrupt"):
    await backend(request).runs.cancel_many(body.thread_id, body.run_ids, body.status, action)
    return Response(status_code=204)


@router.delete("/threads/{thread_id}/runs/{run_id}", status_code=204)
async def delete(thread_id: str, run_id: str, request: Request):
    await backend(request).runs.delete(thread_id, run_id)
    return Response(status_code=204)


def _stateless(body: RunCreate) -> tuple[str, bool]:
    if body.command and body.command.resume is not None:
        raise HTTPException(400, "You must provide a thread_id when resuming.")
    temporary = body.on_completion != "keep"
    if not temporary:
        body.if_not_exists = "create"
    return str(uuid.uuid4()), temporary


@router.post("/runs")
async def create_stateless(body: RunCreate, request: Request):
    thread_id, temporary = _stateless(body)
    run = await _create(request, thread_id, body, temporary=temporary)
    return JSONResponse(run, headers={"Content-Location": f"/runs/{run['run_id']}"})


@router.post("/runs/wait")
async def wait_stateless(body: RunCreate, request: Request):
    thread_id, temporary = _stateless(body)
    return await _wait(request, thread_id, body, temporary=temporary)


@router.post("/runs/stream")
async def stream_stateless(body: RunCreate, request: Request):
    thread_id, temporary = _stateless(body)
    return await _stream(request, thread_id, body, temporary=temporary)


@router.post("/runs/batch")
async def batch(body: list[RunCreate], request: Request):
    runs = []
    for item in body:
        thread_id, temporary = _stateless(item)
        runs.append(await _create(request, thread_id, item, temporary=temporary))
    return runs
