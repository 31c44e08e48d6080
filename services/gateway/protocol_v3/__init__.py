"""The v3 thread protocol of ``langgraph_sdk`` 0.4 (``client.threads.stream``): commands
(``commands``), the thread's event stream over SSE (``sse``) and WebSocket (``websocket``).
``docs/streaming.md`` says who produces the events."""

from services.gateway.protocol_v3 import commands, sse, websocket

__all__ = ["commands", "sse", "websocket"]
