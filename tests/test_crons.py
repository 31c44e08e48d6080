"""Crons through langgraph_sdk: scheduled runs on a thread and stateless, search, update, delete,
and one run per occurrence with two gateways ticking."""

from __future__ import annotations

import asyncio

import pytest
from langgraph_sdk import get_client
from langgraph_sdk.errors import NotFoundError

from tests.support import TEST_GRAPHS, ThreadbusProcess

HI = {"messages": [{"role": "human", "content": "tick"}]}
EVERY_SECOND = "* * * * * *"  # croniter's optional seconds field


async def runs_of(client, thread_id: str) -> list[dict]:
    return await client.runs.list(thread_id, limit=100)


async def test_a_thread_cron_runs_on_its_schedule_until_disabled(client):
    thread = (await client.threads.create())["thread_id"]
    cron = await client.crons.create_for_thread(thread, "echo", schedule=EVERY_SECOND, input=HI, metadata={"job": "tick"})
    assert cron["thread_id"] == thread and cron["enabled"] and cron["next_run_date"]
    async with asyncio.timeout(30):
        while len([r for r in await runs_of(client, thread) if r["status"] == "success"]) < 2:
            await asyncio.sleep(0.2)
    runs = await runs_of(client, thread)
    assert all(r["metadata"]["cron_id"] == cron["cron_id"] for r in runs)

    found = await client.crons.search(thread_id=thread)
    assert [c["cron_id"] for c in found] == [cron["cron_id"]]
    assert await client.crons.count(metadata={"job": "tick"}) >= 1

    await client.crons.update(cron["cron_id"], enabled=False)
    await asyncio.sleep(1.5)  # an occurrence that was already firing may still land
    settled = len(await runs_of(client, thread))
    await asyncio.sleep(2.5)
    assert len(await runs_of(client, thread)) == settled, "a disabled cron kept firing"

    await client.crons.delete(cron["cron_id"])
    with pytest.raises(NotFoundError):
        await client.crons.delete(cron["cron_id"])


async def test_a_stateless_cron_runs_each_occurrence_on_a_new_thread(client):
    cron = await client.crons.create("echo", schedule=EVERY_SECOND, input=HI, on_run_completed="keep")
    try:
        async with asyncio.timeout(30):
            while len(threads := await client.threads.search(metadata={"cron_id": cron["cron_id"]})) < 2:
                await asyncio.sleep(0.2)
        assert len({t["thread_id"] for t in threads}) == len(threads)
    finally:
        await client.crons.delete(cron["cron_id"])


async def test_an_invalid_schedule_is_422(client):
    import httpx

    thread = (await client.threads.create())["thread_id"]
    with pytest.raises(httpx.HTTPStatusError) as err:
        await client.crons.create_for_thread(thread, "echo", schedule="every tuesday", input=HI)
    assert err.value.response.status_code == 422


async def test_two_gateways_fire_each_occurrence_once(client, server, nats_url, tmp_path):
    other = ThreadbusProcess(
        ["gateway", "--config", str(TEST_GRAPHS)], log_path=tmp_path / "gateway.log", env={"NATS_URL": nats_url}
    ).start()
    try:
        thread = (await client.threads.create())["thread_id"]
        cron = await get_client(url=other.url).crons.create_for_thread(
            thread, "noop", schedule=EVERY_SECOND, input={}, multitask_strategy="enqueue"
        )
        await asyncio.sleep(4)
        await client.crons.delete(cron["cron_id"])
        await asyncio.sleep(1.5)
        runs = await runs_of(client, thread)
        fired_at = sorted(r["created_at"] for r in runs)
        # One run per second of schedule, not two: both gateways tick, one occurrence one run.
        assert 2 <= len(runs) <= 7, fired_at
        assert len({r["run_id"] for r in runs}) == len(runs)
    finally:
        other.stop()
