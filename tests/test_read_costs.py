"""Reads cost the same at the thousandth run as at the thirtieth, counted, not timed.

For each read, the broker messages it takes (nats-server's ``/varz`` ``in_msgs + out_msgs``) and
the database work behind it (``pg_stat_statements``: statements, rows returned, buffer pages
touched) are measured on a thread with 30 runs and on one with 1,000, and searches on a server
with 50 threads and with 5,000. Each is the least of a few repetitions, so that a lease renewal or
an idle fetch landing in the window is not counted.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request

import psycopg
import pytest
from langgraph_sdk import get_client

from tests.support import TEST_GRAPHS, ThreadbusProcess
from threadbus.embedded import EmbeddedNats, EmbeddedPostgres

# More checkpoints on the small thread than a history page's first read window holds: with one
# checkpoint per run (a one-node graph's durability), 10 runs made the whole thread one page,
# cheaper than any page of a longer thread, whatever its length.
SMALL_RUNS, LARGE_RUNS = 30, 1_000
SMALL_THREADS, LARGE_THREADS = 50, 5_000
# What a read may cost more on the large side: a message or two of background traffic that
# every repetition met, a page more of an index, and for a run (which the projector applies in
# however many batches its events arrive in) a batch more.
SLACK = {"messages": 2, "statements": 12, "rows": 12, "pages": 24}
# Longer than the projector's wait for more events (projector_batch_wait_s) and a batch's work.
SETTLED_S = 0.2


def said(text: str) -> dict:
    return {"messages": [{"role": "human", "content": text}]}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("read_costs")
    broker = EmbeddedNats(root / "nats")
    broker.start()
    database = EmbeddedPostgres(root / "postgres" / "data", durable=False, options={"shared_preload_libraries": "pg_stat_statements"})
    database.start()
    with psycopg.connect(database.url, autocommit=True) as conn:
        conn.execute("create extension pg_stat_statements")
    proc = ThreadbusProcess(
        ["dev", "--nats-url", broker.url, "--config", str(TEST_GRAPHS)],
        log_path=root / "threadbus.log",
        env={"THREADBUS_DATABASE_URL": database.url},
    ).start()
    yield broker, database, proc
    proc.stop()
    database.stop()
    broker.stop()


def broker_messages(broker: EmbeddedNats) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{broker.monitor_port}/varz") as resp:
        varz = json.load(resp)
    return varz["in_msgs"] + varz["out_msgs"]


def database_work(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        calls, rows, pages = conn.execute(
            "select coalesce(sum(calls), 0), coalesce(sum(rows), 0), coalesce(sum(shared_blks_hit + shared_blks_read), 0)"
            " from pg_stat_statements where query not like '%pg_stat_statements%'"
        ).fetchone()
    return {"statements": int(calls), "rows": int(rows), "pages": int(pages)}


async def projection_settled(url: str) -> None:
    """Returns once the projector's position has not moved for a while: what a read wrote to the
    log (a run) is projected in the read's window, not partly after it. Named for the statistics
    query's filter, so that it is not counted."""
    last, still = None, 0.0
    with psycopg.connect(url, autocommit=True) as conn:
        while still < SETTLED_S:
            (position,) = conn.execute("select position /* pg_stat_statements: the test's */ from projection_positions").fetchone()
            still = still + 0.02 if position == last else 0.0
            last = position
            await asyncio.sleep(0.02)


async def cost(stack, read, repeats: int = 5) -> dict[str, int]:
    broker, database, _ = stack
    await read()  # warm: caches, connections
    best: dict[str, int] | None = None
    for _ in range(repeats):
        await projection_settled(database.url)
        messages, work = broker_messages(broker), database_work(database.url)
        await read()
        await projection_settled(database.url)
        after = database_work(database.url)
        # Our own query of the statistics is excluded above; the broker is asked after the database.
        measured = {"messages": broker_messages(broker) - messages, **{k: after[k] - work[k] for k in work}}
        best = measured if best is None else {k: min(best[k], measured[k]) for k in measured}
    return best


def assert_flat(name: str, small: dict[str, int], large: dict[str, int]) -> None:
    for key, slack in SLACK.items():
        assert large[key] <= small[key] + slack, f"{name}: {key} {small[key]} at small size, {large[key]} at large"


async def runs_on(client, n: int) -> str:
    tid = (await client.threads.create())["thread_id"]
    last = None
    for i in range(n):
        last = await client.runs.create(tid, "noop", input={"i": i})
    await client.runs.join(tid, last["run_id"])
    return tid


@pytest.mark.timeout(900)
async def test_reads_of_one_thread_cost_the_same_at_1000_runs_as_at_10(stack):
    client = get_client(url=stack[2].url)
    small, large = await runs_on(client, SMALL_RUNS), await runs_on(client, LARGE_RUNS)
    reads = {
        "runs.list(limit=10)": lambda tid: client.runs.list(tid, limit=10),
        "threads.get": lambda tid: client.threads.get(tid),
        "threads.get_state": lambda tid: client.threads.get_state(tid),
        "threads.get_history(limit=10)": lambda tid: client.threads.get_history(tid, limit=10),
        "runs.wait": lambda tid: client.runs.wait(tid, "noop", input={"i": -1}),
    }
    for name, read in reads.items():
        assert_flat(name, await cost(stack, lambda: read(small)), await cost(stack, lambda: read(large)))


@pytest.mark.timeout(900)
async def test_a_search_costs_the_same_among_5000_threads_as_among_50(stack):
    client = get_client(url=stack[2].url)

    async def create(n: int) -> None:
        for start in range(0, n, 50):
            await asyncio.gather(*(client.threads.create(metadata={"batch": start}) for _ in range(min(50, n - start))))

    async def search():
        assert len(await client.threads.search(limit=10)) == 10

    await create(SMALL_THREADS)
    small = await cost(stack, search)
    await create(LARGE_THREADS - SMALL_THREADS)
    assert await client.threads.count() >= LARGE_THREADS
    assert_flat("threads.search(limit=10)", small, await cost(stack, search))
