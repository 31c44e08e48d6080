"""Streaming a run's tokens over SSE, against the same graph run in-process.

The ``tokens`` example graph streams ``--tokens`` (2,000) words from a fake chat model. Measured:

- **in-process**: ``graph.astream(stream_mode="messages")`` in this process, no server: time to
  the first token and to the end. The floor: what LangGraph itself costs.
- **threadbus**: ``client.runs.stream(..., stream_mode="messages-tuple")`` through the official
  ``langgraph_sdk``: time to the first token counted from the ``metadata`` event (the run is
  accepted and about to start) and from the request, and total time to ``end``. ``--n`` (5)
  runs each; medians are printed.
- **concurrent**: ``--concurrent`` (20) such streams at once on separate threads; events/s over
  all of them, and every stream is checked to have received all its tokens.
- **v3** (the thread protocol, ``client.threads.stream``): the SDK's SSE transport opens the
  thread's event stream, then sends ``run.start``; time to the first event (the run's root
  ``lifecycle: running``) and to the first token after ``run.start`` answered, total time to the
  root ``completed``, against the graph's own in-process ``astream_events(version="v3")``; and
  events/s with ``--concurrent`` thread streams at once.

Targets from the issue: first token ≤ 30 ms after the run starts, total ≤ 2× in-process.
Output: one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from pathlib import Path

import httpx
from _common import client, ms, server_for
from langgraph_sdk.stream.transport import ProtocolSseTransport

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from graphs import tokens as token_graph  # noqa: E402

TARGETS = {"first_token_after_start_ms": 30, "total_vs_in_process": 2.0}
HI = {"messages": [{"role": "human", "content": "talk"}]}


async def in_process(n_tokens: int) -> tuple[float, float, int]:
    config = {"configurable": {"tokens": n_tokens}}
    start = time.perf_counter()
    first = None
    count = 0
    async for _ in token_graph.astream(HI, config, stream_mode="messages"):
        first = first or time.perf_counter() - start
        count += 1
    return first, time.perf_counter() - start, count


async def through_threadbus(c, n_tokens: int) -> dict:
    thread = (await c.threads.create())["thread_id"]
    config = {"configurable": {"tokens": n_tokens}}
    start = time.perf_counter()
    started = first = None
    count = 0
    async for part in c.runs.stream(thread, "tokens", input=HI, config=config, stream_mode="messages-tuple"):
        now = time.perf_counter()
        if part.event == "metadata":
            started = now
        elif part.event == "messages":
            first = first or now
            count += 1
    total = time.perf_counter() - start
    return {"first_after_start": first - started, "first_after_request": first - start, "total": total, "count": count}


async def concurrent(c, n_tokens: int, streams: int) -> dict:
    start = time.perf_counter()
    results = await asyncio.gather(*(through_threadbus(c, n_tokens) for _ in range(streams)))
    elapsed = time.perf_counter() - start
    events = sum(r["count"] for r in results)
    return {
        "concurrent_streams": streams,
        "concurrent_events_per_s": round(events / elapsed),
        "concurrent_s": round(elapsed, 2),
        "concurrent_all_tokens": all(r["count"] >= n_tokens for r in results),
    }


async def in_process_v3(n_tokens: int) -> tuple[float, float, int]:
    config = {"configurable": {"tokens": n_tokens}}
    start = time.perf_counter()
    first = None
    count = 0
    async with await token_graph.astream_events(HI, config, version="v3") as run:
        async for event in run:
            if event["method"] == "messages" and _is_delta(event["params"]["data"][0]):
                first = first or time.perf_counter() - start
                count += 1
    return first, time.perf_counter() - start, count


def _is_delta(data) -> bool:
    return isinstance(data, dict) and data.get("event") == "content-block-delta"


async def through_v3(url: str, n_tokens: int) -> dict:
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        transport = ProtocolSseTransport(client=http, thread_id=str(uuid.uuid4()))
        handle = transport.open_event_stream({"channels": ["messages", "lifecycle"]})
        await handle.ready
        start = time.perf_counter()
        reply = await transport.send_command(
            {"id": 1, "method": "run.start", "params": {"assistant_id": "tokens", "input": HI, "config": {"configurable": {"tokens": n_tokens}}}}
        )
        started = time.perf_counter()
        assert reply["type"] == "success", reply
        first_event = first_token = None
        count = 0
        async for event in handle.events:
            now = time.perf_counter()
            first_event = first_event or now
            params = event["params"]
            if event["method"] == "messages" and _is_delta(params["data"]):
                first_token = first_token or now
                count += 1
            elif event["method"] == "lifecycle" and not params["namespace"] and params["data"]["event"] in ("completed", "failed"):
                break
        total = time.perf_counter() - start
        await handle.close()
        await transport.close()
    return {
        "first_event_after_start": first_event - started,
        "first_token_after_start": first_token - started,
        "total": total,
        "count": count,
    }


async def concurrent_v3(url: str, n_tokens: int, streams: int) -> dict:
    start = time.perf_counter()
    results = await asyncio.gather(*(through_v3(url, n_tokens) for _ in range(streams)))
    elapsed = time.perf_counter() - start
    return {
        "v3_concurrent_events_per_s": round(sum(r["count"] for r in results) / elapsed),
        "v3_concurrent_s": round(elapsed, 2),
        "v3_concurrent_all_tokens": all(r["count"] >= n_tokens for r in results),
    }


async def main_async(args) -> int:
    local = [await in_process(args.tokens) for _ in range(args.n)]
    local_v3 = [await in_process_v3(args.tokens) for _ in range(args.n)]
    with server_for(args.url) as server:
        c = client(server.url)
        await through_threadbus(c, 10)  # warm-up: graph import, connections
        remote = [await through_threadbus(c, args.tokens) for _ in range(args.n)]
        load = await concurrent(c, args.tokens, args.concurrent)
        await through_v3(server.url, 10)
        remote_v3 = [await through_v3(server.url, args.tokens) for _ in range(args.n)]
        load_v3 = await concurrent_v3(server.url, args.tokens, args.concurrent)
        await c.aclose()
    in_process_total = statistics.median(t for _, t, _ in local)
    result = {
        "tokens": args.tokens,
        "in_process_first_ms": ms(statistics.median(f for f, _, _ in local)),
        "in_process_total_ms": ms(in_process_total),
        "first_token_after_start_ms": ms(statistics.median(r["first_after_start"] for r in remote)),
        "first_token_after_request_ms": ms(statistics.median(r["first_after_request"] for r in remote)),
        "total_ms": ms(statistics.median(r["total"] for r in remote)),
        "all_tokens": all(r["count"] >= args.tokens for r in remote),
        **load,
        "v3_in_process_total_ms": ms(statistics.median(t for _, t, _ in local_v3)),
        "v3_first_event_after_start_ms": ms(statistics.median(r["first_event_after_start"] for r in remote_v3)),
        "v3_first_token_after_start_ms": ms(statistics.median(r["first_token_after_start"] for r in remote_v3)),
        "v3_total_ms": ms(statistics.median(r["total"] for r in remote_v3)),
        "v3_all_tokens": all(r["count"] >= args.tokens for r in remote_v3),
        **load_v3,
    }
    result["total_vs_in_process"] = round(result["total_ms"] / result["in_process_total_ms"], 2)
    result["v3_total_vs_in_process"] = round(result["v3_total_ms"] / result["v3_in_process_total_ms"], 2)
    result["targets"] = TARGETS
    result["meets_targets"] = (
        result["first_token_after_start_ms"] <= TARGETS["first_token_after_start_ms"]
        and result["total_vs_in_process"] <= TARGETS["total_vs_in_process"]
        and result["v3_first_event_after_start_ms"] <= TARGETS["first_token_after_start_ms"]
        and result["v3_total_vs_in_process"] <= TARGETS["total_vs_in_process"]
    )
    print(json.dumps(result), flush=True)
    complete = result["all_tokens"] and load["concurrent_all_tokens"] and result["v3_all_tokens"] and load_v3["v3_concurrent_all_tokens"]
    return 0 if complete else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="benchmark this threadbus instead of starting one")
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--n", type=int, default=5, help="sequential streams measured (default 5)")
    parser.add_argument("--concurrent", type=int, default=20)
    sys.exit(asyncio.run(main_async(parser.parse_args())))


if __name__ == "__main__":
    main()
