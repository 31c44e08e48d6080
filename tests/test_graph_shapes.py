"""Graphs of every shape LangGraph documents load, run and are read: factories with a runtime,
context-manager factories, graphs compiled with stream transformers, ``create_agent`` agents."""

from __future__ import annotations

from typing import Literal

import pytest
from langgraph.func import entrypoint
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command
from typing_extensions import TypedDict

from tests.support import TEST_GRAPHS
from threadbus.graphs import GraphRegistry, one_step

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
    # One checkpoint: a run of a one-node graph stores only the state it ends in (docs/durability.md).
    assert len(await client.threads.get_history(thread["thread_id"])) == 1
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



class _Count(TypedDict, total=False):
    n: int


def _one_node(node=lambda state: {}) -> StateGraph:
    builder = StateGraph(_Count)
    builder.add_node("only", node)
    builder.add_edge(START, "only")
    return builder


def _to_end(state: _Count) -> Command[Literal["__end__"]]:
    return Command(goto=END)


def _again(state: _Count) -> Command[Literal["only", "__end__"]]:
    return Command(goto="only")


def test_only_graphs_whose_every_run_is_one_step_of_one_node_are_checkpointed_at_exit():
    ends = _one_node()
    ends.add_edge("only", END)
    assert one_step(_one_node().compile()) and one_step(ends.compile())
    assert one_step(_one_node().compile(interrupt_before=["only"]))  # a pause is stored when the run ends
    assert one_step(_one_node(_to_end).compile())
    assert not one_step(_one_node(_again).compile())  # it can run itself again
    looping = _one_node()
    looping.add_conditional_edges("only", lambda state: END if state.get("n") else "only")
    assert not one_step(looping.compile())
    two = _one_node()
    two.add_node("next", lambda state: {})
    two.add_edge("only", "next")
    assert not one_step(two.compile())
    assert not one_step(_one_node(_one_node().compile()).compile())  # a subgraph runs steps of its own

    @entrypoint()
    def functional(value):
        return value

    assert not one_step(functional)  # not a StateGraph: what its tasks do is not told by nodes


def test_the_registry_decides_durability_once_per_graph_and_per_built_graph_of_a_factory():
    registry = GraphRegistry(TEST_GRAPHS)
    noop, two_step = registry.entries["noop"].target, registry.entries["two_step"].target
    assert registry.durability("noop", noop) == "exit" and registry.durability("two_step", two_step) is None
    # Cached: asked again with another graph, the registry answers what it decided for the entry.
    assert registry.durability("noop", two_step) == "exit"
    # A factory's graphs are decided one by one.
    assert registry.durability("factory_runtime", noop) == "exit"
    assert registry.durability("factory_runtime", two_step) is None
