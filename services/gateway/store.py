"""Routes: /store, the long-term memory store that graphs use, as langgraph_sdk's ``client.store`` calls it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request, Response
from pydantic import BaseModel, Field

from services.gateway import auth
from threadbus.read_model.store_index import InvalidFilter
from threadbus.store import InvalidItem

router = APIRouter(prefix="/store", tags=["store"])


class StorePut(BaseModel):
    namespace: list[str]
    key: str
    value: dict[str, Any]
    index: bool | list[str] | None = None
    ttl: float | None = Field(default=None, ge=0, le=100 * 525_600, description="minutes; at most a century")


class StoreDelete(BaseModel):
    namespace: list[str] = Field(default_factory=list)
    key: str


class StoreSearch(BaseModel):
    namespace_prefix: list[str] = Field(default_factory=list)
    filter: dict[str, Any] | None = None
    limit: int = Field(10, ge=0, le=10_000)
    offset: int = Field(0, ge=0)
    query: str | None = None
    refresh_ttl: bool | None = None


class StoreNamespaces(BaseModel):
    prefix: list[str] | None = None
    suffix: list[str] | None = None
    max_depth: int | None = Field(None, ge=1)
    limit: int = Field(100, ge=0, le=10_000)
    offset: int = Field(0, ge=0)


def store(request: Request):
    return request.app.state.backend.store


async def _namespace(action: str, labels: list[str], **value: Any) -> tuple[str, ...]:
    """The namespace the operation acts on: checked, then as an ``@auth.on.store`` handler
    rewrote it, and owned by the caller."""
    for label in labels:
        if not label or "." in label:
            raise HTTPException(422, f"Invalid namespace label {label!r}: labels are non-empty and contain no '.'")
    scoped = {"namespace": tuple(labels), **value}
    await auth.authorize("store", action, scoped)
    namespace = tuple(scoped["namespace"])
    auth.own_namespace(namespace)
    return namespace


def _item(item) -> dict[str, Any]:
    return item.dict()


@router.put("/items", status_code=204)
async def put_item(body: StorePut, request: Request):
    namespace = await _namespace("put", body.namespace, key=body.key, value=body.value)
    try:
        await store(request).aput(namespace, body.key, body.value, index=body.index, ttl=body.ttl)
    except InvalidItem as err:
        raise HTTPException(422, str(err)) from None
    return Response(status_code=204)


@router.get("/items")
async def get_item(request: Request, key: str, namespace: str = "", refresh_ttl: bool | None = Query(None)):
    labels = namespace.split(".") if namespace else []
    item = await store(request).aget(await _namespace("get", labels, key=key), key, refresh_ttl=refresh_ttl)
    # LangGraph Platform answers a missing item with 200 null: the SDKs then return None.
    return None if item is None else _item(item)


@router.delete("/items", status_code=204)
async def delete_item(body: StoreDelete, request: Request):
    await store(request).adelete(await _namespace("delete", body.namespace, key=body.key), body.key)
    return Response(status_code=204)


@router.post("/items/search")
async def search_items(body: StoreSearch, request: Request):
    try:
        items = await store(request).asearch(
            await _namespace("search", body.namespace_prefix, filter=body.filter, query=body.query),
            query=body.query,
            filter=body.filter,
            limit=body.limit,
            offset=body.offset,
            refresh_ttl=body.refresh_ttl,
        )
    except InvalidFilter as err:
        raise HTTPException(422, str(err)) from None
    return {"items": [_item(i) for i in items]}


@router.post("/namespaces")
async def list_namespaces(body: StoreNamespaces, request: Request):
    identity = auth.current_identity.get()
    prefix = tuple(body.prefix or ([identity] if identity else []))
    if prefix:
        prefix = await _namespace("list_namespaces", list(prefix))
    namespaces = await store(request).alist_namespaces(
        prefix=prefix or None,
        suffix=tuple(body.suffix) if body.suffix else None,
        max_depth=body.max_depth,
        limit=body.limit,
        offset=body.offset,
    )
    return {"namespaces": [list(ns) for ns in namespaces]}
