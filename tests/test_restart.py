"""State survives a full restart: every process, the broker included, stops and starts again."""

from __future__ import annotations

import asyncio

from langgraph_sdk import get_client

from tests.support import TEST_GRAPHS, ThreadbusProcess


def said(text: str) -> dict:
    return {"messages": [{"role": "human", "content": text}]}


async def snapshot(client, tid: str) -> dict:
    runs = await client.runs.list(tid)
    return {
        "thread": {k: v for k, v in (await client.threads.get(tid)).items() if k != "state_updated_at"},
        "state": await client.threads.get_state(tid),
        "runs": sorted((r["run_id"], r["status"]) for r in runs),
        "history": [h["checkpoint"]["checkpoint_id"] for h in await client.threads.get_history(tid, limit=50)],
    }


async def test_full_restart_keeps_threads_runs_statuses_assistants_and_the_store(tmp_path):
    data_dir = tmp_path / "data"

    def start() -> ThreadbusProcess:
        return ThreadbusProcess(
            ["dev", "--data-dir", str(data_dir), "--config", str(TEST_GRAPHS)], log_path=tmp_path / "threadbus.log"
        ).start()

    proc = start()
    try:
        client = get_client(url=proc.url)
        ok = (await client.threads.create(metadata={"who": "restart"}))["thread_id"]
        await client.runs.wait(ok, "echo", input=said("one"))
        await client.runs.wait(ok, "echo", input=said("two"))
        failed = (await client.threads.create())["thread_id"]
        await client.runs.wait(failed, "failing", input=said("x"), raise_error=False)
        before = {tid: await snapshot(client, tid) for tid in (ok, failed)}
        aid = (await client.assistants.create("echo", name="kept"))["assistant_id"]
        await client.assistants.update(aid, name="kept v2")
        await client.store.put_item(["kept"], "item", {"v": 1})
    finally:
        assert proc.stop() == 0
    # Nothing is left running: the broker's data dir is free for the next start.

    proc = start()
    try:
        client = get_client(url=proc.url)
        after = {tid: await snapshot(client, tid) for tid in (ok, failed)}
        assert after == before
        assert [(v["version"], v["name"]) for v in await client.assistants.get_versions(aid)] == [(2, "kept v2"), (1, "kept")]
        assert (await client.store.get_item(["kept"], "item"))["value"] == {"v": 1}
        assert after[ok]["thread"]["status"] == "idle"
        assert after[failed]["thread"]["status"] == "error"
        # And the thread carries on from where it was.
        result = await client.runs.wait(ok, "echo", input=said("three"))
        assert [m["content"] for m in result["messages"]] == ["one", "echo: one", "two", "echo: two", "three", "echo: three"]
    finally:
        proc.stop()


async def test_accepted_run_is_executed_after_a_restart(tmp_path):
    """A run the gateway accepted while no executor was running is run once one starts."""
    data_dir = tmp_path / "data"
    proc = ThreadbusProcess(
        ["dev", "--data-dir", str(data_dir), "--config", str(TEST_GRAPHS)], log_path=tmp_path / "threadbus.log"
    ).start()
    try:
        client = get_client(url=proc.url)
        tid = (await client.threads.create())["thread_id"]
        slow = {"configurable": {"delay": 1.0}}
        first = await client.runs.create(tid, "two_step", input=said("first"), config=slow)
        queued = await client.runs.create(tid, "two_step", input=said("queued"))
        assert queued["status"] == "pending"
    finally:
        proc.stop()
    proc.start()
    try:
        client = get_client(url=proc.url)
        async with asyncio.timeout(60):
            await client.runs.join(tid, queued["run_id"])
        statuses = {r["run_id"]: r["status"] for r in await client.runs.list(tid)}
        assert statuses[queued["run_id"]] == "success"
        assert statuses[first["run_id"]] == "success"
        values = (await client.threads.get_state(tid))["values"]
        assert [m["content"] for m in values["messages"] if m["type"] == "human"] == ["first", "queued"]
    finally:
        proc.stop()
