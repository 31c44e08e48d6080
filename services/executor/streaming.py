"""Publishing a run's stream events (what SSE clients see) to the run's stream log.

Each event is a ``StreamChunk`` on ``tb.stream.<thread>.<run>``. Publishes are pipelined (no
round trip per token); :meth:`RunStreamWriter.flush` waits for every acknowledgement and is
awaited before the run's outcome is appended, so a gateway that sees the outcome and then
drains the stream log has every event.

nats-py's publish futures never time out: a chunk the broker lost in a crash (published, never
acknowledged) would hold the flush, and with it the run, forever. The flush is bounded instead;
past the bound the run counts as cut off by the broker and is redelivered.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from langchain_core.messages import BaseMessageChunk

import contracts
from contracts import subjects
from threadbus import broker
from threadbus.jsonable import dumps

# The SSE stream modes and the LangGraph stream mode that produces each.
LANGGRAPH_MODE = {
    "values": "values",
    "updates": "updates",
    "custom": "custom",
    "debug": "debug",
    "checkpoints": "checkpoints",
    "tasks": "tasks",
    "messages": "messages",
    "messages-tuple": "messages",
}
# `events` is not a LangGraph stream mode: it is ``astream_events`` (v2), whose root-run
# ``on_chain_stream`` events carry the chunks of every other mode.
EVENTS = "events"
# The key of a pause in LangGraph's stream chunks, as the SDK shows it too (LangGraph keeps its
# constant private).
INTERRUPT = "__interrupt__"


class RunStreamWriter:
    def __init__(self, js, thread_id: str, run_id: str, modes: list[str]):
        self.js = js
        self.subject = subjects.run_stream(thread_id, run_id)
        self.modes = {m for m in modes if m in LANGGRAPH_MODE}
        self.wants_events = EVENTS in modes
        if not self.modes and not self.wants_events:
            self.modes = {"values"}
        self.pending: list[asyncio.Future] = []
        self.partial: dict[str, Any] = {}
        self.paused = False  # the graph stopped in a human-in-the-loop interrupt

    @property
    def langgraph_modes(self) -> list[str]:
        # `updates` is always asked for: a pause shows there (an `__interrupt__` update of the root
        # graph), so the executor knows how the run ended without reading the state back. Chunks
        # of modes the client did not ask for are dropped.
        return sorted({LANGGRAPH_MODE[m] for m in self.modes} | {"updates"})

    async def run(self, graph, graph_input: Any, config: dict, **kwargs: Any) -> None:
        """Run the graph and publish what it streams, in the requested modes."""
        if not self.wants_events:
            async for item in graph.astream(graph_input, config, stream_mode=self.langgraph_modes, **kwargs):
                await self.emit(item)
            return
        root: str | None = None
        async for event in graph.astream_events(
            graph_input, config, version="v2", stream_mode=self.langgraph_modes, **kwargs
        ):
            root = root or event["run_id"]
            if event["event"] == "on_chain_stream" and event["run_id"] == root:
                await self.emit(event["data"]["chunk"])
            else:
                await self._publish(EVENTS, event)

    async def emit(self, item: tuple) -> None:
        """One item of ``graph.astream(stream_mode=[...], subgraphs=...)``: (mode, chunk) or (ns, mode, chunk)."""
        ns, mode, chunk = item if len(item) == 3 else ((), *item)
        if mode == "updates" and not ns and isinstance(chunk, dict) and INTERRUPT in chunk:
            self.paused = True
        suffix = "".join(f"|{part}" for part in ns)
        if mode == "messages":
            await self._messages(chunk, suffix)
        elif mode in self.modes:
            await self._publish(mode + suffix, chunk)

    async def _messages(self, chunk: tuple, suffix: str) -> None:
        message, metadata = chunk
        if "messages-tuple" in self.modes:
            await self._publish("messages" + suffix, [message, metadata])
        if "messages" in self.modes:
            # LangGraph Platform's accumulated form: metadata once per message, then the whole
            # message so far on every token.
            msg_id = message.id or ""
            if msg_id not in self.partial:
                await self._publish("messages/metadata" + suffix, {msg_id: {"metadata": metadata}})
                self.partial[msg_id] = message
            elif isinstance(message, BaseMessageChunk):
                self.partial[msg_id] = self.partial[msg_id] + message
            kind = "partial" if isinstance(message, BaseMessageChunk) else "complete"
            await self._publish(f"messages/{kind}" + suffix, [self.partial[msg_id]])

    async def _publish(self, event: str, data: Any) -> None:
        # Serialized once: Raw embeds the JSON as it is, rather than as a value to encode again.
        payload = contracts.encode(contracts.StreamChunk(event=event, data=msgspec.Raw(dumps(data))))
        self.pending.append(await self.js.publish_async(self.subject, payload, stream=subjects.RUN_STREAM))

    async def flush(self) -> None:
        pending, self.pending = self.pending, []
        await broker.acknowledged(pending)
