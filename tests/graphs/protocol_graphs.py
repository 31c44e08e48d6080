"""Graphs for the v3 thread protocol and the graph-loading shapes LangGraph documents, no LLM key.

``v3_agent`` streams a fake chat model's answer token by token, writes ``progress`` custom events,
pauses in ``ask_human`` (an ``interrupt()``), then runs a subgraph. ``configurable.token_delay``
slows the tokens down (seconds each) for tests that act mid-run; ``configurable.tokens`` sets how
many words the answer has (the benchmark's long stream).

``v3_tools`` is a ``create_agent`` agent whose fake model calls the ``search`` tool once, then
answers. ``with_updates`` is compiled with a stream transformer (``UpdatesTransformer``). The
``factory_*`` entries are graph factories of each shape: ``(config, runtime)``, ``(runtime)`` and an
async context manager.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated, Any

from langchain.agents import create_agent
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AnyMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import tool
from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.stream import UpdatesTransformer
from langgraph.types import interrupt
from langgraph_sdk.runtime import ServerRuntime
from typing_extensions import TypedDict

ANSWER = "Hello, world!"


class State(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]
    note: str


class _SlowFakeChatModel(GenericFakeChatModel):
    delay: float = 0.0

    async def _astream(self, messages, stop=None, run_manager=None, **kwargs):
        async for chunk in super()._astream(messages, stop=stop, run_manager=run_manager, **kwargs):
            if self.delay:
                await asyncio.sleep(self.delay)
            yield chunk


async def speak(state: State, config: RunnableConfig) -> dict:
    writer = get_stream_writer()
    writer({"name": "progress", "step": "speak", "phase": "start"})
    configurable = config.get("configurable", {})
    words = int(configurable.get("tokens", 0))
    text = " ".join(f"w{i}" for i in range(words)) if words else ANSWER
    model = _SlowFakeChatModel(messages=iter([AIMessage(content=text)]), delay=float(configurable.get("token_delay", 0)))
    message = await model.ainvoke(state["messages"], config)
    writer({"name": "progress", "step": "speak", "phase": "end"})
    return {"messages": [message]}


def ask_human(state: State, config: RunnableConfig) -> dict:
    if config.get("configurable", {}).get("no_pause"):
        return {"note": "skipped"}
    answer = interrupt("Are we good?")
    return {"messages": [AIMessage(content=f"Human said: {answer}", id="human-answer")], "note": str(answer)}


def _sub_node(state: State) -> dict:
    get_stream_writer()({"name": "progress", "step": "sub_node"})
    return {"messages": [AIMessage(content="from subgraph", id="sub-msg-1")], "note": "ran"}


_sub = StateGraph(State)
_sub.add_node("sub", _sub_node)
_sub.add_edge(START, "sub")
_sub.add_edge("sub", END)

_agent = StateGraph(State)
_agent.add_node("speak", speak)
_agent.add_node("ask_human", ask_human)
_agent.add_node("run_subgraph", _sub.compile())
_agent.add_edge(START, "speak")
_agent.add_edge("speak", "ask_human")
_agent.add_edge("ask_human", "run_subgraph")
_agent.add_edge("run_subgraph", END)
v3_agent = _agent.compile()

with_updates = _agent.compile(transformers=[UpdatesTransformer])


@tool
def search(query: str) -> str:
    """Search for something."""
    return f"result for {query!r}"


class ToolCallingFake(BaseChatModel):
    """Calls ``search`` once, then answers: decided by the conversation, so concurrent runs agree."""

    @property
    def _llm_type(self) -> str:
        return "fake-tool-calling"

    def bind_tools(self, tools: Any, **kwargs: Any) -> ToolCallingFake:
        return self

    def _generate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
        if messages[-1].type == "tool":
            message = AIMessage(content="done.")
        else:
            message = AIMessage(content="", tool_calls=[{"name": "search", "args": {"query": "v3"}, "id": "tc-1", "type": "tool_call"}])
        return ChatResult(generations=[ChatGeneration(message=message)])


v3_tools = create_agent(ToolCallingFake(), tools=[search])


def _echo_graph(label: str):
    def answer(state: State) -> dict:
        return {"messages": [AIMessage(content=label, id=f"{label}-1")], "note": label}

    graph = StateGraph(State)
    graph.add_node("answer", answer)
    graph.add_edge(START, "answer")
    graph.add_edge("answer", END)
    return graph.compile()


def factory_config_runtime(config: RunnableConfig, runtime: ServerRuntime):
    """LangGraph Platform's two-parameter factory: the run's config and a ServerRuntime."""
    assert runtime.store is not None, "the runtime carries the store"
    return _echo_graph(f"{runtime.access_context}:{'run' if runtime.execution_runtime else 'read'}")


async def factory_runtime(runtime: ServerRuntime):
    return _echo_graph(runtime.access_context)


@contextlib.asynccontextmanager
async def factory_context(config: RunnableConfig):
    """A factory that holds a resource for as long as the graph is used."""
    yield _echo_graph("context")
