"""The HTTP API through the official langgraph_sdk clients, against `threadbus dev` on a real nats-server."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from langgraph_sdk.errors import ConflictError, NotFoundError, UnprocessableEntityError

from threadbus.graphs import assistant_id_for

HUMAN = {"messages": [{"role": "human", "content": "hi"}]}


def said(text: str) -> dict:
    return {"messages": [{"role": "human", "content": text}]}


def contents(values) -> list[str]:
    return [m["content"] for m in values["messages"]]


async def test_graph_assistants_exist_under_name_and_uuid(client):
    found = await client.assistants.search(graph_id="echo")
    assert [a["assistant_id"] for a in found] == [assistant_id_for("echo")]
    assert found[0]["metadata"] == {"created_by": "system"}
    assert (await client.assistants.get(assistant_id_for("echo")))["graph_id"] == "echo"
    assert await client.assistants.count(graph_id="two_step") == 1


async def test_create_get_patch_search_delete_assistant(client):
    created = await client.assistants.create("echo", metadata={"team": "a"}, name="mine")
    assert created["version"] == 1 and created["name"] == "mine"
    patched = await client.assistants.update(created["assistant_id"], metadata={"k": 1})
    assert patched["version"] == 2 and patched["metadata"] == {"team": "a", "k": 1}
    assert [a["assistant_id"] for a in await client.assistants.search(metadata={"team": "a"})] == [created["assistant_id"]]
    graph = await client.assistants.get_graph(created["assistant_id"])
    assert {n["id"] for n in graph["nodes"]} >= {"__start__", "reply", "__end__"}
    schemas = await client.assistants.get_schemas(created["assistant_id"])
    assert schemas["graph_id"] == "echo" and "messages" in schemas["input_schema"]["properties"]
    await client.assistants.delete(created["assistant_id"])
    with pytest.raises(NotFoundError):
        await client.assistants.get(created["assistant_id"])


async def test_thread_lifecycle(client):
    thread = await client.threads.create(metadata={"user": "ada"})
    assert thread["status"] == "idle" and thread["values"] is None
    assert (await client.threads.get(thread["thread_id"]))["metadata"] == {"user": "ada"}
    updated = await client.threads.update(thread["thread_id"], metadata={"topic": "x"})
    assert updated["metadata"] == {"user": "ada", "topic": "x"}
    found = await client.threads.search(metadata={"user": "ada", "topic": "x"})
    assert [t["thread_id"] for t in found] == [thread["thread_id"]]
    assert await client.threads.count(metadata={"user": "ada", "topic": "x"}) == 1
    again = await client.threads.create(thread_id=thread["thread_id"], if_exists="do_nothing")
    assert again["thread_id"] == thread["thread_id"]
    with pytest.raises(ConflictError):
        await client.threads.create(thread_id=thread["thread_id"])
    await client.threads.delete(thread["thread_id"])
    with pytest.raises(NotFoundError):
        await client.threads.get(thread["thread_id"])


async def test_run_create_join_get_list_state(client):
    thread = await client.threads.create()
    tid = thread["thread_id"]
    run = await client.runs.create(tid, "echo", input=HUMAN)
    assert run["status"] == "pending" and run["assistant_id"] == assistant_id_for("echo")
    result = await client.runs.join(tid, run["run_id"])
    assert contents(result) == ["hi", "echo: hi"]
    assert (await client.runs.get(tid, run["run_id"]))["status"] == "success"
    assert [r["run_id"] for r in await client.runs.list(tid)] == [run["run_id"]]
    state = await client.threads.get_state(tid)
    assert contents(state["values"]) == ["hi", "echo: hi"]
    assert state["next"] == [] and state["checkpoint"]["checkpoint_id"]
    after = await client.threads.get(tid)
    assert after["status"] == "idle" and contents(after["values"]) == ["hi", "echo: hi"]
    assert after["metadata"]["graph_id"] == "echo"
    history = await client.threads.get_history(tid)
    # echo is one node: its run stores one checkpoint, at its end (docs/durability.md).
    assert len(history) == 1 and contents(history[0]["values"]) == ["hi", "echo: hi"]


async def test_a_deleted_run_is_not_found_at_once_by_get_and_join(client):
    # Its events stay in the log, marked deleted: neither answer may come from them.
    tid = (await client.threads.create())["thread_id"]
    run = await client.runs.create(tid, "echo", input=HUMAN)
    await client.runs.join(tid, run["run_id"])
    await client.runs.delete(tid, run["run_id"])
    async with asyncio.timeout(5):  # not after waiting for a decision on it
        for read in (client.runs.join, client.runs.get):
            with pytest.raises(httpx.HTTPStatusError) as found:
                await read(tid, run["run_id"])
            assert found.value.response.status_code == 404


async def test_wait_returns_final_values(client):
    thread = await client.threads.create()
    result = await client.runs.wait(thread["thread_id"], "two_step", input=said("why?"))
    assert contents(result) == ["why?", "thinking about: why?", "answer to: why?"]


async def test_sync_client(sync_client):
    thread = sync_client.threads.create()
    result = sync_client.runs.wait(thread["thread_id"], "echo", input=HUMAN)
    assert contents(result)[-1] == "echo: hi"
    assert sync_client.threads.get(thread["thread_id"])["status"] == "idle"
    assert [r["status"] for r in sync_client.runs.list(thread["thread_id"])] == ["success"]


async def test_second_run_is_enqueued_by_default(client):
    tid = (await client.threads.create())["thread_id"]
    slow = {"configurable": {"delay": 0.5}}
    first = await client.runs.create(tid, "two_step", input=said("one"), config=slow)
    await _until_status(client, tid, first["run_id"], "running")
    second = await client.runs.create(tid, "two_step", input=said("two"), config=slow)
    assert second["status"] == "pending"
    assert (await client.runs.get(tid, second["run_id"]))["status"] == "pending"
    await client.runs.join(tid, second["run_id"])
    assert (await client.runs.get(tid, first["run_id"]))["status"] == "success"
    assert (await client.runs.get(tid, second["run_id"]))["status"] == "success"
    state = await client.threads.get_state(tid)
    assert [c for c in contents(state["values"]) if not c.startswith("thinking")] == [
        "one",
        "answer to: one",
        "two",
        "answer to: two",
    ]


async def test_reject_gives_409_and_leaves_first_run_alone(client):
    tid = (await client.threads.create())["thread_id"]
    first = await client.runs.create(tid, "two_step", input=said("one"), config={"configurable": {"delay": 0.3}})
    with pytest.raises(ConflictError) as err:
        await client.runs.create(tid, "two_step", input=said("two"), multitask_strategy="reject")
    assert "already running" in str(err.value)
    await client.runs.join(tid, first["run_id"])
    runs = await client.runs.list(tid)
    assert [(r["run_id"], r["status"]) for r in runs] == [(first["run_id"], "success")]
    assert "two" not in contents((await client.threads.get_state(tid))["values"])


async def test_failing_graph_ends_in_error_and_executor_carries_on(client):
    tid = (await client.threads.create())["thread_id"]
    with pytest.raises(Exception, match="ValueError: kaboom"):
        await client.runs.wait(tid, "failing", input=HUMAN)
    result = await client.runs.wait(tid, "failing", input=HUMAN, raise_error=False)
    assert result == {"__error__": {"error": "ValueError", "message": "kaboom"}}
    runs = await client.runs.list(tid)
    assert {r["status"] for r in runs} == {"error"}
    assert (await client.threads.get(tid))["status"] == "error"
    other = (await client.threads.create())["thread_id"]
    assert contents(await client.runs.wait(other, "echo", input=HUMAN))[-1] == "echo: hi"


async def test_graph_factory_receives_run_config(client):
    tid = (await client.threads.create())["thread_id"]
    result = await client.runs.wait(tid, "configured", input=HUMAN, config={"configurable": {"greeting": "ahoy"}})
    assert contents(result)[-1] == "ahoy"


async def test_stateless_runs(client):
    result = await client.runs.wait(None, "echo", input=HUMAN)
    assert contents(result)[-1] == "echo: hi"


async def test_if_not_exists(client):
    tid = str(uuid.uuid4())
    with pytest.raises(NotFoundError):
        await client.runs.create(tid, "echo", input=HUMAN)
    run = await client.runs.create(tid, "echo", input=HUMAN, if_not_exists="create")
    await client.runs.join(tid, run["run_id"])
    assert (await client.threads.get(tid))["status"] == "idle"


async def test_bad_input(server, client):
    async with httpx.AsyncClient(base_url=server.url) as http:
        tid = (await client.threads.create())["thread_id"]
        cases = [
            ("POST", "/threads", b"{not json", 422),
            ("POST", "/threads", b'{"metadata": 5}', 422),
            ("POST", f"/threads/{tid}/runs", b'{"assistant_id": 5}', 422),
            ("POST", f"/threads/{tid}/runs", b'{"input": {}}', 422),
            ("POST", f"/threads/{tid}/runs", b'{"assistant_id": "echo", "multitask_strategy": "sometimes"}', 422),
            ("POST", f"/threads/{tid}/runs", b'{"assistant_id": "no-such-graph"}', 422),
            ("POST", f"/threads/{tid}/runs", b'{"assistant_id": "' + str(uuid.uuid4()).encode() + b'"}', 404),
            ("GET", "/threads/not-a-uuid", None, 422),
            ("GET", f"/threads/{uuid.uuid4()}", None, 404),
            ("GET", f"/threads/{tid}/runs/{uuid.uuid4()}", None, 404),
            ("GET", f"/threads/{tid}/runs/not-a-uuid", None, 422),
            ("GET", f"/threads/{tid}/runs/{uuid.uuid4()}/join", None, 404),
            ("GET", f"/threads/{tid}/runs/*/join", None, 422),
            ("GET", f"/threads/{uuid.uuid4()}/runs/{uuid.uuid4()}/join", None, 404),
            ("GET", f"/threads/{uuid.uuid4()}/runs", None, 404),
            ("GET", f"/assistants/{uuid.uuid4()}", None, 404),
            ("GET", "/assistants/not-a-uuid", None, 422),
            ("POST", f"/threads/{tid}/runs/{uuid.uuid4()}/cancel", None, 404),
            ("POST", "/threads/search", b'{"limit": "many"}', 422),
        ]
        for method, path, body, status in cases:
            resp = await http.request(method, path, content=body, headers={"content-type": "application/json"})
            assert resp.status_code == status, (method, path, body, resp.status_code, resp.text)
            assert "detail" in resp.json(), (method, path, resp.text)


async def _until_status(client, tid: str, rid: str, status: str, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while (await client.runs.get(tid, rid))["status"] != status:
            await asyncio.sleep(0.02)



async def test_a_named_durability_is_the_one_a_run_gets(client):
    # noop is one node, so a run that names no durability is stored at its end only
    # (docs/durability.md); one that asks for "sync" gets every step's checkpoint.
    default, every_step = (await client.threads.create())["thread_id"], (await client.threads.create())["thread_id"]
    assert await client.runs.wait(default, "noop", input={}) == await client.runs.wait(every_step, "noop", input={}, durability="sync")
    assert len(await client.threads.get_history(default)) == 1
    assert len(await client.threads.get_history(every_step)) > 1
