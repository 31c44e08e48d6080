"""Reads at small and large history: their latency, and the large/small ratio.

All through the official ``langgraph_sdk`` async client. A thread with ``--small`` (20) runs and
one with ``--large`` (1,000) runs of the noop graph are built (not timed); then each read is timed
``--n`` (50) times on each and its p50 printed with the ratio: ``runs.list(limit=10)``,
``threads.get``, ``threads.get_state``, ``threads.get_history(limit=10)``. ``runs.wait`` is timed
as runs 1–40 of a new thread and again once it has ``--large`` runs. Searches: ``threads.search
(limit=10)`` and ``threads.count`` with ``--few`` (50) and ``--many`` (5,000) threads on the server.

Targets (the issue): every ratio ≤ 1.5, ``runs.wait`` ≤ 1.3, search/count ≤ 2, and
``runs.list(limit=10)`` at 1,000 runs within 2× of LangGraph's in-memory server at 200
(``--reference URL`` runs the same against it and prints its figures beside ours).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from _common import client, ms, percentile, server_for

TARGET_RATIO = {"runs.wait": 1.3, "threads.search": 2.0, "threads.count": 2.0}


async def timed(read, n: int) -> float:
    await read()
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        await read()
        samples.append(time.perf_counter() - start)
    return ms(percentile(samples, 50))


async def thread_with_runs(c, runs: int) -> str:
    tid = (await c.threads.create())["thread_id"]
    last = None
    for i in range(runs):
        last = await c.runs.create(tid, "noop", input={"i": i})
    await c.runs.join(tid, last["run_id"])
    return tid


async def wait_p50(c, tid: str, n: int) -> float:
    return await timed(lambda: c.runs.wait(tid, "noop", input={}), n)


async def create_threads(c, n: int) -> None:
    for start in range(0, n, 50):
        await asyncio.gather(*(c.threads.create(metadata={"bench": "history"}) for _ in range(min(50, n - start))))


async def measure(url: str, args) -> dict:
    c = client(url)
    out: dict = {}
    small, large = await thread_with_runs(c, args.small), await thread_with_runs(c, args.large)
    reads = {
        "runs.list": lambda tid: c.runs.list(tid, limit=10),
        "threads.get": lambda tid: c.threads.get(tid),
        "threads.get_state": lambda tid: c.threads.get_state(tid),
        "threads.get_history": lambda tid: c.threads.get_history(tid, limit=10),
    }
    for name, read in reads.items():
        out[name] = {"small_ms": await timed(lambda: read(small), args.n), "large_ms": await timed(lambda: read(large), args.n)}
    fresh = (await c.threads.create())["thread_id"]
    out["runs.wait"] = {"small_ms": await wait_p50(c, fresh, 40), "large_ms": await wait_p50(c, large, 40)}
    searches = {"threads.search": lambda: c.threads.search(limit=10), "threads.count": lambda: c.threads.count()}
    already = await c.threads.count()
    await create_threads(c, max(0, args.few - already))
    few = {name: await timed(read, args.n) for name, read in searches.items()}
    await create_threads(c, max(0, args.many - await c.threads.count()))
    for name, read in searches.items():
        out[name] = {"small_ms": few[name], "large_ms": await timed(read, args.n)}
    for figures in out.values():
        figures["ratio"] = round(figures["large_ms"] / max(figures["small_ms"], 1e-6), 2)
    return out


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="measure this server instead of starting threadbus")
    parser.add_argument("--reference", help="also measure this server (e.g. langgraph dev), side by side")
    parser.add_argument("--small", type=int, default=20)
    parser.add_argument("--large", type=int, default=1000)
    parser.add_argument("--few", type=int, default=50)
    parser.add_argument("--many", type=int, default=5000)
    parser.add_argument("--n", type=int, default=50)
    args = parser.parse_args()
    results = {}
    with server_for(args.url) as server:
        results["threadbus"] = await measure(server.url, args)
    if args.reference:
        reference_args = argparse.Namespace(**{**vars(args), "large": 200})
        results["reference"] = await measure(args.reference, reference_args)
    for name, figures in results.items():
        print(json.dumps({"server": name, **figures}))
    ours = results["threadbus"]
    missed = [k for k, f in ours.items() if f["ratio"] > TARGET_RATIO.get(k, 1.5)]
    summary = {"targets_missed": missed}
    if "reference" in results:
        summary["runs.list_1000_vs_reference_200"] = round(ours["runs.list"]["large_ms"] / results["reference"]["runs.list"]["large_ms"], 2)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
