"""Routes: runs on a thread, and stateless runs."""

from __future__ import annotations

import uuid
from typing import Literal

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse

from services.gateway import views
from services.gateway.models import RunCancelMany, RunCreate

router = APIRouter(tags=["runs"])

STREAMING_NOT_BUILT = "Streaming runs over SSE is not built yet; use runs.create with runs.join, or runs.wait"


def backend(request: Request):
    return request.app.state.backend


def _location(run: dict, *, join: bool = False) -> dict[str, str]:
    url = f"/threads/{run['thread_id']}/runs/{run['run_id']}"
    # `Location` lets langgraph_sdk re-GET the result if the long-poll connection drops.
    return {"Content-Location": url, "Location": f"{url}/join"} if join else {"Content-Location": url}


async def _create(request: Request, thread_id: str, body: RunCreate, *, temporary: bool = False) -> dict:
    b = backend(request)
    run_request = await b.prepare_run(thread_id, body, temporary=temporary)
    async with b.run_events(thread_id, run_request.run_id) as events:
        return await b.submit(run_request, events)


async def _wait(request: Request, thread_id: str, body: RunCreate, *, temporary: bool = False) -> JSONResponse:
    b = backend(request)
    run_request = await b.prepare_run(thread_id, body, temporary=temporary)
    async with b.run_events(thread_id, run_request.run_id) as events:
        run = await b.submit(run_request, events)
        outcome = await b.outcome(events)
    return JSONResponse(await b.result_values(thread_id, outcome), headers=_location(run, join=True))


@router.post("/threads/{thread_id}/runs")
async def create(thread_id: str, body: RunCreate, request: Request):
    run = await _create(request, thread_id, body)
    return JSONResponse(run, headers=_location(run))


@router.post("/threads/{thread_id}/runs/wait")
async def wait(thread_id: str, body: RunCreate, request: Request):
    return await _wait(request, thread_id, body)


@router.post("/threads/{thread_id}/runs/stream")
async def stream(thread_id: str, request: Request):
    raise HTTPException(501, STREAMING_NOT_BUILT)


@router.get("/threads/{thread_id}/runs")
async def list_runs(
    thread_id: str,
    request: Request,
    limit: int = Query(10, ge=1, le=1000),
    offset: int = Query(0, ge=0),
    status: Literal["pending", "running", "error", "success", "timeout", "interrupted"] | None = None,
):
    b = backend(request)
    await b.thread_record(thread_id)
    runs = (await views.thread_runs(b.log, thread_id)).run_objects()
    runs = [r for r in runs if status is None or r["status"] == status]
    runs.sort(key=lambda r: r["created_at"], reverse=True)
    return runs[offset : offset + limit]


@router.get("/threads/{thread_id}/runs/{run_id}")
async def get(thread_id: str, run_id: str, request: Request):
    _, run = await backend(request).find_run(thread_id, run_id)
    return run


@router.get("/threads/{thread_id}/runs/{run_id}/join")
async def join(thread_id: str, run_id: str, request: Request):
    b = backend(request)
    _, run = await b.find_run(thread_id, run_id)
    async with b.run_events(thread_id, run_id) as events:
        outcome = await b.outcome(events)
    return JSONResponse(await b.result_values(thread_id, outcome), headers=_location(run, join=True))


@router.get("/threads/{thread_id}/runs/{run_id}/stream")
async def join_stream(thread_id: str, run_id: str, request: Request):
    raise HTTPException(501, STREAMING_NOT_BUILT)


@router.post("/threads/{thread_id}/runs/{run_id}/cancel")
async def cancel(
    thread_id: str,
    run_id: str,
    request: Request,
    wait: bool = False,
    action: Literal["interrupt", "rollback"] = "interrupt",
):
    await backend(request).cancel(thread_id, run_id, action, wait)
    if wait:
        return JSONResponse({}, headers=_location({"thread_id": thread_id, "run_id": run_id}, join=True))
    return Response(status_code=202)


@router.post("/runs/cancel")
async def cancel_many(body: RunCancelMany, request: Request, action: Literal["interrupt", "rollback"] = "interrupt"):
    await backend(request).cancel_many(body.thread_id, body.run_ids, body.status, action)
    return Response(status_code=204)


@router.delete("/threads/{thread_id}/runs/{run_id}", status_code=204)
async def delete(thread_id: str, run_id: str, request: Request):
    await backend(request).delete_run(thread_id, run_id)
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
async def stream_stateless(request: Request):
    raise HTTPException(501, STREAMING_NOT_BUILT)


@router.post("/runs/batch")
async def batch(body: list[RunCreate], request: Request):
    runs = []
    for item in body:
        thread_id, temporary = _stateless(item)
        runs.append(await _create(request, thread_id, item, temporary=temporary))
    return runs
