"""Routes: /assistants. Every route runs the caller's ``@auth.on.assistants`` handler first
(:func:`services.gateway.auth.authorize`): its metadata filters hide assistants (404, left out
of searches), False refuses (403)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request, Response
from langgraph.pregel import Pregel
from pydantic import TypeAdapter

from services.gateway import auth
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


async def _authorized(request: Request, action: str, assistant_id: str, **value) -> dict:
    """The assistant, if the caller's handler for ``action`` lets them see it."""
    filters = await auth.authorize("assistants", action, {"assistant_id": assistant_id, **value})
    assistant = await backend(request).assistants.get(assistant_id)
    auth.visible_or_404(assistant.get("metadata"), filters, f"Assistant {assistant_id}")
    return assistant


async def _visible(request: Request, graph_id, metadata, name, limit: int, offset: int) -> list[dict]:
    value = {"graph_id": graph_id, "metadata": metadata, "limit": limit, "offset": offset}
    filters = await auth.authorize("assistants", "search", value)
    found = await backend(request).assistants.search(graph_id, metadata, name)
    return [a for a in found if auth.satisfies(a.get("metadata"), filters)]


@router.post("")
async def create(body: AssistantCreate, request: Request):
    value = body.model_dump()
    value["metadata"] = value.get("metadata") or {}
    await auth.authorize("assistants", "create", value)
    body.metadata = value["metadata"]
    return await backend(request).assistants.create(body)


@router.post("/search")
async def search(body: AssistantSearch, request: Request):
    found = await _visible(request, body.graph_id, body.metadata, body.name, body.limit, body.offset)
    if body.sort_by:
        found.sort(key=lambda a: a.get(body.sort_by) or "", reverse=body.sort_order != "asc")
    page = found[body.offset : body.offset + body.limit]
    if body.select:
        page = [{k: a.get(k) for k in body.select} for a in page]
    return page


@router.post("/count")
async def count(body: AssistantCount, request: Request):
    return len(await _visible(request, body.graph_id, body.metadata, body.name, 0, 0))


@router.get("/{assistant_id}")
async def get(assistant_id: str, request: Request):
    return await _authorized(request, "read", assistant_id)


@router.patch("/{assistant_id}")
async def patch(assistant_id: str, body: AssistantPatch, request: Request):
    await _authorized(request, "update", assistant_id, **body.model_dump(exclude_none=True))
    return await backend(request).assistants.patch(assistant_id, body)


@router.post("/{assistant_id}/versions")
async def versions(assistant_id: str, body: AssistantVersions, request: Request):
    current = await _authorized(request, "read", assistant_id)
    found = await backend(request).assistants.versions(current["assistant_id"], body.metadata)
    return found[body.offset : body.offset + body.limit]


@router.post("/{assistant_id}/latest")
async def set_latest(assistant_id: str, body: AssistantLatest, request: Request):
    await _authorized(request, "update", assistant_id, version=body.version)
    return await backend(request).assistants.set_latest_version(assistant_id, body.version)


@router.delete("/{assistant_id}", status_code=204)
async def delete(assistant_id: str, request: Request):
    await _authorized(request, "delete", assistant_id)
    await backend(request).assistants.delete(assistant_id)
    return Response(status_code=204)


@contextlib.asynccontextmanager
async def _graph(assistant_id: str, request: Request) -> AsyncIterator[tuple[dict, Pregel]]:
    assistant = await _authorized(request, "read", assistant_id)
    b = backend(request)
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
