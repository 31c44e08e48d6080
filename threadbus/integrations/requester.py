"""Asking for runs over the bus, with the gateway's guarantees.

:class:`Requester` appends a ``RunRequested`` to the thread's log as ``POST
/threads/{id}/runs`` does: the same checks (the thread exists, the assistant is a UUID or a graph
of the deployment), the same request (the assistant's config, context and metadata under the
caller's, the thread's graph recorded in its metadata: :mod:`threadbus.runrequest`), the same deterministic message id
(``requested:<thread>:<run>``, so a retry is a duplicate, not a second run), and by default it
waits for the orchestrator's decision and raises :class:`RunRefused` on a rejection. The
orchestrator checks every request again (:mod:`threadbus.admission`): a request that slips past
this client (a record deleted meanwhile, a service that publishes by hand) is rejected in the log
with a reason, not run.
"""

from __future__ import annotations

import asyncio
import uuid
import weakref
from typing import Annotated, Any

import nats.js.errors
import orjson
from faststream import Context
from nats.aio.client import Client as NATS

import contracts
from contracts import subjects
from threadbus import broker, logs, runrequest
from threadbus.admission import assistant_key
from threadbus.threadlog import ThreadLog

log = logs.get("threadbus.integrations")

_RESUMES = uuid.UUID("5d0c3f0e-8a51-4d53-9a57-37b1c3a2e9d4")  # namespace of resume run ids


class UnknownThread(LookupError):
    """The thread does not exist (create it over HTTP, ``POST /threads``, first)."""


class UnknownAssistant(LookupError):
    """No assistant with that UUID, and no graph of that name in the deployment."""


class RunRefused(Exception):
    """The orchestrator rejected the request; ``reason`` is ``RunRejected.reason``."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def resume_run_id(interrupted: contracts.RunInterrupted) -> str:
    """The run id of the one resume of a pause: a handler that is given the same
    ``RunInterrupted`` twice (a redelivery, a second replica) asks for the same run twice, which
    the log decides once."""
    return str(uuid.uuid5(_RESUMES, f"{interrupted.thread_id}:{interrupted.run_id}"))


class Requester:
    def __init__(self, nc: NATS, *, decision_timeout_s: float = 10.0):
        self.nc = nc
        self.log = ThreadLog(nc)
        self.decision_timeout_s = decision_timeout_s
        self._buckets: tuple[Any, Any] | None = None

    async def run(
        self,
        thread_id: str,
        assistant_id: str,
        *,
        input: Any = None,
        command: dict[str, Any] | None = None,
        wait: bool = True,
        **fields: Any,
    ) -> contracts.RunRequested:
        """Ask for a run of ``assistant_id`` on ``thread_id``. ``fields`` are those of
        :func:`threadbus.runrequest.build` (``run_id``, ``multitask_strategy``, ``metadata``,
        ``config``, ``context``, ``stream_mode``, ...). Returns the request as appended; with
        ``wait``, once the orchestrator accepted it (or did not answer within the timeout: it is in
        the log and will be decided)."""
        await self._thread(thread_id)
        assistant = await self._assistant(assistant_id)
        request = runrequest.build(thread_id, assistant, input=input, command=command, admitted=True, **fields)
        await self._remember_graph(thread_id, assistant)
        return await self._submit(request, wait)

    async def resume(
        self, thread_id: str, answer: Any, *, assistant_id: str | None = None, wait: bool = True, **fields: Any
    ) -> contracts.RunRequested:
        """Resume the thread's human-in-the-loop pause with ``answer`` (``Command(resume=answer)``),
        on the assistant that last ran on the thread unless ``assistant_id`` says otherwise."""
        record = await self._thread(thread_id)
        assistant_id = assistant_id or (record.get("metadata") or {}).get("assistant_id")
        if assistant_id is None:
            raise UnknownAssistant(f"thread {thread_id} has not run an assistant yet: name one")
        assistant = await self._assistant(assistant_id)
        request = runrequest.build(thread_id, assistant, command={"resume": answer}, admitted=True, **fields)
        await self._remember_graph(thread_id, assistant)
        return await self._submit(request, wait)

    async def _submit(self, request: contracts.RunRequested, wait: bool) -> contracts.RunRequested:
        if await self.log.last(subjects.run_control(request.thread_id, request.run_id)) is not None:
            # Asked before (a retry past the stream's duplicate window): the log has its run.
            log.info("run requested already", thread_id=request.thread_id, run_id=request.run_id)
            return request
        if not wait:
            await self.log.append_event(request)
            return request
        async with self.log.follow(subjects.run_control(request.thread_id, request.run_id)) as entries:
            await self.log.append_event(request)
            try:
                async with asyncio.timeout(self.decision_timeout_s):
                    async for entry in entries:
                        event = entry.event()
                        if isinstance(event, contracts.RunRejected):
                            raise RunRefused(event.reason, event.detail)
                        if isinstance(event, contracts.RunAccepted):
                            break
            except TimeoutError:
                pass  # in the log, and decided when an orchestrator gets to it
        return request

    async def _remember_graph(self, thread_id: str, assistant: dict[str, Any]) -> None:
        """The thread's graph in its record and in the log, as the gateway keeps it (state and
        history reads build the thread's graph from it)."""
        threads, _ = await self._kv()
        for _ in range(10):
            entry = await threads.get(thread_id)
            updated = runrequest.with_graph(orjson.loads(entry.value), assistant, contracts.now().isoformat())
            if updated is None:
                return
            try:
                await threads.update(thread_id, orjson.dumps(updated), last=entry.revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                continue  # changed meanwhile: read it again
            await self.log.append_event(contracts.ThreadUpdated(thread_id=thread_id, metadata=updated["metadata"]))
            return
        raise RuntimeError(f"thread {thread_id} is being updated concurrently; try again")

    async def _kv(self) -> tuple[Any, Any]:
        if self._buckets is None:
            js = self.nc.jetstream()
            self._buckets = (await js.key_value(broker.THREADS_BUCKET), await js.key_value(broker.ASSISTANTS_BUCKET))
        return self._buckets

    async def _thread(self, thread_id: str) -> dict[str, Any]:
        try:
            uuid.UUID(thread_id)
        except ValueError:
            raise UnknownThread(f"thread {thread_id!r} does not exist: thread ids are UUIDs") from None
        threads, _ = await self._kv()
        record = await _get(threads, thread_id)
        if record is None:
            raise UnknownThread(f"thread {thread_id} does not exist: create it first (POST /threads)")
        return record

    async def _assistant(self, assistant_id: str) -> dict[str, Any]:
        _, assistants = await self._kv()
        record = await _get(assistants, assistant_key(assistant_id))
        if record is None:
            raise UnknownAssistant(f"assistant {assistant_id!r} not found: name an assistant UUID or a graph of the deployment")
        return record


async def _get(kv, key: str) -> dict[str, Any] | None:
    try:
        entry = await kv.get(key)
    except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError, nats.js.errors.InvalidKeyError):
        return None
    return orjson.loads(entry.value) if entry.value else None


_requesters: weakref.WeakKeyDictionary[NATS, Requester] = weakref.WeakKeyDictionary()


def bus_requester(
    client: Annotated[NATS, Context("broker.config.connection_state.connection")],
) -> Requester:
    """A FastStream dependency: the :class:`Requester` on the broker's own connection
    (``requester: Requester = Depends(bus_requester)``)."""
    requester = _requesters.get(client)
    if requester is None:
        requester = _requesters[client] = Requester(client)
    return requester
