"""Graphs of every shape LangGraph documents load, run and are read: factories with a runtime,
context-manager factories, graphs compiled with stream transformers, ``create_agent`` agents."""

from __future__ import annotations

import pytest

HI = {"messages": [{"role": "user", "content": "hi"}]}

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    ("graph", "run_note", "read_note"),
    [
        # LangGraph Platform's (config, runtime): an execution runtime for runs, a read runtime for reads.
        ("factory_config_runtime", "threads.create_run:run", "threads.read:read"),
        ("factory_runtime", "threads.create_run", "threads.read"),
        ("factory_context", "context", "context"),
    ],
)
async def test_graph_factories_for_runs_and_reads(client, graph, run_note, read_note):
    thread = await client.threads.create()
    values = await client.runs.wait(thread["thread_id"], graph, input=HI)
    assert values["note"] == run_note
    state = await client.threads.get_state(thread["thread_id"])
    assert state["values"]["note"] == run_note and state["next"] == []
    assert len(await client.threads.get_history(thread["thread_id"])) >= 2
    await client.threads.update_state(thread["thread_id"], {"note": "edited"}, as_node="answer")
    assert (await client.threads.get_state(thread["thread_id"]))["values"]["note"] == "edited"
    drawn = await client.assistants.get_graph(graph)
    assert {n["id"] for n in drawn["nodes"]} >= {"answer"}
    schemas = await client.assistants.get_schemas(graph)
    assert "note" in schemas["state_schema"]["properties"]
    # The read runtime's graph is the one the reads used: same topology, its own label.
    assert read_note != run_note or graph == "factory_context"


async def test_a_graph_compiled_with_stream_transformers_streams_in_both_apis(client):
    thread = await client.threads.create()
    parts = [p async for p in client.runs.stream(thread["thread_id"], "with_updates", input=HI, stream_mode=["updates", "values"],
                                                  config={"configurable": {"no_pause": True}})]
    assert [p.event for p in parts][0] == "metadata" and "updates" in {p.event for p in parts}
    async with client.threads.stream(assistant_id="with_updates") as stream:
        await stream.run.start(input=HI, config={"configurable": {"no_pause": True, "token_delay": 0.05}})
        updates = [e async for e in stream.subscribe(["updates"])]
    root = [next(iter(u["params"]["data"])) for u in updates if not u["params"]["namespace"]]
    assert root == ["speak", "ask_human", "run_subgraph"]
    assert any(u["params"]["namespace"][0].startswith("run_subgraph:") for u in updates if u["params"]["namespace"])


async def test_a_create_agent_graph_runs_and_streams_in_both_apis(client):
    thread = await client.threads.create()
    ask = {"messages": [{"role": "user", "content": "search for v3"}]}
    values = await client.runs.wait(thread["thread_id"], "v3_tools", input=ask)
    assert [m["type"] for m in values["messages"]] == ["human", "ai", "tool", "ai"]
    parts = [p async for p in client.runs.stream(thread["thread_id"], "v3_tools", input=ask, stream_mode="messages-tuple")]
    assert any(p.event == "messages" and p.data[0]["type"] == "tool" for p in parts)
    async with client.threads.stream(assistant_id="v3_tools") as stream:
        await stream.run.start(input=ask)
        output = await stream.output
    assert output["messages"][-1]["content"] == "done."
