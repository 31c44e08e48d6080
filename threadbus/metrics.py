"""Prometheus metrics and health endpoints.

Every service exposes ``/metrics`` (Prometheus text format), ``/ok`` (liveness: the process
answers) and ``/ready`` (readiness: connected to NATS). The gateway serves them on its API
port; the orchestrator and executor on ``THREADBUS_METRICS_PORT`` when it is set. Under
``threadbus dev`` all services share one process, so the gateway's ``/metrics`` shows them all.

Per-thread labels would be unbounded, so queue depth is the total and the deepest queue among
the threads the orchestrator holds in memory.
"""

from __future__ import annotations

from fastapi import Depends, FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

RUN_REQUESTS = Counter(
    "threadbus_run_requests_total", "Run requests decided by the orchestrator.", ["strategy", "decision"]
)
RUN_OUTCOMES = Counter("threadbus_run_outcomes_total", "Runs ended by an executor, by outcome.", ["outcome"])
DECISION_SECONDS = Histogram(
    "threadbus_decision_seconds",
    "From a command landing in the log to the orchestrator's decision being appended.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
QUEUED_RUNS = Gauge("threadbus_queued_runs", "Accepted runs waiting to start, over the threads in memory.")
DEEPEST_QUEUE = Gauge("threadbus_deepest_thread_queue", "The longest queue of a single thread in memory.")
PARTITIONS_HELD = Gauge("threadbus_orchestrator_partitions", "Thread partitions this orchestrator decides for.")
EXECUTOR_SLOTS = Gauge("threadbus_executor_slots", "Runs this executor may execute at once.")
EXECUTOR_BUSY = Gauge("threadbus_executor_busy_slots", "Runs this executor is executing.")
REDELIVERIES = Counter("threadbus_run_redeliveries_total", "Runs delivered to an executor again (crash, timeout, stop not yet in the log).")
CHECKPOINTS_DECODED = Counter(
    "threadbus_checkpoints_decoded_total", "Checkpoints the checkpointer decoded to answer a read (get, list, history)."
)
STREAM_LAG_SECONDS = Histogram(
    "threadbus_stream_lag_seconds",
    "From an executor storing a stream event to a gateway relaying it.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30),
)

STORE_INDEX_QUERIES = Counter(
    "threadbus_store_index_queries_total", "Statements run against the store's search index, by query.", ["query"]
)


def add_routes(app: FastAPI, is_connected, guard=None) -> None:
    """``/metrics``, ``/ok`` and ``/ready`` on ``app``; ``is_connected()`` says whether NATS is.
    ``guard``, a FastAPI dependency, protects ``/metrics``; the probes stay open."""

    @app.get("/metrics", include_in_schema=False, dependencies=[Depends(guard)] if guard else [])
    async def metrics():
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/ok")
    async def ok():
        return {"ok": True}

    @app.get("/ready")
    async def ready():
        if is_connected():
            return {"ready": True}
        return Response('{"ready": false, "detail": "not connected to NATS"}', status_code=503, media_type="application/json")


def health_app(is_connected) -> FastAPI:
    """The health and metrics endpoints of a service without an API of its own."""
    app = FastAPI(title="threadbus health", openapi_url=None)
    add_routes(app, is_connected)
    return app
