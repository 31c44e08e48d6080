"""Graphs that only the tests need."""

from __future__ import annotations

from typing import Annotated

from typing_extensions import TypedDict

from langchain_core.messages import AIMessage, AnyMessage
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.types import interrupt


class Chat(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]


def explode(state: Chat) -> dict:
    raise ValueError("kaboom")


_failing = StateGraph(Chat)
_failing.add_node("explode", explode)
_failing.add_edge(START, "explode")
_failing.add_edge("explode", END)
failing = _failing.compile()


def ask(state: Chat) -> dict:
    answer = interrupt({"question": "approve?"})
    return {"messages": [AIMessage(content=f"approved: {answer}")]}


_pausing = StateGraph(Chat)
_pausing.add_node("ask", ask)
_pausing.add_edge(START, "ask")
_pausing.add_edge("ask", END)
pausing = _pausing.compile()


def make_configured(config):
    """A factory: the graph's greeting comes from the run's config."""
    greeting = config.get("configurable", {}).get("greeting", "hello")

    def greet(state: Chat) -> dict:
        return {"messages": [AIMessage(content=greeting)]}

    builder = StateGraph(Chat)
    builder.add_node("greet", greet)
    builder.add_edge(START, "greet")
    builder.add_edge("greet", END)
    return builder.compile()


class Approvals(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]
    decisions: Annotated[list[str], lambda a, b: a + b]


def _approver(name: str):
    def approve(state: Approvals) -> dict:
        return {"decisions": [f"{name}={interrupt({'who': name})}"]}

    return approve


_parallel = StateGraph(Approvals)
_parallel.add_node("legal", _approver("legal"))
_parallel.add_node("finance", _approver("finance"))
_parallel.add_edge(START, "legal")
_parallel.add_edge(START, "finance")
_parallel.add_edge("legal", END)
_parallel.add_edge("finance", END)
parallel_approvals = _parallel.compile()
"""Two nodes pause at once: one resume maps both interrupt ids to values."""

_inner = StateGraph(Chat)
_inner.add_node("ask", ask)
_inner.add_edge(START, "ask")
_inner.add_edge("ask", END)

_outer = StateGraph(Chat)
_outer.add_node("inner", _inner.compile())
_outer.add_edge(START, "inner")
_outer.add_edge("inner", END)
nested = _outer.compile()
"""The interrupt is raised inside a subgraph."""
