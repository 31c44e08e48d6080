"""Runs through the SDK: latency of ``runs.wait`` and throughput of a burst of enqueued runs.

What is measured, all through the official ``langgraph_sdk`` async client, nothing else:

- **wait latency**: ``runs.wait(thread, "noop", input={})`` one after the other, each on a
  thread created beforehand (not timed), ``--n`` times (200) after ``--warmup`` (20) untimed
  ones; p50/p99/mean in ms of the ``wait`` call alone. The same again on one single thread
  (``wait_same_thread_*``), which shows whether latency grows with a thread's history.
- **burst**: ``--threads`` (50) threads are created (not timed); then, timed, every thread
  enqueues ``--per-thread`` (5) runs of ``echo`` with ``runs.create`` (the threads
  concurrently, each thread's runs in order so the expected order is known) and every run is
  joined with ``runs.join``. ``burst_runs_per_s`` = runs / (first create → last join).
  Afterwards every thread's state must hold its 5 human messages ``t<i>-r<j>`` in order and
  every run must be ``success``; otherwise the details go to stderr and the exit code is 1.

- **cost**: for a server this benchmark started, CPU per run (threadbus with its children, the
  embedded Postgres included, plus nats-server; utime + stime from ``/proc`` before and after)
  and broker messages per run (nats-server's ``/varz`` ``in_msgs + out_msgs``), for the wait loop
  (``wait_cpu_ms_per_run``, ``wait_broker_msgs_per_run``; a thread created per run included) and
  for the burst (``burst_...``). A server given by URL (``--reference``) shows null.

Without ``--url`` it starts its own embedded nats-server and ``threadbus dev`` on a free port
(``examples/langgraph.json``). ``--reference URL`` runs the same workload against another
server serving the same graphs (e.g. ``langgraph dev --config examples/langgraph.json``) and
prints its line and a line of ratios. Output: one JSON line per server, then the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from _common import Usage, client, ms, percentile, server_for

# From the issues: what threadbus must reach, and what LangGraph's in-memory dev server did.
TARGETS = {"wait_p50_ms": 6, "burst_runs_per_s": 300, "cpu_ms_per_run": 3}
REFERENCE_MEASURED = {"wait_p50_ms": 1000, "burst_runs_per_s": 66}


async def wait_latencies(c, n: int, warmup: int, *, same_thread: bool) -> list[float]:
    """Seconds per ``runs.wait`` on the noop graph, after ``warmup`` untimed calls."""
    shared = (await c.threads.create())["thread_id"] if same_thread else None
    latencies = []
    for i in range(warmup + n):
        thread_id = shared or (await c.threads.create())["thread_id"]
        start = time.perf_counter()
        result = await c.runs.wait(thread_id, "noop", input={})
        elapsed = time.perf_counter() - start
        if isinstance(result, dict) and "__error__" in result:
            raise RuntimeError(f"noop run failed: {result['__error__']}")
        if i >= warmup:
            latencies.append(elapsed)
    return latencies


def _human(i: int, j: int) -> str:
    return f"t{i}-r{j}"


async def burst(c, threads: int, per_thread: int) -> dict:
    """Enqueue ``per_thread`` echo runs on each of ``threads`` threads, join them all, check inputs."""
    thread_ids = [t["thread_id"] for t in await asyncio.gather(*(c.threads.create() for _ in range(threads)))]

    async def enqueue(i: int, thread_id: str) -> list[str]:
        run_ids = []
        for j in range(per_thread):
            run = await c.runs.create(
                thread_id, "echo", input={"messages": [{"role": "human", "content": _human(i, j)}]}
            )
            run_ids.append(run["run_id"])
        return run_ids

    async def join(thread_id: str, run_ids: list[str]) -> None:
        for run_id in run_ids:
            await c.runs.join(thread_id, run_id)

    start = time.perf_counter()
    runs = await asyncio.gather(*(enqueue(i, tid) for i, tid in enumerate(thread_ids)))
    created = time.perf_counter()
    await asyncio.gather(*(join(tid, rids) for tid, rids in zip(thread_ids, runs)))
    elapsed = time.perf_counter() - start

    problems = await check_inputs(c, thread_ids, runs, per_thread)
    total = threads * per_thread
    return {
        "burst_threads": threads,
        "burst_runs": total,
        "burst_create_s": round(created - start, 3),
        "burst_s": round(elapsed, 3),
        "burst_runs_per_s": round(total / elapsed, 1),
        "inputs_checked": not problems,
        "_problems": problems,
    }


async def check_inputs(c, thread_ids: list[str], runs: list[list[str]], per_thread: int) -> list[str]:
    """Every thread holds its human messages in order, and every run ended in success."""

    async def check(i: int, thread_id: str, run_ids: list[str]) -> list[str]:
        problems = []
        state = await c.threads.get_state(thread_id)
        messages = (state.get("values") or {}).get("messages") or []
        humans = [m.get("content") for m in messages if m.get("type") == "human"]
        expected = [_human(i, j) for j in range(per_thread)]
        if humans != expected:
            problems.append(f"thread {thread_id}: human messages {humans}, expected {expected}")
        for run_id in run_ids:
            status = (await c.runs.get(thread_id, run_id))["status"]
            if status != "success":
                problems.append(f"thread {thread_id}: run {run_id} is {status}")
        return problems

    found = await asyncio.gather(*(check(i, tid, rids) for i, (tid, rids) in enumerate(zip(thread_ids, runs))))
    return [p for ps in found for p in ps]


async def measure(server, name: str, args) -> dict:
    url = server.url
    c = client(url)
    try:
        await wait_latencies(c, args.warmup, 0, same_thread=False)
        before = Usage.of(server)
        fresh = await wait_latencies(c, args.n, 0, same_thread=False)
        wait_usage = Usage.per_run(before, Usage.of(server), len(fresh))
        same = await wait_latencies(c, args.n, 0, same_thread=True)
        result = {
            "server": name,
            "url": url,
            "wait_n": len(fresh),
            "wait_p50_ms": ms(percentile(fresh, 50)),
            "wait_p99_ms": ms(percentile(fresh, 99)),
            "wait_mean_ms": ms(sum(fresh) / len(fresh)),
            "wait_same_thread_p50_ms": ms(percentile(same, 50)),
            "wait_same_thread_p99_ms": ms(percentile(same, 99)),
            "wait_same_thread_last10_mean_ms": ms(sum(same[-10:]) / len(same[-10:])),
            # The wait loop's cost (thread creation included: one per run) and the burst's.
            **{f"wait_{k}": v for k, v in wait_usage.items()},
        }
        before = Usage.of(server)
        result.update(await burst(c, args.threads, args.per_thread))
        burst_usage = Usage.per_run(before, Usage.of(server), result["burst_runs"])
        result.update({f"burst_{k}": v for k, v in burst_usage.items()})
    finally:
        await c.aclose()
    result["targets"] = TARGETS
    result["langgraph_dev_measured"] = REFERENCE_MEASURED
    result["meets_targets"] = (
        result["wait_p50_ms"] <= TARGETS["wait_p50_ms"]
        and result["burst_runs_per_s"] >= TARGETS["burst_runs_per_s"]
        and (result["burst_cpu_ms_per_run"] or 0) <= TARGETS["cpu_ms_per_run"]
    )
    return result


def report(result: dict) -> bool:
    problems = result.pop("_problems")
    print(json.dumps(result), flush=True)
    for problem in problems:
        print(f"MISSING: {problem}", file=sys.stderr)
    if problems:
        print(f"FAIL: {result['server']}: {len(problems)} problems with the burst's inputs", file=sys.stderr)
    return not problems


def ratios(ours: dict, ref: dict) -> dict:
    """How many times better threadbus is (> 1 means threadbus is faster)."""
    return {
        "ratios": "threadbus vs reference (>1: threadbus better)",
        "wait_p50_speedup": round(ref["wait_p50_ms"] / ours["wait_p50_ms"], 1),
        "wait_p99_speedup": round(ref["wait_p99_ms"] / ours["wait_p99_ms"], 1),
        "burst_runs_per_s_ratio": round(ours["burst_runs_per_s"] / ref["burst_runs_per_s"], 1),
    }


async def main_async(args) -> int:
    ok = True
    with server_for(args.url, keep=args.keep) as server:
        ours = await measure(server, "threadbus" if not args.url else args.name, args)
    ok &= report(ours)
    if args.reference:
        with server_for(args.reference, name="reference") as ref_server:
            ref = await measure(ref_server, "reference", args)
        ok &= report(ref)
        print(json.dumps(ratios(ours, ref)), flush=True)
    return 0 if ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="benchmark this server instead of starting threadbus")
    parser.add_argument("--name", default="threadbus", help="name printed for --url (default: threadbus)")
    parser.add_argument("--reference", metavar="URL", help="also benchmark this server (serving noop and echo) and compare")
    parser.add_argument("--n", type=int, default=200, help="timed runs.wait calls (default 200)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed runs.wait calls first (default 20)")
    parser.add_argument("--threads", type=int, default=50, help="threads in the burst (default 50)")
    parser.add_argument("--per-thread", type=int, default=5, help="runs enqueued per thread (default 5)")
    parser.add_argument("--keep", action="store_true", help="keep the started server's files (log, nats data)")
    sys.exit(asyncio.run(main_async(parser.parse_args())))


if __name__ == "__main__":
    main()
