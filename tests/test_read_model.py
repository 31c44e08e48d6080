"""The read model with real processes: rebuilt from the log it equals the live one, it survives a
killed projector and a database that goes away, and reads are exact for the caller's own writes.

One nats-server and one Postgres of this module's own, so that Postgres can be stopped and
started again while threadbus runs.
"""

from __future__ import annotations

import asyncio
import uuid

import httpx
import nats
import psycopg
import pytest
from langgraph_sdk import get_client
from psycopg.rows import dict_row

from contracts import subjects
from tests.support import TEST_GRAPHS, ThreadbusProcess, assert_verified
from threadbus.embedded import EmbeddedNats, EmbeddedPostgres
from threadbus.read_model.database import Database
from threadbus.read_model.projector import PositionRewound, Projector
from threadbus.read_model.reads import Reads
from threadbus.threadlog import ThreadLog


def said(text: str) -> dict:
    return {"messages": [{"role": "human", "content": text}]}


QUICK = {"configurable": {"delay": 0.05}}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("read_model")
    broker = EmbeddedNats(root / "nats")
    broker.start()
    database = EmbeddedPostgres(root / "postgres" / "data", durable=False)
    database.start()
    proc = ThreadbusProcess(
        ["dev", "--nats-url", broker.url, "--config", str(TEST_GRAPHS)],
        log_path=root / "threadbus.log",
        env={"THREADBUS_DATABASE_URL": database.url, "THREADBUS_DECISION_TIMEOUT_S": "30"},
    ).start()
    yield broker, database, proc
    proc.stop()
    database.stop()
    broker.stop()


TABLES = {
    "threads": "thread_id",
    "runs": "run_id",
    "checkpoints": "thread_id, checkpoint_ns, checkpoint_id",
}


def table_rows(url: str, threads: list[str]) -> dict[str, list]:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        return {
            table: conn.execute(f"select * from {table} where thread_id = any(%s) order by {key}", (threads,)).fetchall()
            for table, key in TABLES.items()
        }


async def rebuild(broker_url: str, database_url: str) -> None:
    """A projection of the whole log into an empty database, by the same projector code."""
    nc = await nats.connect(broker_url)
    db = Database(database_url)
    await db.open()
    tasks = [asyncio.create_task(Projector(nc, db).run())]
    try:
        await Reads(db, ThreadLog(nc), catch_up_timeout_s=60).caught_up()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await db.close()
        await nc.close()


def empty_database(admin_url: str) -> str:
    name = "rebuild_" + uuid.uuid4().hex[:8]
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    return admin_url.rsplit("/", 1)[0] + "/" + name


async def a_history_of_everything(client) -> list[str]:
    """Threads that went through every strategy, interrupts, rollbacks and deletions."""
    threads = []
    for strategy in ("enqueue", "reject", "interrupt", "rollback"):
        tid = (await client.threads.create(metadata={"strategy": strategy}))["thread_id"]
        threads.append(tid)
        first = await client.runs.create(tid, "two_step", input=said("one"), config={"configurable": {"delay": 0.5}})
        try:
            await client.runs.create(tid, "two_step", input=said("two"), multitask_strategy=strategy, config=QUICK)
        except httpx.HTTPStatusError:
            pass  # reject
        if strategy != "rollback":  # else it is gone
            await client.runs.join(tid, first["run_id"])
        await client.runs.wait(tid, "two_step", input=said("three"), config=QUICK)
    paused = (await client.threads.create())["thread_id"]
    threads.append(paused)
    await client.runs.wait(paused, "pausing", input=said("x"))
    deleted_run = await client.runs.wait(paused, "failing", input=said("y"), raise_error=False)
    runs = await client.runs.list(paused)
    await client.runs.delete(paused, runs[-1]["run_id"])
    gone = (await client.threads.create())["thread_id"]
    await client.runs.wait(gone, "echo", input=said("bye"))
    await client.threads.delete(gone)
    threads.append(gone)
    assert deleted_run is not None
    return threads


async def test_the_projection_rebuilt_from_an_empty_database_equals_the_live_one(stack):
    broker, database, proc = stack
    client = get_client(url=proc.url)
    threads = await a_history_of_everything(client)
    await client.threads.search(limit=1)  # returns once the live projection has caught up
    fresh = empty_database(database.url)
    await rebuild(broker.url, fresh)
    live, rebuilt = table_rows(database.url, threads), table_rows(fresh, threads)
    assert rebuilt == live
    assert live["runs"] and live["checkpoints"] and len(live["threads"]) == len(threads) - 1


async def test_a_projector_that_another_one_overtook_applies_nothing_stale(stack):
    """Two projectors on one database, as during a hand-over: the one left behind holds rows and
    a position that are no longer true, notices, and neither moves the position back nor writes
    rows computed from its old ones."""
    broker, database, proc = stack
    threads = await a_history_of_everything(get_client(url=proc.url))
    nc = await nats.connect(broker.url)
    db = Database(empty_database(database.url))
    await db.open()
    try:
        log = ThreadLog(nc)
        entries = sorted([*await log.read(subjects.all_control()), *await log.read(subjects.checkpoints(None))], key=lambda e: e.seq)
        behind, ahead = Projector(nc, db), Projector(nc, db)
        half, five_eighths, three_quarters = (len(entries) * k // 8 for k in (4, 5, 6))
        await behind.apply(entries[:half])
        await ahead.apply(entries[:three_quarters])
        # A late batch of events the other projector has applied already.
        assert await behind.apply(entries[half:five_eighths]) == entries[three_quarters - 1].seq
        assert await behind.apply(entries[five_eighths:]) == entries[-1].seq
        await behind.close()
        await ahead.close()
        await Reads(db, log, catch_up_timeout_s=60).caught_up()
        assert table_rows(db.url, threads) == table_rows(database.url, threads)
    finally:
        await db.close()
        await nc.close()


async def test_a_projector_whose_database_lost_commits_projects_them_again(stack):
    """The database comes back holding less than the projector applied (a restore, commits lost
    with synchronous_commit off): the projector notices at its next batch instead of going on
    past the hole, and what it applies again from the stored position gives the live tables."""
    broker, database, proc = stack
    threads = await a_history_of_everything(get_client(url=proc.url))
    nc = await nats.connect(broker.url)
    log = ThreadLog(nc)
    entries = sorted([*await log.read(subjects.all_control()), *await log.read(subjects.checkpoints(None))], key=lambda e: e.seq)
    half, three_quarters = len(entries) // 2, len(entries) * 3 // 4
    ahead_url = empty_database(database.url)
    ahead = Database(ahead_url)
    await ahead.open()
    behind = None
    try:
        projector = Projector(nc, ahead)
        await projector.apply(entries[:half])
        await projector.close()
        await ahead.close()
        with psycopg.connect(database.url, autocommit=True) as conn:  # the backup, taken at half
            restored_name = "restored_" + uuid.uuid4().hex[:8]
            conn.execute(f'create database "{restored_name}" template "{ahead_url.rsplit("/", 1)[1]}"')
        ahead = Database(ahead_url)
        await ahead.open()
        projector.db = ahead
        await projector.apply(entries[half:three_quarters])
        await projector.close()
        behind = Database(database.url.rsplit("/", 1)[0] + "/" + restored_name)
        await behind.open()
        projector.db = behind  # the same projector, its database restored from the backup
        with pytest.raises(PositionRewound):
            await projector.apply(entries[three_quarters:])
        assert projector.position == entries[half - 1].seq
        await projector.apply(entries[half:])
        await projector.close()
        await get_client(url=proc.url).threads.search(limit=1)  # the live projection caught up
        assert table_rows(behind.url, threads) == table_rows(database.url, threads)
    finally:
        for db in (ahead, behind):
            if db is not None:
                await db.close()
        await nc.close()


async def test_a_client_reads_its_own_writes(stack):
    _, _, proc = stack
    client = get_client(url=proc.url)
    for _ in range(5):
        marker = uuid.uuid4().hex
        tid = (await client.threads.create(metadata={"mine": marker}))["thread_id"]
        assert [t["thread_id"] for t in await client.threads.search(metadata={"mine": marker})] == [tid]
        assert await client.threads.count(metadata={"mine": marker}) == 1
        run = await client.runs.create(tid, "echo", input=said("hi"))
        await client.runs.join(tid, run["run_id"])
        assert (await client.runs.get(tid, run["run_id"]))["status"] == "success"
        assert [r["status"] for r in await client.runs.list(tid)] == ["success"]
        thread = await client.threads.get(tid)
        assert thread["status"] == "idle" and thread["values"]["messages"][-1]["content"] == "echo: hi"
        assert (await client.threads.search(values={"messages": [{"content": "echo: hi"}]}, ids=[tid]))[0]["thread_id"] == tid


async def test_killing_the_projector_mid_batch_loses_nothing_and_applies_nothing_twice(stack, tmp_path):
    broker, database, proc = stack
    client = get_client(url=proc.url)
    threads = [(await client.threads.create())["thread_id"] for _ in range(6)]
    sent = [await client.runs.create(tid, "two_step", input=said(f"m{i}"), config=QUICK) for i in range(5) for tid in threads]
    proc.kill()  # the projector is in the orchestrator: killed between (or inside) its transactions
    proc.start()
    for run in sent:
        await client.runs.join(run["thread_id"], run["run_id"])
    await client.threads.search(limit=1)
    fresh = empty_database(database.url)
    await rebuild(broker.url, fresh)
    assert table_rows(fresh, threads) == table_rows(database.url, threads)
    assert {r["status"] for r in table_rows(database.url, threads)["runs"]} == {"success"}
    await assert_verified(broker.url, threads)


async def test_reads_answer_503_while_the_database_is_away_and_recover(stack):
    broker, database, proc = stack
    client = get_client(url=proc.url)
    tid = (await client.threads.create())["thread_id"]
    database.stop()
    try:
        # Writes go on: they are the log's. Reads cannot be answered.
        run = await client.runs.create(tid, "echo", input=said("while away"))
        async with httpx.AsyncClient(base_url=proc.url, timeout=30) as http:
            response = await http.get(f"/threads/{tid}/runs/{run['run_id']}")
        assert response.status_code == 503 and "database" in response.json()["detail"]
    finally:
        database.start()
    async with asyncio.timeout(60):
        while True:
            try:
                if (await client.runs.get(tid, run["run_id"]))["status"] == "success":
                    break
            except httpx.HTTPStatusError as err:
                assert err.response.status_code == 503
            await asyncio.sleep(0.2)
    await client.threads.search(limit=1)
    fresh = empty_database(database.url)
    await rebuild(broker.url, fresh)
    assert table_rows(fresh, [tid]) == table_rows(database.url, [tid])
