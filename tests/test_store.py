"""The long-term memory store, over HTTP through langgraph_sdk and from inside graph runs."""

from __future__ import annotations

import asyncio
import uuid


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


async def test_semantic_search_ranks_items_put_over_http_by_meaning(client):
    ns = ["semantic", unique()]
    await client.store.put_item(ns, "milk", {"text": "buy milk and bread for dinner"})
    await client.store.put_item(ns, "vet", {"text": "take the cat to the vet"})
    await client.store.put_item(ns, "paris", {"text": "book a flight to paris"})
    await client.store.put_item(ns, "pizza", {"text": "pizza with extra cheese", "kind": "recipe"})

    found = (await client.store.search_items(ns, query="what food should I eat", limit=2))["items"]
    assert {i["key"] for i in found} == {"milk", "pizza"}
    assert found[0]["score"] >= found[1]["score"] > 0
    ranked = (await client.store.search_items(ns, query="my dog needs a pet vet", limit=10))["items"]
    assert ranked[0]["key"] == "vet" and len(ranked) == 4
    assert [i["score"] for i in ranked] == sorted((i["score"] for i in ranked), reverse=True)

    # A filter narrows the ranked search; offset pages it.
    narrowed = (await client.store.search_items(ns, query="food", filter={"kind": "recipe"}))["items"]
    assert [i["key"] for i in narrowed] == ["pizza"]
    second = (await client.store.search_items(ns, query="my dog needs a pet vet", limit=1, offset=1))["items"]
    assert [i["key"] for i in second] == [ranked[1]["key"]]

    # Changing an item re-embeds it; deleting it drops it from the results.
    await client.store.put_item(ns, "vet", {"text": "cheese and pasta for the hungry"})
    found = (await client.store.search_items(ns, query="food to eat", limit=3))["items"]
    assert {i["key"] for i in found} == {"milk", "pizza", "vet"}
    await client.store.delete_item(ns, "milk")
    found = (await client.store.search_items(ns, query="food to eat", limit=3))["items"]
    assert "milk" not in {i["key"] for i in found} and found[0]["key"] in {"pizza", "vet"}


async def test_items_put_with_index_false_are_stored_but_not_ranked(client):
    ns = ["unranked", unique()]
    await client.store.put_item(ns, "hidden", {"text": "pizza pasta cheese dinner"}, index=False)
    await client.store.put_item(ns, "shown", {"text": "a flight to paris"})
    assert (await client.store.get_item(ns, "hidden"))["value"]["text"].startswith("pizza")
    found = (await client.store.search_items(ns, query="pizza dinner"))["items"]
    # As in LangGraph's in-memory store: ranked items first, unembedded ones after, unscored.
    assert [(i["key"], i["score"] is None) for i in found] == [("shown", False), ("hidden", True)]


async def test_a_put_may_name_the_fields_it_is_embedded_by(client):
    ns = ["fields", unique()]
    await client.store.put_item(ns, "titled", {"title": "my cat", "body": "pizza pizza pizza"}, index=["title"])
    await client.store.put_item(ns, "whole", {"title": "notes", "body": "pizza for dinner"})
    found = (await client.store.search_items(ns, query="pizza"))["items"]
    assert [i["key"] for i in found] == ["whole", "titled"]
    assert found[1]["score"] < found[0]["score"]


async def test_graph_runs_write_memories_found_by_meaning_over_http_and_in_another_run(client):
    user = unique()
    for text in ("walk the dog and feed the kitten", "finish the project report before the deadline", "python bug on the server"):
        await client.runs.wait(None, "notes", input={"user": user, "text": text})
    found = (await client.store.search_items(["notes", user], query="my pets", limit=1))["items"]
    assert found[0]["value"]["text"] == "walk the dog and feed the kitten" and found[0]["score"] > 0
    thread = (await client.threads.create())["thread_id"]
    result = await client.runs.wait(thread, "notes", input={"user": user, "query": "work meeting with my boss"})
    assert result["found"][0]["text"] == "finish the project report before the deadline"
    assert len(result["found"]) == 3


async def test_filters_and_values_the_index_cannot_hold_are_422_and_do_not_stop_it(client):
    import httpx

    async with httpx.AsyncClient(base_url=str(client.http.client.base_url)) as http:
        res = await http.post("/store/items/search", json={"namespace_prefix": ["x"], "filter": {"n": {"$regex": "a"}}})
        assert res.status_code == 422
        res = await http.post("/store/items/search", json={"namespace_prefix": ["x"], "filter": {"n": "a\u0000"}})
        assert res.status_code == 422
        res = await http.put("/store/items", json={"namespace": ["nul", "x"], "key": "k", "value": {"t": "a\u0000"}})
        assert res.status_code == 422
    ns = ["after", unique()]
    await client.store.put_item(ns, "k", {"text": "still indexed"})
    assert [i["key"] for i in (await client.store.search_items(ns))["items"]] == ["k"]


async def test_a_bucket_item_the_index_cannot_hold_is_skipped_and_indexing_goes_on(client, nats_url):
    # Written straight into the bucket, as a writer older than the put check could have.
    from datetime import datetime, timezone

    import nats as nats_client
    import orjson

    from threadbus.broker import STORE_BUCKET
    from threadbus.store import kv_key

    now = datetime.now(timezone.utc).isoformat()
    poisoned = ("poison", unique())
    nc = await nats_client.connect(nats_url)
    try:
        kv = await nc.jetstream().key_value(STORE_BUCKET)
        record = {"namespace": list(poisoned), "key": "k", "value": {"t": "a\x00"}, "created_at": now, "updated_at": now}
        await kv.put(kv_key(poisoned, "k"), orjson.dumps(record))
    finally:
        await nc.close()
    ns = ["after", unique()]
    await client.store.put_item(ns, "k", {"text": "indexed after the bad one"})
    assert [i["key"] for i in (await client.store.search_items(ns))["items"]] == ["k"]
    assert (await client.store.search_items(list(poisoned)))["items"] == []


FILTER_ITEMS = {
    "a": {"n": 1, "s": "x", "tags": ["a", "b"], "o": {"p": 1, "q": "z"}, "b": True},
    "b": {"n": 2.5, "s": "y", "tags": ["a"], "o": {"p": 2}, "b": False},
    "c": {"n": 10, "s": "x", "tags": [], "o": {"p": 1, "q": "w"}, "b": True},
}
FILTERS = [
    {"s": "x"}, {"n": 1}, {"n": 1.0}, {"n": {"$gt": 1}}, {"n": {"$gte": 1, "$lt": 10}}, {"n": {"$lte": 2.5}},
    {"s": {"$ne": "x"}}, {"s": {"$eq": "y"}}, {"tags": ["a"]}, {"tags": ["a", "b"]}, {"tags": []}, {"o": {"p": 1}},
    {"o": {"p": 1, "q": "w"}}, {"b": True}, {"s": "x", "n": {"$gt": 5}}, {"o": {"p": {"$gt": 1}}}, {"s": "nope"},
]


async def test_filters_select_what_langgraphs_in_memory_store_selects(client):
    from langgraph.store.memory import InMemoryStore

    reference = InMemoryStore()
    ns = ["filters", unique()]
    for key, value in FILTER_ITEMS.items():
        await client.store.put_item(ns, key, value)
        await reference.aput(tuple(ns), key, value)
    for condition in FILTERS:
        ours = sorted(i["key"] for i in (await client.store.search_items(ns, filter=condition, limit=100))["items"])
        expected = sorted(i.key for i in await reference.asearch(tuple(ns), filter=condition, limit=100))
        assert ours == expected, f"filter {condition}: {ours}, LangGraph's in-memory store: {expected}"
