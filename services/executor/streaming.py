"""Publishing a run's stream events (what SSE clients see) to the run's stream log.

Each event is a ``StreamChunk`` on ``tb.stream.<thread>.<run>``. Publishes are pipelined (no
round trip per token); :meth:`RunStreamWriter.flush` waits for every acknowledgement and is
awaited before the run's outcome is appended, so a gateway that sees the outcome and then
drains the stream log has every event.
"""

from __future__ import annotations

import asyncio
from typing import Any

from langchain_core.messages import BaseMessageChunk

import contracts
from contracts import subjects
from threadbus.jsonable import jsonable

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


class RunStreamWriter:
    def __init__(self, js, thread_id: str, run_id: str, modes: list[str]):
        self.js = js
        self.subject = subjects.run_stream(thread_id, run_id)
        self.modes = {m for m in modes if m in LANGGRAPH_MODE}
        self.pending: list[asyncio.Future] = []
        self.partial: dict[str, Any] = {}

    @property
    def langgraph_modes(self) -> list[str]:
        # `values` always: a run streams something, and a resumable join can replay it.
        return sorted({"values", *(LANGGRAPH_MODE[m] for m in self.modes)})

    async def emit(self, item: tuple) -> None:
        """One item of ``graph.astream(stream_mode=[...], subgraphs=...)``: (mode, chunk) or (ns, mode, chunk)."""
        ns, mode, chunk = item if len(item) == 3 else ((), *item)
        suffix = "".join(f"|{part}" for part in ns)
        if mode == "messages":
            await self._messages(chunk, suffix)
        elif mode in self.modes or (mode == "values" and not self.modes):
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
        payload = contracts.encode(contracts.StreamChunk(event=event, data=jsonable(data)))
        self.pending.append(await self.js.publish_async(self.subject, payload, stream=subjects.RUN_STREAM))

    async def flush(self) -> None:
        pending, self.pending = self.pending, []
        if pending:
            await asyncio.gather(*pending)
