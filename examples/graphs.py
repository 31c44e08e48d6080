"""Example graphs that need no LLM, used by `make dev`, the tests and the benchmarks."""

from __future__ import annotations

import asyncio
from typing import Annotated

from typing_extensions import TypedDict

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AnyMessage
from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages


class Chat(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]


def _last_text(state: Chat) -> str:
    return state["messages"][-1].content if state["messages"] else ""


def reply(state: Chat) -> dict:
    return {"messages": [AIMessage(content=f"echo: {_last_text(state)}")]}


_echo = StateGraph(Chat)
_echo.add_node("reply", reply)
_echo.add_edge(START, "reply")
_echo.add_edge("reply", END)
echo = _echo.compile()


async def _pause(config: RunnableConfig) -> None:
    delay = float(config.get("configurable", {}).get("delay", 0))
    if delay:
        await asyncio.sleep(delay)


async def think(state: Chat, config: RunnableConfig) -> dict:
    await _pause(config)
    return {"messages": [AIMessage(content=f"thinking about: {_last_text(state)}")]}


async def answer(state: Chat, config: RunnableConfig) -> dict:
    await _pause(config)
    question = next((m.content for m in reversed(state["messages"]) if m.type == "human"), "")
    return {"messages": [AIMessage(content=f"answer to: {question}")]}


_two = StateGraph(Chat)
_two.add_node("think", think)
_two.add_node("answer", answer)
_two.add_edge(START, "think")
_two.add_edge("think", "answer")
_two.add_edge("answer", END)
two_step = _two.compile()
"""Two steps, each waiting `config.configurable.delay` seconds (default 0)."""


class Nothing(TypedDict, total=False):
    n: int


def _noop(state: Nothing) -> dict:
    return {}


_noop_graph = StateGraph(Nothing)
_noop_graph.add_node("noop", _noop)
_noop_graph.add_edge(START, "noop")
noop = _noop_graph.compile()


async def speak(state: Chat, config: RunnableConfig) -> dict:
    n = int(config.get("configurable", {}).get("tokens", 2000))
    model = GenericFakeChatModel(messages=iter([AIMessage(content=" ".join(f"t{i}" for i in range(n)))]))
    # Invoked, not iterated: LangGraph streams the tokens to both the classic `messages` mode and
    # the v3 protocol (which only sees a model's own streaming, not a node's iteration of it).
    message = await model.ainvoke(state["messages"], config)
    return {"messages": [AIMessage(content=message.text, id=message.id)]}


_tokens = StateGraph(Chat)
_tokens.add_node("speak", speak)
_tokens.add_edge(START, "speak")
_tokens.add_edge("speak", END)
tokens = _tokens.compile()
"""Streams `config.configurable.tokens` words (default 2000) from a fake chat model."""
