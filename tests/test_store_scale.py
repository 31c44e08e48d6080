"""One page of store search costs the same whatever the store holds: 200 items, then 20,000
over 200 namespaces, and the broker messages and database work behind a page do not change."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request

import nats
import pytest
from langgraph_sdk import get_client

from tests.graphs.embeddings import embed
from tests.support import TEST_GRAPHS, ThreadbusProcess, database_for
from threadbus.embedded import EmbeddedNats
from threadbus.graphs import GraphRegistry
from threadbus.read_model.database import Database
from threadbus.read_model.store_index import namespaces_sql, search_sql
from threadbus.store import open_store

TOPICS = ["pizza for dinner", "walk the dog", "flight to paris", "project deadline", "guitar song"]
PER_NAMESPACE = 100


async def _load(store, namespaces: range) -> None:
    """Items written through the store, as a graph run writes them (embedded once each)."""
    puts = [
        store.aput(("scale", f"ns{n:03d}"), f"k{i:03d}", {"text": f"{TOPICS[i % len(TOPICS)]} {i}", "i": i})
        for n in namespaces
        for i in range(PER_NAMESPACE)
    ]
    for start in range(0, len(puts), 500):
        await asyncio.gather(*puts[start : start + 500])


def _gateway_messages(monitor_port: int) -> int:
    """Messages between the broker and the gateway's connection (both directions)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{monitor_port}/connz?limit=1024", timeout=5) as resp:
        connections = json.load(resp)["connections"]
    return sum(c["in_msgs"] + c["out_msgs"] for c in connections if c.get("name") == "threadbus-gateway")


def _statements(url: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return sum(float(v) for v in re.findall(r"^threadbus_store_index_queries_total\{[^}]*\} (\S+)$", text, re.M))


async def _rows_touched(db: Database, sql: str, params: list) -> int:
    """Rows the statement's plan read from tables, kept or filtered out (EXPLAIN ANALYZE); a
    bitmap index scan only finds the rows its heap scan then reads, and is not counted twice."""
    async with db.connection() as conn:
        plan = (await (await conn.execute("explain (analyze, format json) " + sql, params)).fetchone())["QUERY PLAN"]

    def walk(node) -> int:
        here = 0
        if "Scan" in node["Node Type"] and node["Node Type"] != "Bitmap Index Scan":
            here = (node["Actual Rows"] + node.get("Rows Removed by Filter", 0)) * node["Actual Loops"]
        return int(here) + sum(walk(child) for child in node.get("Plans", ()))

    return walk(plan[0]["Plan"])


async def _cost(proc, monitor_port: int, db: Database, call, sql: tuple[str, list]) -> tuple[int, float, int]:
    """(broker messages, statements, rows read) behind one call: the fewest messages over three
    calls, as the gateway's connection also carries heartbeats now and then."""
    messages, statements = [], []
    for _ in range(3):
        m0, s0 = _gateway_messages(monitor_port), _statements(proc.url)
        await call()
        messages.append(_gateway_messages(monitor_port) - m0)
        statements.append(_statements(proc.url) - s0)
    assert len(set(statements)) == 1, statements
    return min(messages), statements[0], await _rows_touched(db, *sql)


@pytest.mark.timeout(600)
async def test_a_search_page_costs_the_same_at_200_and_20000_items(tmp_path):
    server = EmbeddedNats(tmp_path / "nats")
    server.start()
    proc = ThreadbusProcess(["dev", "--nats-url", server.url, "--config", str(TEST_GRAPHS)], log_path=tmp_path / "tb.log").start()
    nc = await nats.connect(server.url)
    db = Database(database_for(server.url))
    await db.open()
    store = await open_store(nc.jetstream(), db, GraphRegistry(TEST_GRAPHS))
    client = get_client(url=proc.url)
    query = (await asyncio.to_thread(embed, ["something to eat"]))[0]
    pages = {
        "ranked": (
            lambda: client.store.search_items(["scale", "ns001"], query="something to eat", limit=10),
            search_sql(("scale", "ns001"), query_vector=query, filter=None, limit=10, offset=0),
        ),
        "filtered": (
            lambda: client.store.search_items(["scale", "ns001"], filter={"i": {"$gte": 50}}, limit=10),
            search_sql(("scale", "ns001"), query_vector=None, filter={"i": {"$gte": 50}}, limit=10, offset=0),
        ),
        "newest": (
            lambda: client.store.search_items(["scale", "ns001"], limit=10),
            search_sql(("scale", "ns001"), query_vector=None, filter=None, limit=10, offset=0),
        ),
        "namespaces": (
            lambda: client.store.list_namespaces(prefix=["scale"], limit=10),
            namespaces_sql(prefix=("scale",), suffix=None, max_depth=None, limit=10, offset=0),
        ),
    }
    try:
        await _load(store, range(2))
        assert len((await client.store.search_items(["scale", "ns001"], query="food", limit=10))["items"]) == 10
        small = {name: await _cost(proc, server.monitor_port, db, call, sql) for name, (call, sql) in pages.items()}

        await _load(store, range(2, 200))
        await store.search_index.caught_up(timeout=300)  # a bulk load: the gateway's searches wait 10 s at most
        found = await client.store.list_namespaces(prefix=["scale"], limit=1000)
        assert len(found["namespaces"]) == 200
        # The planner's statistics as autovacuum would have them a minute after a bulk load: the
        # pages are measured with the plans a table of this size gets, not those of 200 rows.
        async with db.connection() as conn:
            await conn.execute("analyze")
        large = {name: await _cost(proc, server.monitor_port, db, call, sql) for name, (call, sql) in pages.items()}

        for name in pages:
            (small_messages, small_statements, small_rows), (messages, statements, rows) = small[name], large[name]
            assert messages == small_messages, f"{name}: {small_messages} broker messages at 200 items, {messages} at 20,000"
            assert statements == small_statements == 1, f"{name}: {small_statements} statements, then {statements}"
            if name == "namespaces":
                # One row per namespace, none per item. Postgres may read a table of 200 rows
                # whole instead of walking its index (it does: 3 pages), but never the items.
                assert rows <= 200, f"namespaces: {rows} rows read for a page of 200 namespaces"
            else:
                # At 200 items a table may be read whole rather than through an index: never fewer rows there.
                assert rows <= small_rows, f"{name}: {small_rows} rows read at 200 items, {rows} at 20,000"
    finally:
        await store.close()
        await db.close()
        await nc.close()
        proc.stop()
        server.stop()
