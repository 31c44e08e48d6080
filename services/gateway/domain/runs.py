"""Runs: they exist only as events in the thread log. A run is created by appending
``RunRequested`` and waiting for the orchestrator's ``RunAccepted`` or ``RunRejected``; its end is
observed on the same subjects."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import Any

from fastapi import HTTPException

import contracts
from contracts import subjects
from services.gateway import results, views
from services.gateway.domain import records
from services.gateway.domain.assistants import Assistants
from services.gateway.domain.threads import Threads
from services.gateway.models import RunCreate, ThreadCreate
from services.gateway.run_watch import RunWatch
from threadbus import logs, runrequest
from threadbus.read_model import projection, rows
from threadbus.read_model.reads import Reads
from threadbus.settings import Settings
from threadbus.threadlog import Entry, ThreadLog

log = logs.get("threadbus.gateway")

IN_FLIGHT = ("pending", "running")
# A rejection's HTTP status; the unknown_* ones only when a record vanished after the gateway's own check.
_REJECTION_STATUS = {"not_paused": 400, "unknown_assistant": 404, "unknown_thread": 404}


class Runs:
    def __init__(
        self, log: ThreadLog, settings: Settings, assistants: Assistants, threads: Threads, reads: Reads, watch: RunWatch
    ):
        self.log = log
        self.settings = settings
        self.assistants = assistants
        self.threads = threads
        self.reads = reads
        self.watch = watch

    def events(self, thread_id: str, run_id: str, *, fresh: bool = False):
        """The run's control events from its first (a context manager: :meth:`RunWatch.events`).
        ``fresh``: a run whose request is about to be appended."""
        return self.watch.events(thread_id, run_id, fresh=fresh)

    async def prepare(
        self, thread_id: str, body: RunCreate, *, temporary: bool = False, run_id: str | None = None
    ) -> contracts.RunRequested:
        if body.webhook and not body.webhook.startswith(("http://", "https://")):
            raise HTTPException(422, f"webhook must be an http(s) URL, got {body.webhook!r}")
        assistant = await self.assistants.for_run(body.assistant_id)
        if not temporary:
            try:
                current = await self.threads.record_and_revision(thread_id)
            except HTTPException as err:
                if err.status_code != 404:
                    raise
                if body.if_not_exists != "create":
                    raise HTTPException(404, "Thread or assistant not found.") from None
                await self.threads.create(ThreadCreate(thread_id=thread_id, if_exists="do_nothing"))
                current = await self.threads.record_and_revision(thread_id)
            await self.threads.remember_graph(thread_id, assistant, current)
        return runrequest.build(
            thread_id,
            assistant,
            run_id=run_id,
            multitask_strategy=body.multitask_strategy,
            metadata=body.metadata,
            config=body.config,
            context=body.context,
            stream_mode=body.stream_mode,
            interrupt_before=body.interrupt_before,
            interrupt_after=body.interrupt_after,
            input=body.input,
            command=body.command.model_dump(exclude_none=True) if body.command else None,
            checkpoint_id=body.checkpoint_id,
            checkpoint=body.checkpoint,
            webhook=body.webhook,
            subgraphs=body.stream_subgraphs,
            resumable=body.stream_resumable,
            temporary=temporary,
            durability=body.durability,
            admitted=True,
        )

    async def submit(self, request: contracts.RunRequested, events: AsyncIterator[contracts.Event]) -> dict[str, Any]:
        """Append the request and wait for the orchestrator's decision; 409 when it rejects."""
        await self.log.append_event(request)
        try:
            async with asyncio.timeout(self.settings.decision_timeout_s):
                async for event in events:
                    if isinstance(event, contracts.RunRejected):
                        log.info("run rejected", thread_id=request.thread_id, run_id=request.run_id, reason=event.reason)
                        raise HTTPException(_REJECTION_STATUS.get(event.reason, 409), event.detail)
                    if isinstance(event, contracts.RunAccepted):
                        break
        except TimeoutError:
            # The request is in the log and will be decided; answer with what is known.
            log.warning("no decision in time", thread_id=request.thread_id, run_id=request.run_id)
        log.info("run accepted", thread_id=request.thread_id, run_id=request.run_id, strategy=request.multitask_strategy)
        return rows.run_object(projection.run_row(request, "pending", request.at))

    async def result_values(self, thread_id: str, outcome: contracts.Event, graph_id: str | None = None) -> Any:
        """What ``wait`` and ``join`` return: the final values, with ``__interrupt__`` or ``__error__``.
        ``graph_id``: the run's graph, when the caller knows it (else the thread's record says)."""
        match outcome:
            case contracts.RunSucceeded(values=None, checkpoint_id=str(checkpoint_id)):
                async with self._graph(thread_id, graph_id, outcome.run_id) as graph:
                    return await results.checkpoint_values(self.threads.saver, graph, thread_id, checkpoint_id, outcome.run_id) if graph else {}
            case contracts.RunSucceeded(values=values):
                return values  # an outcome written before outcomes named their checkpoint
            case contracts.RunInterrupted(values=values, interrupts=interrupts, checkpoint_id=checkpoint_id):
                if values is None:
                    async with self._graph(thread_id, graph_id, outcome.run_id) as graph:
                        values = await results.paused_values(self.threads.saver, graph, thread_id, checkpoint_id, outcome.run_id) if graph else {}
                flat = [i for group in interrupts.values() for i in group]
                if not flat:  # paused by interrupt_before/after: no interrupt values to show
                    return values
                return {**(values if isinstance(values, dict) else {}), "__interrupt__": flat}
            case contracts.RunFailed(error=error, message=message):
                return {"__error__": {"error": error, "message": message}}
        return await self.threads.values(thread_id)

    @contextlib.asynccontextmanager
    async def _graph(self, thread_id: str, graph_id: str | None, run_id: str | None = None):
        """The run's graph, with the gateway's saver: the one named, else the run's request's
        (a run requested by another service), else the thread's."""
        if graph_id is None and run_id is not None:
            requested = await self.log.last(subjects.sibling(subjects.run_control(thread_id, run_id), "RunRequested"))
            graph_id = requested.event().graph_id if requested is not None else None
        if graph_id is None:
            try:
                record = await self.threads.record(thread_id)
            except HTTPException:
                yield None
                return
            graph_id = (record.get("metadata") or {}).get("graph_id")
        async with self.threads.graph_of({"thread_id": thread_id, "metadata": {"graph_id": graph_id}}) as graph:
            yield graph

    async def request_cancel(self, thread_id: str, run_id: str, action: str) -> None:
        await self.log.append_event(contracts.RunCancelRequested(thread_id=thread_id, run_id=run_id, action=action))
        log.info("run cancel requested", thread_id=thread_id, run_id=run_id, action=action)

    async def find(self, thread_id: str, run_id: str) -> dict[str, Any]:
        await self.visible(thread_id, run_id)
        return await self.existing(thread_id, run_id)

    async def visible(self, thread_id: str, run_id: str) -> None:
        """404 unless the caller may see the thread; 422 for a run id that is not one."""
        await self.threads.record(thread_id)
        records.check_uuid(run_id, "run")

    async def existing(self, thread_id: str, run_id: str, stored: list[Entry] | None = None) -> dict[str, Any]:
        """The run (once :meth:`visible`), 404 when it is none: from its control events when the
        caller has read them, else from the read model."""
        if stored and (found := views.run_of(thread_id, run_id, stored)) is not None:
            return views.run_object(*found)
        run = await self.reads.run(thread_id, run_id)
        if run is None and await self._undecided(thread_id, run_id):
            # Requested by another service and not decided yet: it is a run once accepted.
            run = await self._decided(thread_id, run_id)
        if run is None:
            raise HTTPException(404, "Run not found")
        return rows.run_object(run)

    async def _undecided(self, thread_id: str, run_id: str) -> bool:
        """Requested, and neither deleted (its events stay, marked) nor gone."""
        requested, deleted = await asyncio.gather(
            self.log.last(subjects.run_event(thread_id, run_id, "RunRequested")),
            self.log.last(subjects.run_event(thread_id, run_id, "RunDeleted")),
        )
        return requested is not None and deleted is None

    async def _decided(self, thread_id: str, run_id: str):
        deadline = asyncio.get_running_loop().time() + self.settings.decision_timeout_s
        while asyncio.get_running_loop().time() < deadline:
            if await self.log.last(subjects.run_event(thread_id, run_id, "RunRejected")) is not None:
                return None
            if (run := await self.reads.run(thread_id, run_id)) is not None:
                return run
            await asyncio.sleep(0.02)
        return None

    async def list(self, thread_id: str, *, limit: int, offset: int, status: str | None, select: list[str] | None) -> list[dict]:
        await self.threads.record(thread_id)
        runs = [rows.run_object(r) for r in await self.reads.runs(thread_id, limit=limit, offset=offset, status=status)]
        if select:
            runs = [{k: r.get(k) for k in select} for r in runs]
        return runs

    async def cancel(self, thread_id: str, run_id: str, action: str, wait: bool) -> None:
        run = await self.find(thread_id, run_id)
        if run["status"] not in IN_FLIGHT:
            raise HTTPException(
                404,
                "No matching runs to cancel. Please verify the thread ID and run IDs are correct,"
                f" and the runs haven't been deleted or completed (run {run_id} is {run['status']}).",
            )
        async with self.events(thread_id, run_id) as events:
            await self.request_cancel(thread_id, run_id, action)
            if not wait:
                return
            await views.outcome(events)

    async def cancel_many(self, thread_id: str | None, run_ids: Iterable[str] | None, status: str | None, action: str) -> None:
        if thread_id is None:
            raise HTTPException(422, "thread_id is required")
        view = await self.reads.thread(thread_id)
        if view.row is None:
            return
        fold = view.row.fold
        in_flight = {rid: "pending" for rid in fold.queue}
        if fold.running is not None and fold.stopping is None:
            in_flight[fold.running] = "running"
        wanted = IN_FLIGHT if status in (None, "all") else (status,)
        for rid, run_status in in_flight.items():
            if run_status in wanted and (run_ids is None or rid in run_ids):
                await self.request_cancel(thread_id, rid, action)

    async def delete(self, thread_id: str, run_id: str) -> None:
        run = await self.find(thread_id, run_id)
        if run["status"] in IN_FLIGHT:
            raise HTTPException(409, f"Run {run_id} is {run['status']}; cancel it before deleting it")
        # Its events stay in the log (the audit trail says it ran, and was deleted) and so do
        # its checkpoints (they are the thread's state and history); runs are no longer listed.
        await self.log.append_event(contracts.RunDeleted(thread_id=thread_id, run_id=run_id))
