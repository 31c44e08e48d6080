"""The store through the SDK: puts with embedding, and semantic search over 20,000 items.

What is measured, all through the official ``langgraph_sdk`` async client, nothing else, on a
server whose ``store.index`` embeds with the examples' embedder (``examples/langgraph.json``:
WordLlama, 256 dimensions, offline):

- **put throughput**: ``--items`` (20,000) ``store.put_item`` calls over ``--namespaces`` (200)
  namespaces ``("bench", <run>, "ns<k>")``, ``--concurrency`` (32) at a time, each item a short
  text embedded by the server; ``put_items_per_s`` = items / (first put → last answer);
  ``put_retries``: puts sent again after a transport error (a keep-alive connection closed).
- **semantic search**: ``search_items(prefix, query=..., limit=10)`` ``--n`` times (200) after
  ``--warmup`` (20), one after the other, queries cycling over a few topics: over every item
  (``search_all_*``: the 20,000) and over one namespace (``search_namespace_*``: 100). Each
  answer must hold 10 items with scores in descending order; p50/p99 in ms.
- **listing**: ``search_items`` without a query (newest first, limit 10) over one namespace, and
  ``list_namespaces(prefix, limit=10)``; p50 in ms.

Without ``--url`` it starts its own embedded nats-server and ``threadbus dev`` on a free port.
``--reference URL`` runs the same workload against another server with the same ``store.index``
(e.g. ``langgraph dev --config examples/langgraph.json``) and prints its line and ratios.
Output: one JSON line per server, then the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid

import httpx

from _common import client, ms, percentile, server_for

SUBJECTS = ["groceries and dinner", "walking the dog", "a flight to paris", "the project deadline", "guitar lessons",
            "marathon training", "a python bug", "the dentist appointment", "painting the kitchen", "a birthday party"]
QUERIES = ["what should I cook tonight", "my pet needs exercise", "travel plans", "work is due soon", "learning music"]


async def put_all(c, run: str, items: int, namespaces: int, concurrency: int) -> tuple[float, int]:
    """Seconds to put every item, ``concurrency`` puts in flight, and how many puts were sent
    again: a keep-alive connection the server closes just as the client reuses it fails the
    request (httpx.ReadError) before the server saw it; a put is idempotent, so it is repeated."""
    slots = asyncio.Semaphore(concurrency)
    retries = 0

    async def put(i: int) -> None:
        nonlocal retries
        text = f"Note {i}: about {SUBJECTS[i % len(SUBJECTS)]}, item {i // len(SUBJECTS)}"
        async with slots:
            for attempt in range(3):
                try:
                    await c.store.put_item(["bench", run, f"ns{i % namespaces:03d}"], f"k{i}", {"text": text, "i": i})
                    return
                except httpx.TransportError:
                    if attempt == 2:
                        raise
                    retries += 1

    start = time.perf_counter()
    await asyncio.gather(*(put(i) for i in range(items)))
    return time.perf_counter() - start, retries


async def latencies(call, n: int, warmup: int, check) -> list[float]:
    found = []
    for i in range(warmup + n):
        start = time.perf_counter()
        answer = await call(i)
        elapsed = time.perf_counter() - start
        check(answer)
        if i >= warmup:
            found.append(elapsed)
    return found


def ranked(answer) -> None:
    scores = [item["score"] for item in answer["items"]]
    if len(scores) != 10 or None in scores or scores != sorted(scores, reverse=True):
        raise RuntimeError(f"a semantic search answered {len(scores)} items with scores {scores}")


def ten(answer) -> None:
    if len(answer.get("items", answer.get("namespaces", []))) != 10:  # --namespaces 10 or more
        raise RuntimeError(f"expected a page of 10, got {answer}")


async def measure(url: str, name: str, args) -> dict:
    c = client(url)
    run = uuid.uuid4().hex[:8]
    elapsed, retries = await put_all(c, run, args.items, args.namespaces, args.concurrency)
    prefix, one = ["bench", run], ["bench", run, "ns001"]
    search_all = await latencies(
        lambda i: c.store.search_items(prefix, query=QUERIES[i % len(QUERIES)], limit=10), args.n, args.warmup, ranked
    )
    search_one = await latencies(
        lambda i: c.store.search_items(one, query=QUERIES[i % len(QUERIES)], limit=10), args.n, args.warmup, ranked
    )
    newest = await latencies(lambda i: c.store.search_items(one, limit=10), args.n, args.warmup, ten)
    listing = await latencies(lambda i: c.store.list_namespaces(prefix=prefix, limit=10), args.n, args.warmup, ten)
    return {
        "server": name,
        "items": args.items,
        "put_items_per_s": round(args.items / elapsed, 1),
        "put_retries": retries,
        "search_all_p50_ms": ms(percentile(search_all, 50)),
        "search_all_p99_ms": ms(percentile(search_all, 99)),
        "search_namespace_p50_ms": ms(percentile(search_one, 50)),
        "search_namespace_p99_ms": ms(percentile(search_one, 99)),
        "list_newest_p50_ms": ms(percentile(newest, 50)),
        "list_namespaces_p50_ms": ms(percentile(listing, 50)),
    }


def ratios(ours: dict, ref: dict) -> dict:
    return {
        "ratios": "threadbus vs reference (>1: threadbus better)",
        "put_items_per_s_ratio": round(ours["put_items_per_s"] / ref["put_items_per_s"], 2),
        **{
            f"{key}_ratio": round(ref[key] / ours[key], 2)
            for key in ("search_all_p50_ms", "search_namespace_p50_ms", "list_newest_p50_ms", "list_namespaces_p50_ms")
            if ours[key]
        },
    }


async def main_async(args) -> int:
    with server_for(args.url, keep=args.keep) as server:
        ours = await measure(server.url, args.name if args.url else server.name, args)
    print(json.dumps(ours), flush=True)
    if args.reference:
        with server_for(args.reference, name="reference") as ref_server:
            ref = await measure(ref_server.url, "reference", args)
        print(json.dumps(ref), flush=True)
        print(json.dumps(ratios(ours, ref)), flush=True)
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="benchmark this server instead of starting threadbus")
    parser.add_argument("--name", default="threadbus", help="name printed for --url (default: threadbus)")
    parser.add_argument("--reference", metavar="URL", help="also benchmark this server (same store.index) and compare")
    parser.add_argument("--items", type=int, default=20_000, help="items put (default 20,000)")
    parser.add_argument("--namespaces", type=int, default=200, help="namespaces they are spread over (default 200)")
    parser.add_argument("--concurrency", type=int, default=32, help="puts in flight (default 32)")
    parser.add_argument("--n", type=int, default=200, help="timed calls per measurement (default 200)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed calls first (default 20)")
    parser.add_argument("--keep", action="store_true", help="keep the started server's files (log, nats data)")
    sys.exit(asyncio.run(main_async(parser.parse_args())))


if __name__ == "__main__":
    main()
