"""The long-term memory store, over HTTP through langgraph_sdk and from inside graph runs."""

from __future__ import annotations

import asyncio
import uuid

import pytest

HI = {"messages": [{"role": "human", "content": "hi"}]}


def unique() -> str:
    return uuid.uuid4().hex


async def test_put_get_search_delete_through_the_sdk(client):
    user = unique()
    await client.store.put_item(["users", user, "prefs"], "theme", {"color": "dark", "size": 14})
    await client.store.put_item(["users", user, "prefs"], "lang", {"color": "none", "size": 10})
    await client.store.put_item(["users", user, "docs"], "d1", {"title": "notes"})

    item = await client.store.get_item(["users", user, "prefs"], "theme")
    assert item["value"] == {"color": "dark", "size": 14}
    assert item["namespace"] == ["users", user, "prefs"] and item["key"] == "theme"
    assert item["created_at"] and item["updated_at"]

    found = await client.store.search_items(["users", user])
    assert sorted(i["key"] for i in found["items"]) == ["d1", "lang", "theme"]
    found = await client.store.search_items(["users", user], filter={"size": {"$gt": 12}})
    assert [i["key"] for i in found["items"]] == ["theme"]
    assert len((await client.store.search_items(["users", user], limit=2))["items"]) == 2
    assert len((await client.store.search_items(["users", user], limit=2, offset=2))["items"]) == 1

    namespaces = (await client.store.list_namespaces(prefix=["users", user]))["namespaces"]
    assert namespaces == [["users", user, "docs"], ["users", user, "prefs"]]
    assert (await client.store.list_namespaces(prefix=["users", user], max_depth=2))["namespaces"] == [["users", user]]

    await client.store.delete_item(["users", user, "prefs"], "theme")
    # A missing item is 200 null, as on LangGraph Platform: the SDK returns None.
    assert await client.store.get_item(["users", user, "prefs"], "theme") is None


async def test_updates_keep_created_at_and_move_updated_at(client):
    ns = ["updates", unique()]
    await client.store.put_item(ns, "k", {"v": 1})
    first = await client.store.get_item(ns, "k")
    await client.store.put_item(ns, "k", {"v": 2})
    second = await client.store.get_item(ns, "k")
    assert second["value"] == {"v": 2}
    assert second["created_at"] == first["created_at"] and second["updated_at"] > first["updated_at"]


async def test_labels_and_keys_nats_cannot_hold_come_back_unchanged(client):
    ns = ["odd", "spaces and * > ~ = / ü", unique()]
    key = "key with spaces/slashes*and>more.dots"
    await client.store.put_item(ns, key, {"ok": True})
    assert (await client.store.get_item(ns, key))["key"] == key
    found = await client.store.search_items(ns[:2])
    assert [(i["namespace"], i["key"]) for i in found["items"]] == [(ns, key)]


async def test_items_expire_after_their_ttl(client):
    ns = ["ttl", unique()]
    await client.store.put_item(ns, "short", {"v": 1}, ttl=0.01)  # minutes: under a second
    await client.store.put_item(ns, "long", {"v": 1}, ttl=60)
    deadline = asyncio.get_running_loop().time() + 30
    # Reads refresh TTLs by default (as in LangGraph): this one must not keep the item alive.
    while (keys := [i["key"] for i in (await client.store.search_items(ns, refresh_ttl=False))["items"]]) != ["long"]:
        assert asyncio.get_running_loop().time() < deadline, f"the short-lived item never expired: {keys}"
        await asyncio.sleep(0.2)
    assert await client.store.get_item(ns, "short") is None


async def test_runs_on_different_threads_share_the_store_with_the_api(client):
    user = unique()
    config = {"configurable": {"user_id": user}}
    for _ in range(2):
        thread = (await client.threads.create())["thread_id"]
        result = await client.runs.wait(thread, "memory", input=HI, config=config)
    assert result["messages"][-1]["content"] == "visit 2"
    assert (await client.store.get_item(["visits", user], "count"))["value"] == {"n": 2}


async def test_concurrent_read_modify_writes_never_lose_an_update_silently(client):
    # Two runs on two threads read the same counter, wait, then write it back: one of them must
    # not overwrite the other's write as if it had not happened.
    user = unique()
    config = {"configurable": {"user_id": user, "delay": 0.5}}
    threads = [(await client.threads.create())["thread_id"] for _ in range(2)]
    results = await asyncio.gather(
        *(client.runs.wait(t, "memory", input=HI, config=config, raise_error=False) for t in threads)
    )
    failed = [r for r in results if "__error__" in r]
    counted = (await client.store.get_item(["visits", user], "count"))["value"]["n"]
    assert counted + len(failed) == 2, f"{counted} visits stored, {len(failed)} runs failed: an update was lost"
    for r in failed:
        assert r["__error__"]["error"] == "StoreConflict"


async def test_invalid_namespace_labels_are_422(client):
    import httpx

    async with httpx.AsyncClient(base_url=str(client.http.client.base_url)) as http:
        res = await http.put("/store/items", json={"namespace": ["a", ""], "key": "k", "value": {}})
    assert res.status_code == 422


async def test_semantic_search_is_not_built_and_says_so(nats_url):
    import nats as nats_client

    from threadbus.broker import STORE_BUCKET
    from threadbus.store import JetStreamStore, SemanticSearchNotBuilt

    nc = await nats_client.connect(nats_url)
    try:
        store = JetStreamStore(await nc.jetstream().key_value(STORE_BUCKET), index={"dims": 4, "embed": "fake"})
        with pytest.raises(SemanticSearchNotBuilt):
            await store.asearch(("docs",), query="anything")
        assert await store.asearch(("docs", unique())) == []  # without a query, search works
    finally:
        await nc.close()
