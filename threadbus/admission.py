"""Whether a run request names an assistant and a thread that exist.

The orchestrator asks this of every ``RunRequested`` before it decides it, unless its publisher
says it checked (``admitted``: the gateway reads both records anyway, to answer 404 at once, and a
second look would cost two KV reads per run on the decision's path). An integration on the bus or a
service in another language leaves ``admitted`` False, and a request of theirs that fails is
answered with a ``RunRejected`` that says why, in the thread's log, so a publisher that follows its
run learns it instead of waiting for nothing.

The same records the gateway reads: assistants in ``tb_assistants`` (an assistant UUID, or a
graph name standing for its system assistant), threads in ``tb_threads``. A stateless run
(``kwargs.temporary``) has no thread record by design.
"""

from __future__ import annotations

import asyncio
import uuid

import nats.js.errors

import contracts
from threadbus import broker

ASSISTANT_NAMESPACE = uuid.UUID("6ba7b821-9dad-11d1-80b4-00c04fd430c8")
"""The namespace LangGraph Platform derives a graph's assistant id in (uuid5 of the graph name)."""


def assistant_id_for(graph_id: str) -> str:
    return str(uuid.uuid5(ASSISTANT_NAMESPACE, graph_id))


def assistant_key(assistant_id: str) -> str:
    """The ``tb_assistants`` key of an assistant named by its UUID or by its graph's name."""
    try:
        return str(uuid.UUID(assistant_id))
    except ValueError:
        return assistant_id_for(assistant_id)


class Admission:
    def __init__(self, js):
        self.js = js
        self._assistants = None
        self._threads = None

    async def _buckets(self):
        if self._assistants is None:
            self._assistants = await self.js.key_value(broker.ASSISTANTS_BUCKET)
            self._threads = await self.js.key_value(broker.THREADS_BUCKET)
        return self._assistants, self._threads

    async def refusal(self, request: contracts.RunRequested) -> contracts.RunRejected | None:
        """The rejection the request meets, or None when what it names exists (or its publisher
        checked that it does)."""
        if request.admitted:
            return None
        assistants, threads = await self._buckets()
        assistant_exists, thread_exists = await asyncio.gather(
            _exists(assistants, assistant_key(request.assistant_id)),
            _exists(threads, request.thread_id) if not request.kwargs.temporary else _true(),
        )
        if not assistant_exists:
            return contracts.RunRejected(
                thread_id=request.thread_id,
                run_id=request.run_id,
                reason="unknown_assistant",
                detail=f"Assistant {request.assistant_id!r} not found: name an assistant UUID or a graph of the deployment.",
            )
        if not thread_exists:
            return contracts.RunRejected(
                thread_id=request.thread_id,
                run_id=request.run_id,
                reason="unknown_thread",
                detail=f"Thread {request.thread_id!r} not found: create it first (POST /threads).",
            )
        return None


async def _true() -> bool:
    return True


async def _exists(kv, key: str) -> bool:
    try:
        entry = await kv.get(key)
    except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
        return False
    except nats.js.errors.InvalidKeyError:  # not a key a record can have
        return False
    return bool(entry.value)
