"""Routes: /assistants."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request, Response
from langgraph.pregel import Pregel
from pydantic import TypeAdapter

from services.gateway.models import (
    AssistantCount,
    AssistantCreate,
    AssistantLatest,
    AssistantPatch,
    AssistantSearch,
    AssistantVersions,
)

router = APIRouter(prefix="/assistants", tags=["assistants"])


def backend(request: Request):
    return request.app.state.backend


@router.post("")
async def create(body: AssistantCreate, request: Request):
    return await backend(request).assistants.create(body)


@router.post("/search")
async def search(body: AssistantSearch, request: Request):
    found = await backend(request).assistants.search(body.graph_id, body.metadata, body.name)
    if body.sort_by:
        found.sort(key=lambda a: a.get(body.sort_by) or "", reverse=body.sort_order != "asc")
    page = found[body.offset : body.offset + body.limit]
    if body.select:
        page = [{k: a.get(k) for k in body.select} for a in page]
    return page


@router.post("/count")
async def count(body: AssistantCount, request: Request):
    return len(await backend(request).assistants.search(body.graph_id, body.metadata, body.name))


@router.get("/{assistant_id}")
async def get(assistant_id: str, request: Request):
    return await backend(request).assistants.get(assistant_id)


@router.patch("/{assistant_id}")
async def patch(assistant_id: str, body: AssistantPatch, request: Request):
    return await backend(request).assistants.patch(assistant_id, body)


@router.post("/{assistant_id}/versions")
async def versions(assistant_id: str, body: AssistantVersions, request: Request):
    b = backend(request)
    current = await b.assistants.get(assistant_id)
    found = await b.assistants.versions(current["assistant_id"], body.metadata)
    return found[body.offset : body.offset + body.limit]


@router.post("/{assistant_id}/latest")
async def set_latest(assistant_id: str, body: AssistantLatest, request: Request):
    return await backend(request).assistants.set_latest_version(assistant_id, body.version)


@router.delete("/{assistant_id}", status_code=204)
async def delete(assistant_id: str, request: Request):
    await backend(request).assistants.delete(assistant_id)
    return Response(status_code=204)


@contextlib.asynccontextmanager
async def _graph(assistant_id: str, request: Request) -> AsyncIterator[tuple[dict, Pregel]]:
    b = backend(request)
    assistant = await b.assistants.get(assistant_id)
    async with b.assistants.graph_for(assistant, store=b.store) as g:
        yield assistant, g


@router.get("/{assistant_id}/graph")
async def graph(assistant_id: str, request: Request, xray: int | bool = False):
    async with _graph(assistant_id, request) as (_, g):
        drawable = await g.aget_graph(xray=xray)
    return drawable.to_json()


@router.get("/{assistant_id}/schemas")
async def schemas(assistant_id: str, request: Request):
    async with _graph(assistant_id, request) as (assistant, g):
        return {"graph_id": assistant["graph_id"], **graph_schemas(g)}


def graph_schemas(g: Pregel) -> dict:
    def render(get):
        try:
            return get()
        except Exception:  # a graph whose schema cannot be rendered still has the others
            return None

    return {
        "input_schema": render(g.get_input_jsonschema),
        "output_schema": render(g.get_output_jsonschema),
        "state_schema": render(lambda: TypeAdapter(g.builder.state_schema).json_schema()),
        "config_schema": render(g.get_config_jsonschema),
        "context_schema": render(g.get_context_jsonschema),
    }


@router.get("/{assistant_id}/subgraphs")
async def subgraphs(assistant_id: str, request: Request, recurse: bool = False):
    result = {}
    async with _graph(assistant_id, request) as (_, g):
        async for ns, sub in g.aget_subgraphs(recurse=recurse):
            result[ns] = graph_schemas(sub)
    return result
