"""A ``RunRequested`` from an assistant's record and what the caller asked: one rule for the
gateway (``POST /threads/{id}/runs``) and for integrations on the bus
(:mod:`threadbus.integrations`), so that a run asked for either way runs the same. Both also
record the graph in the thread's metadata (:func:`with_graph`), as LangGraph Platform does.

The assistant's config, context and metadata are the defaults the request overrides
(``configurable`` merged key by key, as LangGraph Platform does); the request records the
assistant's UUID and graph; ``interrupt_before/after`` fall back to the assistant's config.
"""

from __future__ import annotations

import uuid
from typing import Any

import contracts


def merge_config(base: dict[str, Any] | None, override: dict[str, Any] | None) -> dict[str, Any]:
    merged = {**(base or {}), **(override or {})}
    configurable = {**((base or {}).get("configurable") or {}), **((override or {}).get("configurable") or {})}
    if configurable:
        merged["configurable"] = configurable
    return merged


def build(
    thread_id: str,
    assistant: dict[str, Any],
    *,
    run_id: str | None = None,
    multitask_strategy: contracts.MultitaskStrategy | None = None,
    metadata: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    context: dict[str, Any] | None = None,
    stream_mode: str | list[str] | None = None,
    interrupt_before: list[str] | str | None = None,
    interrupt_after: list[str] | str | None = None,
    admitted: bool = False,
    **kwargs: Any,
) -> contracts.RunRequested:
    """``kwargs`` are the remaining :class:`contracts.RunKwargs` fields (input, command, webhook, ...).
    ``admitted``: the caller has just checked that the assistant and the thread exist."""
    stream_mode = stream_mode or ["values"]
    merged = merge_config(assistant.get("config"), config)
    return contracts.RunRequested(
        thread_id=thread_id,
        run_id=run_id or str(uuid.uuid4()),
        assistant_id=assistant["assistant_id"],
        graph_id=assistant["graph_id"],
        multitask_strategy=multitask_strategy or "enqueue",
        admitted=admitted,
        metadata={**(assistant.get("metadata") or {}), **(metadata or {}), "assistant_id": assistant["assistant_id"]},
        kwargs=contracts.RunKwargs(
            config=merged,
            context={**(assistant.get("context") or {}), **(context or {})},
            stream_mode=[stream_mode] if isinstance(stream_mode, str) else list(stream_mode),
            interrupt_before=interrupt_before or merged.get("interrupt_before"),
            interrupt_after=interrupt_after or merged.get("interrupt_after"),
            **kwargs,
        ),
    )


def with_graph(record: dict[str, Any], assistant: dict[str, Any], now: str) -> dict[str, Any] | None:
    """The thread record with the assistant's graph and id in its metadata (``updated_at`` =
    ``now``), or None when it says so already."""
    wanted = {"graph_id": assistant["graph_id"], "assistant_id": assistant["assistant_id"]}
    meta = record.get("metadata") or {}
    if all(meta.get(k) == v for k, v in wanted.items()):
        return None
    return {**record, "metadata": {**meta, **wanted}, "updated_at": now}
