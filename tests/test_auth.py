"""Auth: API keys or a custom hook, and ownership of threads, runs and store items."""

from __future__ import annotations

import httpx
import pytest
from langgraph_sdk import get_client
from langgraph_sdk.errors import NotFoundError

from tests.support import ROOT, TEST_GRAPHS, ThreadbusProcess

HI = {"messages": [{"role": "human", "content": "hi"}]}


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("auth")
    proc = ThreadbusProcess(
        ["dev", "--data-dir", str(tmp / "data"), "--config", str(TEST_GRAPHS)],
        log_path=tmp / "threadbus.log",
        env={"THREADBUS_API_KEYS": "key-a=alice,key-b=bob"},
    ).start()
    yield proc
    proc.stop()


async def test_without_a_key_only_the_probes_answer(secured):
    async with httpx.AsyncClient(base_url=secured.url) as http:
        assert (await http.get("/ok")).status_code == 200
        assert (await http.get("/ready")).status_code == 200
        for method, path in (("GET", "/info"), ("POST", "/threads"), ("POST", "/assistants/search"), ("GET", "/metrics")):
            res = await http.request(method, path, json={} if method == "POST" else None)
            assert res.status_code == 401, path
        assert (await http.post("/threads", json={}, headers={"x-api-key": "wrong"})).status_code == 401
        assert (await http.post("/threads", json={}, headers={"Authorization": "Bearer key-b"})).status_code == 200


async def test_callers_see_and_touch_only_their_own_threads_and_runs(secured):
    alice = get_client(url=secured.url, api_key="key-a")
    bob = get_client(url=secured.url, api_key="key-b")
    thread = await alice.threads.create(metadata={"topic": "private"})
    tid = thread["thread_id"]
    assert thread["metadata"]["owner"] == "alice"
    run = await alice.runs.create(tid, "echo", input=HI)
    await alice.runs.join(tid, run["run_id"])

    for call in (
        bob.threads.get(tid),
        bob.threads.get_state(tid),
        bob.threads.update(tid, metadata={"owner": "bob"}),
        bob.runs.list(tid),
        bob.runs.get(tid, run["run_id"]),
        bob.runs.wait(tid, "echo", input=HI),
        bob.runs.create(tid, "echo", input=HI, if_not_exists="create"),
        bob.threads.delete(tid),
    ):
        with pytest.raises(httpx.HTTPStatusError) as err:  # NotFoundError, or the plain error of wait
            await call
        assert err.value.response.status_code == 404
    assert tid not in {t["thread_id"] for t in await bob.threads.search(limit=1000)}
    assert tid in {t["thread_id"] for t in await alice.threads.search(limit=1000)}

    # Alice's thread is untouched, and a patch cannot give it away.
    await alice.threads.update(tid, metadata={"owner": "bob", "k": 1})
    metadata = (await alice.threads.get(tid))["metadata"]
    assert (metadata["topic"], metadata["owner"], metadata["k"]) == ("private", "alice", 1)
    assert [r["run_id"] for r in await alice.runs.list(tid)] == [run["run_id"]]


async def test_store_namespaces_belong_to_the_identity_they_start_with(secured):
    alice = get_client(url=secured.url, api_key="key-a")
    bob = get_client(url=secured.url, api_key="key-b")
    await alice.store.put_item(["alice", "notes"], "n1", {"text": "mine"})
    with pytest.raises(NotFoundError):
        await alice.store.put_item(["bob", "notes"], "n1", {"text": "not mine"})
    with pytest.raises(NotFoundError):
        await bob.store.get_item(["alice", "notes"], "n1")
    assert (await alice.store.list_namespaces())["namespaces"] == [["alice", "notes"]]
    assert (await bob.store.list_namespaces())["namespaces"] == []


@pytest.fixture(scope="module")
def hooked(tmp_path_factory):
    """`threadbus dev` whose langgraph.json names an Auth object (tests/graphs/auth.py)."""
    tmp = tmp_path_factory.mktemp("hooked")
    proc = ThreadbusProcess(
        ["dev", "--data-dir", str(tmp / "data"), "--config", str(ROOT / "tests" / "graphs" / "auth_langgraph.json")],
        log_path=tmp / "threadbus.log",
    ).start()
    yield proc
    proc.stop()


def as_user(proc: ThreadbusProcess, name: str):
    return get_client(url=proc.url, headers={"Authorization": f"Bearer token-{name}"}, api_key=None)


async def test_a_custom_auth_hook_from_langgraph_json(hooked):
    async with httpx.AsyncClient(base_url=hooked.url) as http:
        refused = await http.post("/threads", json={}, headers={"Authorization": "Bearer nope"})
        assert refused.status_code == 401 and refused.json()["detail"] == "no valid token for /threads"
    carol = as_user(hooked, "carol")
    thread = await carol.threads.create()
    assert thread["metadata"]["owner"] == "carol"
    assert (await carol.runs.wait(thread["thread_id"], "echo", input=HI))["messages"][-1]["content"] == "echo: hi"
    with pytest.raises(NotFoundError):
        await as_user(hooked, "dave").threads.get(thread["thread_id"])


async def test_auth_on_handlers_label_threads_refuse_deletes_and_scope_the_store(hooked):
    bert, auditor = as_user(hooked, "bert"), as_user(hooked, "auditor")
    thread = await bert.threads.create(metadata={"topic": "x"})
    assert thread["metadata"] == {"topic": "x", "team": "blue", "owner": "bert"}
    mine = await auditor.threads.create()
    with pytest.raises(httpx.HTTPStatusError) as err:
        await auditor.threads.delete(mine["thread_id"])
    assert err.value.response.status_code == 403
    await bert.threads.delete(thread["thread_id"])

    # The handler puts bert's items under his identity, whatever namespace he names.
    await bert.store.put_item(["notes"], "n1", {"text": "hi"})
    assert (await bert.store.get_item(["bert", "notes"], "n1"))["value"] == {"text": "hi"}
    assert (await bert.store.get_item(["notes"], "n1"))["namespace"] == ["bert", "notes"]
    # Under the auditor's own namespace there is no such item: null, as LangGraph Platform answers.
    assert await auditor.store.get_item(["notes"], "n1") is None


async def test_auth_on_assistants_hides_others_assistants_and_refuses_updates(hooked):
    alice, bob, viewer = as_user(hooked, "alice"), as_user(hooked, "bob"), as_user(hooked, "viewer")
    mine = await alice.assistants.create("echo", name="alice's", metadata={"purpose": "test"})
    assert mine["metadata"] == {"purpose": "test", "owner": "alice"}
    assert (await alice.assistants.get(mine["assistant_id"]))["name"] == "alice's"
    assert [a["assistant_id"] for a in await alice.assistants.search(graph_id="echo")] == [mine["assistant_id"]]

    # Specific over resource: update has its own handler, read/search/count/delete the resource's.
    with pytest.raises(NotFoundError):
        await bob.assistants.get(mine["assistant_id"])
    assert mine["assistant_id"] not in [a["assistant_id"] for a in await bob.assistants.search()]
    assert await bob.assistants.count() == 0 and await alice.assistants.count() == 1
    with pytest.raises(NotFoundError):
        await bob.assistants.update(mine["assistant_id"], name="bob's now")
    with pytest.raises(NotFoundError):
        await bob.assistants.delete(mine["assistant_id"])
    with pytest.raises(NotFoundError):
        await bob.assistants.get_schemas(mine["assistant_id"])

    theirs = await viewer.assistants.create("echo", name="viewer's")
    with pytest.raises(httpx.HTTPStatusError) as err:
        await viewer.assistants.update(theirs["assistant_id"], name="renamed")
    assert err.value.response.status_code == 403
    assert (await viewer.assistants.get(theirs["assistant_id"]))["name"] == "viewer's"
    assert (await alice.assistants.update(mine["assistant_id"], name="renamed"))["name"] == "renamed"


async def test_auth_on_crons_filters_search_count_and_updates(hooked):
    alice, viewer = as_user(hooked, "alice"), as_user(hooked, "viewer")
    cron = await alice.crons.create("echo", schedule="0 0 1 1 *", input=HI, metadata={"job": "yearly"})
    assert cron["metadata"] == {"job": "yearly", "team": "red"}
    assert [c["cron_id"] for c in await alice.crons.search()] == [cron["cron_id"]]
    assert await alice.crons.count() == 1

    # A cron the filters exclude is gone for its own creator too: hidden from search and count,
    # 404 on update and delete.
    async with httpx.AsyncClient(base_url=hooked.url, headers={"Authorization": "Bearer token-alice"}) as http:
        moved = await http.patch(f"/runs/crons/{cron['cron_id']}", json={"metadata": {"team": "blue"}})
        assert moved.status_code == 200, moved.text
        assert (await http.patch(f"/runs/crons/{cron['cron_id']}", json={"enabled": False})).status_code == 404
    assert await alice.crons.search() == [] and await alice.crons.count() == 0
    with pytest.raises(NotFoundError):
        await alice.crons.delete(cron["cron_id"])

    theirs = await viewer.crons.create("echo", schedule="0 0 1 1 *", input=HI)
    async with httpx.AsyncClient(base_url=hooked.url, headers={"Authorization": "Bearer token-viewer"}) as http:
        refused = await http.patch(f"/runs/crons/{theirs['cron_id']}", json={"enabled": False})
    assert refused.status_code == 403
    await viewer.crons.delete(theirs["cron_id"])
