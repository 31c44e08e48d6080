"""Double texting end to end: the four strategies through langgraph_sdk against `threadbus dev`.

The graph's steps take a configurable delay; the second message arrives while the first run is
in its first step, as in LangGraph's double-texting lesson.
"""

from __future__ import annotations

import asyncio

import pytest
from langgraph_sdk.errors import ConflictError, NotFoundError

from threadbus.threadlog import ThreadLog

SLOW = {"configurable": {"delay": 0.5}}


def said(text: str) -> dict:
    return {"messages": [{"role": "human", "content": text}]}


def contents(values) -> list[str]:
    return [m["content"] for m in values["messages"]]


async def until_status(client, tid: str, rid: str, status: str, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while (await client.runs.get(tid, rid))["status"] != status:
            await asyncio.sleep(0.01)


async def start_slow_run(client, text: str = "first"):
    tid = (await client.threads.create())["thread_id"]
    run = await client.runs.create(tid, "two_step", input=said(text), config=SLOW)
    await until_status(client, tid, run["run_id"], "running")
    return tid, run


async def test_reject(client):
    tid, first = await start_slow_run(client)
    with pytest.raises(ConflictError):
        await client.runs.create(tid, "two_step", input=said("second"), multitask_strategy="reject")
    await client.runs.join(tid, first["run_id"])
    state = await client.threads.get_state(tid)
    assert contents(state["values"]) == ["first", "thinking about: first", "answer to: first"]
    assert [r["status"] for r in await client.runs.list(tid)] == ["success"]


async def test_enqueue(client):
    tid, first = await start_slow_run(client)
    second = await client.runs.create(tid, "two_step", input=said("second"), config=SLOW, multitask_strategy="enqueue")
    await client.runs.join(tid, second["run_id"])
    state = await client.threads.get_state(tid)
    assert [c for c in contents(state["values"]) if not c.startswith("thinking")] == [
        "first",
        "answer to: first",
        "second",
        "answer to: second",
    ]
    assert {r["run_id"]: r["status"] for r in await client.runs.list(tid)} == {
        first["run_id"]: "success",
        second["run_id"]: "success",
    }


async def test_interrupt(client):
    tid, first = await start_slow_run(client)
    second = await client.runs.create(tid, "two_step", input=said("second"), multitask_strategy="interrupt")
    await client.runs.join(tid, second["run_id"])
    state = await client.threads.get_state(tid)
    assert contents(state["values"]) == ["first", "second", "thinking about: second", "answer to: second"]
    assert (await client.runs.get(tid, first["run_id"]))["status"] == "interrupted"
    assert (await client.runs.get(tid, second["run_id"]))["status"] == "success"


async def test_interrupt_of_a_one_node_run_keeps_its_input(client):
    """A one-node graph's run stores its state only when it ends (docs/durability.md); interrupted
    before that, it still keeps its input, as with LangGraph's default durability."""
    for first_durability in ({}, {"durability": "async"}):
        tid = (await client.threads.create())["thread_id"]
        first = await client.runs.create(tid, "slow", input=said("first"), config={"configurable": {"delay": 2}}, **first_durability)
        await until_status(client, tid, first["run_id"], "running")
        second = await client.runs.create(tid, "slow", input=said("second"), multitask_strategy="interrupt")
        await client.runs.join(tid, second["run_id"])
        state = await client.threads.get_state(tid)
        assert contents(state["values"]) == ["first", "second", "replied to: second"], first_durability
        assert (await client.runs.get(tid, first["run_id"]))["status"] == "interrupted"


async def test_rollback(client):
    tid, first = await start_slow_run(client)
    second = await client.runs.create(tid, "two_step", input=said("second"), multitask_strategy="rollback")
    await client.runs.join(tid, second["run_id"])
    state = await client.threads.get_state(tid)
    assert contents(state["values"]) == ["second", "thinking about: second", "answer to: second"]
    with pytest.raises(NotFoundError):
        await client.runs.get(tid, first["run_id"])
    assert [r["run_id"] for r in await client.runs.list(tid)] == [second["run_id"]]
    history = await client.threads.get_history(tid, limit=100)
    assert all(h["metadata"].get("run_id") != first["run_id"] for h in history)
    assert all("first" not in contents(h["values"]) for h in history if h["values"])


async def test_running_and_queued_then_interrupt(client):
    tid, a = await start_slow_run(client, "a")
    b = await client.runs.create(tid, "two_step", input=said("b"), config=SLOW)
    c = await client.runs.create(tid, "two_step", input=said("c"), multitask_strategy="interrupt")
    await client.runs.join(tid, c["run_id"])
    statuses = {r["run_id"]: r["status"] for r in await client.runs.list(tid)}
    assert statuses == {a["run_id"]: "interrupted", b["run_id"]: "interrupted", c["run_id"]: "success"}
    assert "b" not in contents((await client.threads.get_state(tid))["values"])


async def test_running_and_queued_then_rollback(client):
    tid, a = await start_slow_run(client, "a")
    b = await client.runs.create(tid, "two_step", input=said("b"), config=SLOW)
    c = await client.runs.create(tid, "two_step", input=said("c"), multitask_strategy="rollback")
    await client.runs.join(tid, c["run_id"])
    assert [r["run_id"] for r in await client.runs.list(tid)] == [c["run_id"]]
    for gone in (a, b):
        with pytest.raises(NotFoundError):
            await client.runs.get(tid, gone["run_id"])
    assert contents((await client.threads.get_state(tid))["values"]) == ["c", "thinking about: c", "answer to: c"]


async def test_ten_enqueued_runs_succeed_in_order(client):
    tid = (await client.threads.create())["thread_id"]
    runs = [await client.runs.create(tid, "echo", input=said(f"m{i}")) for i in range(10)]
    await client.runs.join(tid, runs[-1]["run_id"])
    assert {r["status"] for r in await client.runs.list(tid, limit=20)} == {"success"}
    humans = [c for c in contents((await client.threads.get_state(tid))["values"]) if not c.startswith("echo")]
    assert humans == [f"m{i}" for i in range(10)]


async def test_cancel_endpoint(client):
    tid, first = await start_slow_run(client)
    queued = await client.runs.create(tid, "two_step", input=said("queued"), config=SLOW)
    await client.runs.cancel(tid, queued["run_id"])  # wait=0 → 202
    await client.runs.cancel(tid, first["run_id"], wait=True)
    assert (await client.runs.get(tid, first["run_id"]))["status"] == "interrupted"
    await until_status(client, tid, queued["run_id"], "interrupted")
    with pytest.raises(NotFoundError):
        await client.runs.cancel(tid, first["run_id"])  # no longer in flight
    assert (await client.threads.get(tid))["status"] == "idle"


async def test_cancel_with_rollback(client):
    tid, first = await start_slow_run(client)
    await client.runs.cancel(tid, first["run_id"], wait=True, action="rollback")
    with pytest.raises(NotFoundError):
        await client.runs.get(tid, first["run_id"])
    assert (await client.threads.get_state(tid))["values"] == {}


async def test_rollback_leaves_a_tombstone_in_the_log(client, nats_url):
    import nats

    import contracts
    from contracts import subjects

    tid, first = await start_slow_run(client)
    second = await client.runs.create(tid, "echo", input=said("second"), multitask_strategy="rollback")
    await client.runs.join(tid, second["run_id"])
    nc = await nats.connect(nats_url)
    try:
        entries = await ThreadLog(nc).read(subjects.run_all(tid, first["run_id"]))
    finally:
        await nc.close()
    assert [type(e.event()) for e in entries] == [contracts.RunRolledBack]
