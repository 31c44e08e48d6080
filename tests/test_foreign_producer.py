"""A service that is not Python's threadbus asks for a run: plain nats-py, plain JSON, the
published JSON Schema and docs/contracts.md, no threadbus imports on that path."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import jsonschema
import nats

CONTRACTS = Path(__file__).resolve().parent.parent / "contracts"


async def test_a_run_requested_from_the_schema_alone_runs_and_shows_over_http(client, nats_url):
    thread_id = (await client.threads.create())["thread_id"]
    run_id = str(uuid.uuid4())
    schema = json.loads((CONTRACTS / "schema" / "RunRequested.json").read_text())
    document = json.loads((CONTRACTS / "asyncapi.json").read_text())
    event = {
        "type": "RunRequested",
        "thread_id": thread_id,
        "run_id": run_id,
        "assistant_id": "echo",
        "graph_id": "echo",
        "multitask_strategy": "enqueue",
        "kwargs": {"input": {"messages": [{"role": "human", "content": "from another service"}]}},
    }
    jsonschema.validate(event, schema)
    subject = document["channels"]["RunRequested"]["address"].format(thread=thread_id, run=run_id)

    nc = await nats.connect(nats_url)
    try:
        ack = await nc.jetstream().publish(
            subject, json.dumps(event).encode(), headers={"Nats-Msg-Id": f"requested:{thread_id}:{run_id}"}
        )
        assert ack.stream == "TB_THREADS"
    finally:
        await nc.close()

    result = await client.runs.join(thread_id, run_id)
    assert result["messages"][-1]["content"] == "echo: from another service"
    run = await client.runs.get(thread_id, run_id)
    assert run["status"] == "success" and run["multitask_strategy"] == "enqueue"


def test_the_asyncapi_document_names_every_schema():
    document = json.loads((CONTRACTS / "asyncapi.json").read_text())
    assert document["asyncapi"].startswith("3.")
    for name, message in document["components"]["messages"].items():
        assert (CONTRACTS / message["payload"]["$ref"]).exists(), name
        assert document["channels"][name]["address"].startswith(("tb.thread.", "tb.stream.", "tb.events."))
