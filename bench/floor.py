"""What a run cannot cost less than on this machine: the parts threadbus is made of, each alone.

Issue #13 asks for ``runs.wait`` p50 ≤ 6 ms, a burst of ≥ 300 runs/s and ≤ 3 ms of server CPU per
run (Python and nats-server). This measures, with nothing of threadbus around them:

- **graph**: LangGraph running a one-node graph that does nothing (``ainvoke``, in-memory saver,
  ``durability="exit"``): CPU per invocation.
- **append**: one JetStream publish to a file-backed stream, awaited (what every event of the log
  is): nats-server's CPU and the Python client's, per append.
- **delivery**: those events pushed to an ordered consumer (how every service reads the log):
  nats-server's CPU and the client's, per event delivered. Pushed back to back, many to a socket
  write, so a lower bound: a run's events come one at a time.
- **http**: one ``runs.wait`` request of the official SDK to a FastAPI app under uvicorn whose
  endpoint answers at once: the server process's CPU per request.

Then the floor of a run by the design (``../shared/DESIGN.md``): at least five appends (request,
accept, start, checkpoint, outcome) and twelve deliveries (the orchestrator decides on four
control events, the projector applies all five, the executor is handed the start, the waiting
gateway the accept and the outcome), one graph and one HTTP request, before any read, any
acknowledgement and any PostgreSQL statement, beside the issue's CPU target. One JSON line.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TypedDict

import nats
from fastapi import FastAPI
from fastapi.responses import Response
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from nats.js.api import StorageType, StreamConfig

from _common import _cpu_s, client, wait_ok
from threadbus.embedded import EmbeddedNats

APPENDS_PER_RUN = 5  # RunRequested, RunAccepted, RunStarted, the checkpoint, the outcome
DELIVERIES_PER_RUN = 12  # orchestrator 4, projector 5, executor 1, gateway 2
CPU_TARGET_MS = 3

empty_app = FastAPI()


@empty_app.get("/ok")
async def ok():
    return {"ok": True}


@empty_app.post("/threads/{thread_id}/runs/wait")
async def wait(thread_id: str):
    return Response(b"{}", media_type="application/json")


class State(TypedDict, total=False):
    x: int


async def graph_ms(n: int) -> float:
    builder = StateGraph(State)
    builder.add_node("nothing", lambda state: {})
    builder.add_edge(START, "nothing")
    builder.add_edge("nothing", END)
    graph = builder.compile(checkpointer=InMemorySaver())
    for i in range(n // 10):
        await graph.ainvoke({}, {"configurable": {"thread_id": f"warm-{i}"}}, durability="exit")
    start = time.process_time()
    for i in range(n):
        await graph.ainvoke({}, {"configurable": {"thread_id": str(i)}}, durability="exit")
    return (time.process_time() - start) * 1000 / n


async def append_ms(n: int) -> tuple[float, float, float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedNats(Path(tmp) / "nats")
        server.start()
        try:
            nc = await nats.connect(server.url)
            js = nc.jetstream()
            await js.add_stream(StreamConfig(name="FLOOR", subjects=["floor.>"], storage=StorageType.FILE))
            payload = b"x" * 300
            for i in range(n // 10):
                await js.publish(f"floor.{i}", payload)
            broker, python = _cpu_s(server.process.pid), time.process_time()
            for i in range(n):
                await js.publish(f"floor.{i}", payload)
            broker, python = _cpu_s(server.process.pid) - broker, time.process_time() - python
            # Every event published above, pushed to one ordered consumer.
            received = asyncio.Event()
            count = 0

            async def delivered(msg) -> None:
                nonlocal count
                count += 1
                if count == n + n // 10:
                    received.set()

            delivery_broker, delivery_python = _cpu_s(server.process.pid), time.process_time()
            sub = await js.subscribe("floor.>", ordered_consumer=True, cb=delivered)
            await received.wait()
            delivery_broker = _cpu_s(server.process.pid) - delivery_broker
            delivery_python = time.process_time() - delivery_python
            await sub.unsubscribe()
            await nc.close()
        finally:
            server.stop()
    per = n + n // 10
    return broker * 1000 / n, python * 1000 / n, delivery_broker * 1000 / per, delivery_python * 1000 / per


async def http_ms(n: int) -> float:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "floor:empty_app", "--port", str(port), "--log-level", "warning", "--no-access-log"],
        cwd=Path(__file__).parent,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ok(url, process=process)
        c = client(url)
        for _ in range(n // 10):
            await c.runs.wait("t", "noop", input={})
        before = _cpu_s(process.pid)
        for _ in range(n):
            await c.runs.wait("t", "noop", input={})
        spent = _cpu_s(process.pid) - before
        await c.aclose()
    finally:
        process.terminate()
        process.wait()
    return spent * 1000 / n


async def main() -> None:
    graph = await graph_ms(2000)
    append_broker, append_python, delivery_broker, delivery_python = await append_ms(3000)
    http = await http_ms(2000)
    appends = APPENDS_PER_RUN * (append_broker + append_python)
    deliveries = DELIVERIES_PER_RUN * (delivery_broker + delivery_python)
    floor = appends + deliveries + graph + http
    print(
        json.dumps(
            {
                "graph_cpu_ms": round(graph, 3),
                "append_broker_cpu_ms": round(append_broker, 3),
                "append_python_cpu_ms": round(append_python, 3),
                "delivery_broker_cpu_ms": round(delivery_broker, 3),
                "delivery_python_cpu_ms": round(delivery_python, 3),
                "http_request_server_cpu_ms": round(http, 3),
                "run_floor_cpu_ms": round(floor, 2),
                "run_floor_parts": f"{APPENDS_PER_RUN} appends + {DELIVERIES_PER_RUN} deliveries + 1 graph + 1 HTTP request",
                "cpu_target_ms": CPU_TARGET_MS,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    asyncio.run(main())
