"""Graphs that only the tests need."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Annotated

from typing_extensions import TypedDict

from langchain_core.messages import AIMessage, AnyMessage
from langgraph.graph import END, START, StateGraph
from langgraph.store.base import BaseStore
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


async def ask(state: Chat, config) -> dict:
    answer = interrupt({"question": "approve?"})
    # A resumed run that takes a while, for tests that need it still in flight.
    await asyncio.sleep(config["configurable"].get("delay", 0))
    return {"messages": [AIMessage(content=f"approved: {answer}")]}


_pausing = StateGraph(Chat)
_pausing.add_node("ask", ask)
_pausing.add_edge(START, "ask")
_pausing.add_edge("ask", END)
pausing = _pausing.compile()


async def slow_reply(state: Chat, config) -> dict:
    await asyncio.sleep(config["configurable"].get("delay", 0))
    return {"messages": [AIMessage(content=f"replied to: {state['messages'][-1].content}")]}


_slow = StateGraph(Chat)
_slow.add_node("slow_reply", slow_reply)
_slow.add_edge(START, "slow_reply")
slow = _slow.compile()
"""One node that takes `config.configurable.delay` seconds."""


def ask_twice(state: Chat) -> dict:
    first = interrupt({"question": "first?"})
    second = interrupt({"question": "second?"})
    return {"messages": [AIMessage(content=f"answers: {first}, {second}")]}


_asking_twice = StateGraph(Chat)
_asking_twice.add_node("ask_twice", ask_twice)
_asking_twice.add_edge(START, "ask_twice")
asking_twice = _asking_twice.compile()
"""One node that pauses twice: its first answer is kept across the second pause."""


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


async def remember(state: Chat, config, *, store: BaseStore) -> dict:
    """Counts the user's visits in the store, across threads: read, add one, write back."""
    user = config["configurable"].get("user_id", "anonymous")
    delay = float(config["configurable"].get("delay", 0))
    item = await store.aget(("visits", user), "count")
    count = (item.value["n"] if item else 0) + 1
    if delay:
        await asyncio.sleep(delay)  # widens the read-modify-write window for the lost-update test
    await store.aput(("visits", user), "count", {"n": count})
    return {"messages": [AIMessage(content=f"visit {count}")]}


_memory = StateGraph(Chat)
_memory.add_node("remember", remember)
_memory.add_edge(START, "remember")
_memory.add_edge("remember", END)
memory = _memory.compile()


class Note(TypedDict):
    """A memory to write (``text``) or a question to look up (``query``) in ``("notes", user)``."""

    user: str
    text: str
    query: str
    found: list[dict]


async def write_note(state: Note, *, store: BaseStore) -> dict:
    await store.aput(("notes", state["user"]), hashlib.sha1(state["text"].encode()).hexdigest()[:12], {"text": state["text"]})
    return {}


async def search_notes(state: Note, *, store: BaseStore) -> dict:
    items = await store.asearch(("notes", state["user"]), query=state["query"], limit=3)
    return {"found": [{"text": i.value.get("text"), "score": i.score} for i in items]}


_notes = StateGraph(Note)
_notes.add_node("write_note", write_note)
_notes.add_node("search_notes", search_notes)
_notes.add_conditional_edges(START, lambda s: "search_notes" if s.get("query") else "write_note")
_notes.add_edge("write_note", END)
_notes.add_edge("search_notes", END)
notes = _notes.compile()
"""Writes a note, or searches the user's notes by meaning, from inside a run."""
