"""A run's events on the v3 thread protocol's stream (``tb.events.<thread>``).

Every run gets its root lifecycle there (``running``, then ``completed``, ``failed`` or
``interrupted`` with one ``input.requested`` per interrupt), whichever API started it, so a
thread stream sees every run of its thread. A run started through the protocol
(``kwargs.thread_stream``) is executed with LangGraph's own ``astream_events(version="v3")`` and
every event it produces goes to the thread stream; a classic run keeps its SSE chunks on the run
stream (``services/executor/streaming.py``) and adds only the lifecycle.

What the server adds to LangGraph's events, as LangGraph Platform does: values with messages in
their short form and without ``__interrupt__``, subgraph lifecycle events in the subgraph's
namespace, and no whole-message replays on ``messages`` (a stream's text is exactly what was
streamed). ``custom`` events are always produced, so ``custom:<name>`` extensions work on any graph.
"""

from __future__ import annotations

from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langgraph.stream import CustomTransformer

import contracts
from threadbus.thread_events import CANCELLED, ThreadEventWriter


class ProtocolRunEvents:
    def __init__(self, js, requested: contracts.RunRequested, attempt: int):
        self.writer = ThreadEventWriter(js, requested.thread_id, requested.run_id, attempt)
        self.graph_name = requested.graph_id
        # True: this run's graph events go to the thread stream (run() drives the graph).
        self.drives_run = requested.kwargs.thread_stream
        # Whether a run it drove paused is not told by its events: the executor reads the state back.
        self.paused = True

    async def running(self) -> None:
        """Published with the graph's first events, or its end; the graph does not wait for it:
        its acknowledgement is awaited with theirs."""
        await self.writer.lifecycle("running", self.graph_name)

    async def run(self, graph, graph_input: Any, config: dict, *, subgraphs: bool = False, **kwargs: Any) -> None:
        """Run the graph and publish its v3 events (``subgraphs`` is implied: v3 always has them)."""
        has_custom = any(t is CustomTransformer for t in getattr(graph, "stream_transformers", None) or ())
        stream = await graph.astream_events(
            graph_input, config, version="v3", transformers=[] if has_custom else [CustomTransformer], **kwargs
        )
        async with stream:  # leaving early (a cancel) aborts the graph
            async for event in stream:
                forwarded = _forwarded(event)
                if forwarded is not None:
                    method, namespace, data, timestamp = forwarded
                    await self.writer.publish(method, data, namespace, timestamp)

    async def ended(self, outcome: contracts.Event) -> None:
        """The run's end on the thread stream, stored when this returns (the executor appends the
        outcome meanwhile)."""
        match outcome:
            case contracts.RunInterrupted(interrupts=interrupts):
                await self.writer.flush()  # everything before the pause is stored before it
                for group in interrupts.values():
                    for item in group:
                        if item.get("id") is not None:
                            await self.writer.input_requested(item["id"], item.get("value"))
                await self.writer.lifecycle("interrupted", self.graph_name)
            case contracts.RunFailed(error=error, message=message):
                await self.writer.lifecycle("failed", self.graph_name, error=f"{error}: {message}" if message else error)
            case _:
                await self.writer.lifecycle("completed", self.graph_name)
        await self.writer.flush()

    async def stopped(self) -> None:
        """Cancelled (interrupt, rollback, or a client's cancel): the run ends as failed, which is
        what ends a client's iterators."""
        await self.writer.lifecycle("failed", self.graph_name, error=CANCELLED)
        await self.writer.flush()

    async def flush(self) -> None:
        await self.writer.flush()


def _forwarded(event: dict) -> tuple[str, list[str], Any, int] | None:
    """(method, namespace, data, timestamp) of one of LangGraph's v3 events as clients get it,
    or None for an event they do not get."""
    method = event["method"]
    params = event["params"]
    namespace = params.get("namespace") or []
    data = params.get("data")
    # Data is serialized once, when it is published (threadbus.jsonable handles what JSON lacks).
    if method == "messages":
        # LangGraph's v3 messages are (protocol event, metadata); a bare message object is a
        # whole-message replay of something already streamed, or never streamed.
        data = data[0] if isinstance(data, (list, tuple)) and data else None
        if not isinstance(data, dict) or "event" not in data:
            return None
    elif method == "lifecycle" and isinstance(data, dict):
        namespace = data.get("namespace") or namespace
    elif method == "values":
        data = short_form(data)
        if isinstance(data, dict):
            data.pop("__interrupt__", None)
    return method, list(namespace), data, params.get("timestamp")


def short_form(value: Any) -> Any:
    """Graph values as LangGraph Platform's v3 stream shows them: messages as ``type, content, id``
    (and ``name``, ``tool_calls``, ``tool_call_id``, ``status``, ``artifact`` where they apply)."""
    if isinstance(value, BaseMessage):
        return _message(value)
    if isinstance(value, dict):
        return {k: short_form(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [short_form(v) for v in value]
    return value  # serialized when published


def _message(message: BaseMessage) -> dict[str, Any]:
    content = message.content
    if isinstance(content, list) and all(isinstance(b, dict) and b.get("type") == "text" for b in content):
        content = "".join(b.get("text", "") for b in content)
    out: dict[str, Any] = {"type": message.type, "content": content, "id": message.id}
    if message.name:
        out["name"] = message.name
    if isinstance(message, AIMessage) and message.tool_calls:
        out["tool_calls"] = [
            {"type": "tool_call", "name": c["name"], "args": c["args"], "id": c.get("id")} for c in message.tool_calls
        ]
    if isinstance(message, ToolMessage):
        out.update(tool_call_id=message.tool_call_id, status=message.status, artifact=message.artifact)
    return out
