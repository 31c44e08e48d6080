"""A graph's state values in one checkpoint, as LangGraph's ``StateSnapshot.values`` shows them:
what ``runs.wait`` and ``join`` answer with. One rule for the executor, which knows the final
checkpoint of the run it executed, and for the gateway, which reads it from the log."""

from __future__ import annotations

from typing import Any

import orjson
from langgraph.checkpoint.base import BaseCheckpointSaver, Checkpoint
from langgraph.pregel._checkpoint import achannels_from_checkpoint
from langgraph.pregel._io import read_channels

from threadbus.jsonable import dumps


async def as_json(graph, checkpoint: Checkpoint, saver: BaseCheckpointSaver, thread_id: str) -> bytes:
    """The values of a root-namespace checkpoint of ``graph``, encoded as JSON."""
    config = {"configurable": {"thread_id": thread_id, "checkpoint_ns": "", "checkpoint_id": checkpoint["id"]}}
    # LangGraph's own reading of channels from a checkpoint: a channel's stored form is not always
    # its value (a delta channel replays its history through the saver).
    channels, _ = await achannels_from_checkpoint(graph.channels, checkpoint, saver=saver, config=config)
    return dumps(read_channels(channels, graph.stream_channels_asis))


async def of_checkpoint(graph, checkpoint: Checkpoint, saver: BaseCheckpointSaver, thread_id: str) -> Any:
    """The values of a root-namespace checkpoint of ``graph``, as plain JSON types."""
    return orjson.loads(await as_json(graph, checkpoint, saver, thread_id))
