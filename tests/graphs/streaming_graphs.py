"""A graph that exercises every stream mode without an LLM key.

``agent`` asks a fake chat model, which calls the ``lookup`` tool; ``tools`` runs it; ``agent``
asks again and a second fake model streams its answer token by token; a ``progress`` custom
event is written on the way; ``summarize`` is a subgraph. ``config.configurable.token_delay``
slows the streamed answer down (seconds per token) for tests that double-text mid-stream.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from typing_extensions import TypedDict

from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel, GenericFakeChatModel
from langchain_core.messages import AIMessage, AnyMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import tool
from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.prebuilt import ToolNode

ANSWER = "the weather in Paris is sunny"


class Chat(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]
    summary: str


@tool
def lookup(city: str) -> str:
    """Look up the weather of a city."""
    return f"{city}: sunny"


class _SlowFakeChatModel(GenericFakeChatModel):
    delay: float = 0.0

    async def _astream(self, messages, stop=None, run_manager=None, **kwargs):
        async for chunk in super()._astream(messages, stop=stop, run_manager=run_manager, **kwargs):
            if self.delay:
                await asyncio.sleep(self.delay)
            yield chunk


async def agent(state: Chat, config: RunnableConfig) -> dict:
    writer = get_stream_writer()
    if not any(m.type == "tool" for m in state["messages"]):
        writer({"progress": "calling a tool"})
        planner = FakeMessagesListChatModel(
            responses=[AIMessage(content="", tool_calls=[{"name": "lookup", "args": {"city": "Paris"}, "id": "call-1"}])]
        )
        return {"messages": [await planner.ainvoke(state["messages"], config)]}
    writer({"progress": "answering"})
    delay = float(config.get("configurable", {}).get("token_delay", 0))
    speaker = _SlowFakeChatModel(messages=iter([AIMessage(content=ANSWER, id="answer-1")]), delay=delay)
    message = None
    async for chunk in speaker.astream(state["messages"], config):
        message = chunk if message is None else message + chunk
    return {"messages": [AIMessage(content=message.content, id=message.id)]}


def route(state: Chat) -> str:
    return "tools" if state["messages"][-1].tool_calls else "summarize"


def _summarize_inner(state: Chat) -> dict:
    get_stream_writer()({"progress": "summarizing"})
    return {"summary": f"{len(state['messages'])} messages"}


_inner = StateGraph(Chat)
_inner.add_node("count", _summarize_inner)
_inner.add_edge(START, "count")
_inner.add_edge("count", END)

_graph = StateGraph(Chat)
_graph.add_node("agent", agent)
_graph.add_node("tools", ToolNode([lookup]))
_graph.add_node("summarize", _inner.compile())
_graph.add_edge(START, "agent")
_graph.add_conditional_edges("agent", route, ["tools", "summarize"])
_graph.add_edge("tools", "agent")
_graph.add_edge("summarize", END)
streamer = _graph.compile()
