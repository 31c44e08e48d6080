"""What ``wait``, ``join`` and webhooks answer with: a run's result, read from the checkpoint its
outcome names, when the outcome does not carry it.

An outcome says which checkpoint holds the run's final state (``checkpoint_id``), and carries the
values themselves when they are small (the executor knew them). Otherwise the values are read
from that one record with one direct get and decoded once, with the graph's own channels, as
LangGraph's ``StateSnapshot.values`` are (not a replay of the thread, not a state read).
"""

from __future__ import annotations

from typing import Any

from contracts import subjects
from threadbus import state_values
from threadbus.checkpointer import JetStreamSaver
from threadbus.jsonable import jsonable


async def checkpoint_values(saver: JetStreamSaver, graph, thread_id: str, checkpoint_id: str, written_by: str | None = None) -> Any:
    """The state values in one checkpoint of the thread's root namespace; {} when it is gone.
    ``written_by``: the run that most likely wrote it (a run's outcome names its own last
    checkpoint), whose literal subject is read first; a cost that does not grow with the thread's
    runs, where the subject with any run walks them all."""
    entry = await saver.log.last(subjects.stored_checkpoint(thread_id, written_by, "", checkpoint_id)) if written_by else None
    if entry is None:
        entry = await saver.log.last(subjects.checkpoints(thread_id, "", checkpoint_id))
    if entry is None:
        return {}
    blob = entry.event().checkpoint
    return await state_values.of_checkpoint(graph, saver.serde.loads_typed((blob.type, blob.data)), saver, thread_id)


async def paused_values(saver: JetStreamSaver, graph, thread_id: str, checkpoint_id: str | None, written_by: str | None = None) -> Any:
    """The values of a pause as the thread's state shows them while it is paused there: with the
    writes of the tasks that finished beside the interrupted one (parallel branches) applied. A
    pause is not the hot path, so this is a state read."""
    snapshot = await graph.aget_state({"configurable": {"thread_id": thread_id}})
    newest = (snapshot.config or {}).get("configurable", {}).get("checkpoint_id")
    if checkpoint_id is None or newest == checkpoint_id:
        return jsonable(snapshot.values)
    return await checkpoint_values(saver, graph, thread_id, checkpoint_id, written_by)  # the thread moved on since
