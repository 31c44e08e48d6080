"""The executor process.

Executors share the durable pull consumer ``executor`` whose messages are the ``RunStarted``
decisions. A run is executed with a checkpointer guarded by the run's ``RunStarted`` sequence:
every checkpoint, write and outcome is appended only while that event is still the newest
control event of the run. When the orchestrator cancels the run (``RunCancelled``) the task is
cancelled at once; a zombie that missed the cancel is refused at its next append. Either way
the executor confirms with ``RunStopped`` (invariant 2), unless the run was already compacted;
a run interrupted by the next one before it stored anything (a one-node graph's run is
checkpointed only at its end, ``docs/durability.md``) first stores its input, guarded by the cancel.

The message is acknowledged only once the outcome is in the log; until then it is kept alive
with in-progress heartbeats, and redelivered to another executor if this one dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import nats.errors
import orjson
import structlog
from langgraph.constants import START
from langgraph.errors import InvalidUpdateError
from langgraph.types import Command, Send
from nats.aio.client import Client as NATS

import contracts
from contracts import subjects
from services.executor.protocol_v3 import ProtocolRunEvents
from services.executor.streaming import RunStreamWriter
from threadbus import broker, logs, metrics, state_values
from threadbus.checkpointer import JetStreamSaver, RunGuard, RunSaver, RunSuperseded
from threadbus.graphs import GraphRegistry
from threadbus.jsonable import jsonable
from threadbus.read_model.database import Database
from threadbus.settings import Settings
from threadbus.store import open_store
from threadbus.threadlog import Conflict, Entry, ThreadLog

log = logs.get("threadbus.executor")

_STATELESS_LINGER_S = 1.0


class _Redeliver(Exception):
    """The run's message was nak'ed to be delivered again: do not acknowledge it."""


class Executor:
    def __init__(self, nc: NATS, settings: Settings, graphs: GraphRegistry):
        self.nc = nc
        self.settings = settings
        self.graphs = graphs
        self.log = ThreadLog(nc)
        self.saver = JetStreamSaver(self.log)
        # One context for every run's stream chunks: each context subscribes its own inbox for
        # publish_async acknowledgements, and never unsubscribes it.
        self.js = nc.jetstream()
        self.active: dict[str, asyncio.Task] = {}
        self.cancelled: set[str] = set()
        self.deleting: set[asyncio.Task] = set()  # stateless runs' threads, deleted a moment later

    async def run(self, stop: asyncio.Event) -> None:
        js = self.js
        # The store's search and namespace listing read the read model's index.
        if not self.settings.database_url:
            raise RuntimeError("THREADBUS_DATABASE_URL is not set: the store's search index lives in the read model's PostgreSQL")
        db = Database(self.settings.database_url)
        await db.open()
        self.store = await open_store(js, db, self.graphs)
        psub = await js.pull_subscribe_bind(durable=broker.EXECUTOR_CONSUMER, stream=subjects.THREAD_STREAM)
        cancels = await self.nc.subscribe(subjects.cancels_published(), cb=self._on_cancel)
        slots = asyncio.Semaphore(self.settings.executor_concurrency)
        metrics.EXECUTOR_SLOTS.set(self.settings.executor_concurrency)
        metrics.EXECUTOR_BUSY.set_function(lambda: len(self.active))
        log.info("executor consuming", concurrency=self.settings.executor_concurrency)
        tasks: dict[asyncio.Task, Any] = {}  # run task -> its RunStarted message
        try:
            while not stop.is_set():
                await slots.acquire()
                try:
                    msgs = await psub.fetch(1, timeout=1)
                except (nats.errors.TimeoutError, asyncio.TimeoutError):
                    slots.release()
                    continue
                except nats.errors.ConnectionClosedError:
                    slots.release()
                    break
                except broker.UNREACHABLE:
                    slots.release()
                    await asyncio.sleep(0.5)  # reconnecting: fetch again once the broker is back
                    continue
                task = asyncio.create_task(self._execute(msgs[0]))
                tasks[task] = msgs[0]
                task.add_done_callback(lambda t: (tasks.pop(t, None), slots.release()))
        finally:
            await self._hand_back(tasks)
            await asyncio.gather(*self.deleting, return_exceptions=True)
            await cancels.unsubscribe()
            await psub.unsubscribe()
            await self.store.close()
            await db.close()

    async def _hand_back(self, tasks: dict[asyncio.Task, Any]) -> None:
        """On stop, runs in progress get THREADBUS_EXECUTOR_SHUTDOWN_GRACE_S to finish (each acks
        its own message); the rest are stopped and handed back at once, so another executor
        resumes them from their last checkpoint instead of waiting out the ack wait."""
        if not tasks:
            return
        log.info("waiting for runs in progress", runs=len(tasks), grace_s=self.settings.executor_shutdown_grace_s)
        _, unfinished = await asyncio.wait(set(tasks), timeout=self.settings.executor_shutdown_grace_s)
        handed_back = [(task, tasks[task]) for task in unfinished]
        for task, _ in handed_back:
            # Where it waits tells a stuck run from a slow graph.
            log.info("run unfinished at the end of the grace period", run_id=subjects.run_of(tasks[task].subject), waiting_in=logs.awaiting(task))
            task.cancel()
        await asyncio.gather(*(task for task, _ in handed_back), return_exceptions=True)
        for _, msg in handed_back:
            with contextlib.suppress(Exception):
                await msg.nak()
            log.info("run handed back", run_id=subjects.run_of(msg.subject))

    async def _on_cancel(self, msg) -> None:
        # A hint, not a fact: every publish of a RunCancelled reaches this core subscription, also
        # one the stream refused (a stale decision, retried after catching up) and before the stream
        # stored it. So the same cancel can arrive twice, and the log is what decides (_confirm_stop).
        run_id = subjects.run_of(msg.subject)
        task = self.active.get(run_id)
        if task is not None and run_id not in self.cancelled:
            self.cancelled.add(run_id)
            task.cancel()

    async def _execute(self, msg) -> None:
        started_seq = msg.metadata.sequence.stream
        try:
            started = contracts.decode(msg.data)
        except msgspec.DecodeError as err:
            await broker.dead_letter(self.nc, "executor", msg, str(err))
            await msg.term()
            return
        thread_id, run_id = started.thread_id, started.run_id
        with structlog.contextvars.bound_contextvars(thread_id=thread_id, run_id=run_id):
            try:
                await self._execute_run(msg, started, started_seq)
            except _Redeliver:
                return
            except broker.UNREACHABLE as err:
                # The broker went away during the run or while ending it: the run is not over.
                # Unacknowledged, it is delivered again once the broker is back, and resumes from
                # its last checkpoint.
                log.warning("broker unreachable; the run will be redelivered", error=repr(err))
                with contextlib.suppress(Exception):  # with the broker gone, the ack wait does it
                    await msg.nak(delay=_backoff(msg))
                return
            except Exception:
                log.exception("run handling failed; it will be redelivered")
                with contextlib.suppress(Exception):  # with the broker gone, the ack wait does it
                    await msg.nak(delay=1.0)
                return
            await msg.ack()

    async def _execute_run(self, msg, started: contracts.RunStarted, started_seq: int) -> None:
        thread_id, run_id = started.thread_id, started.run_id
        saver = self.saver.bound(RunGuard(thread_id=thread_id, run_id=run_id, started_seq=started_seq))
        # The thread's newest checkpoint, which the graph reads first, is read while the request is.
        saver.read_ahead()
        try:
            await self._execute_started(msg, saver, started, started_seq)
        finally:
            saver.discard_read_ahead()

    async def _execute_started(self, msg, saver: RunSaver, started: contracts.RunStarted, started_seq: int) -> None:
        thread_id, run_id = started.thread_id, started.run_id
        deliveries = msg.metadata.num_delivered
        requested = await self._requested(msg, started, started_seq, deliveries)
        if requested is None:
            return
        if deliveries > 1:
            metrics.REDELIVERIES.inc()
        thread_events = ProtocolRunEvents(self.js, requested, attempt=deliveries)
        # Told on the outcome, so that the webhook sender reads the request only when there is one.
        webhook = bool(requested.kwargs.webhook)
        if deliveries > self.settings.executor_max_deliver:
            outcome = contracts.RunFailed(
                thread_id=thread_id,
                run_id=run_id,
                error="MaxDeliveriesExceeded",
                message=f"the run was delivered {deliveries - 1} times without finishing",
                webhook=webhook,
            )
            await self._end(thread_events, outcome, started_seq)
            return
        self.active[run_id] = asyncio.current_task()
        heartbeat = asyncio.create_task(self._heartbeat(msg))
        log.info("run executing", graph_id=requested.graph_id, attempt=deliveries)
        deadline = asyncio.timeout(self.settings.run_timeout_s)
        try:
            async with deadline:
                outcome = await self._run_graph(requested, saver, thread_events, retry=deliveries > 1)
        except (RunSuperseded, asyncio.CancelledError) as err:
            if isinstance(err, asyncio.CancelledError):
                if run_id not in self.cancelled:
                    raise
                asyncio.current_task().uncancel()  # handled: later awaits of this task run normally
            keep = functools.partial(self._keep_input, requested)
            if not await self._confirm_stop(thread_id, run_id, webhook=webhook, before=keep):
                # Stopped on a cancel that is not in the log (not yet, or its append was refused):
                # the run is not over. Delivered again, it reads the log afresh and stops or resumes.
                log.info("cancel not in the log; run redelivered")
                await msg.nak(delay=0.25)
                raise _Redeliver from None
            await thread_events.stopped()
            return
        except broker.UNREACHABLE:
            raise  # not the graph failing: the run is redelivered (_execute)
        except Exception as err:
            if deadline.expired():  # our deadline, not a TimeoutError of the graph's own
                log.warning("run timed out", timeout_s=self.settings.run_timeout_s)
                outcome = contracts.RunFailed(
                    thread_id=thread_id,
                    run_id=run_id,
                    error=contracts.RUN_TIMEOUT,
                    message=f"the run took longer than {self.settings.run_timeout_s} s (THREADBUS_RUN_TIMEOUT_S)",
                )
            else:
                log.warning("graph raised", error=repr(err), detail=getattr(err, "description", None) or str(err))
                outcome = contracts.RunFailed(
                    thread_id=thread_id, run_id=run_id, error=type(err).__name__, message=str(err)
                )
        finally:
            heartbeat.cancel()
            self.active.pop(run_id, None)
            self.cancelled.discard(run_id)
        await self._end(thread_events, msgspec.structs.replace(outcome, webhook=webhook), started_seq)
        # A stateless run's thread goes with it; with a webhook, once the webhook has been called.
        if requested.kwargs.temporary and not requested.kwargs.webhook:
            task = asyncio.create_task(self._delete_soon(thread_id))
            self.deleting.add(task)
            task.add_done_callback(self.deleting.discard)

    async def _requested(self, msg, started: contracts.RunStarted, started_seq: int, deliveries: int):
        """The run's request, or None when there is nothing to execute.

        A first delivery takes the request the ``RunStarted`` carries, or else reads only the
        request, one direct get on its stored subject (the RunStarted's sibling): a cancel that
        came meanwhile is found by the run's first guarded append, which is refused. A redelivery
        reads the run's control events first, since the run was often stopped, finished or
        compacted since it started.
        """
        thread_id, run_id = started.thread_id, started.run_id
        if deliveries == 1 and started.request is not None:
            return started.request
        if deliveries == 1:
            entry = await self.log.last(subjects.sibling(msg.subject, "RunRequested"))
            if entry is not None:
                return entry.event()
            # Compacted already, or a replica behind the leader answered: read the whole story.
        control = subjects.run_control(thread_id, run_id)
        entries = await self.log.read(control)
        if (not entries or entries[-1].seq < started_seq) and await self.log.exists(started_seq):
            # A replica that has not applied the RunStarted yet answered: ask until one has.
            entries = await self.log.read(control, through=started_seq)
        if not entries or entries[-1].seq != started_seq:
            # Cancelled, finished or compacted since it was started: nothing to execute.
            await self._confirm_stop(thread_id, run_id)
            return None
        return next((e.event() for e in entries if e.subject.endswith(".requested")), None)

    async def _delete_soon(self, thread_id: str) -> None:
        # The client waiting on a stateless run follows the run's events in the thread's log;
        # deleted at once, they could be purged before its consumer delivered them.
        await asyncio.sleep(_STATELESS_LINGER_S)
        try:
            await self.log.delete_thread(thread_id)
        except Exception as err:  # the thread stays; it is deleted like any other, over HTTP
            log.warning("stateless run's thread not deleted", thread_id=thread_id, error=repr(err))

    async def _end(self, thread_events: ProtocolRunEvents, outcome: contracts.Event, started_seq: int) -> None:
        """The run's end on the thread stream and its outcome in the log, in flight together (one
        round trip; the end is handed to the connection first): both acknowledgements are
        awaited, and neither waits for the other."""
        ended, finished = await asyncio.gather(
            thread_events.ended(outcome), self._finish(outcome, started_seq), return_exceptions=True
        )
        if isinstance(finished, BaseException):
            raise finished  # the run is redelivered, and its end published again with it
        if isinstance(ended, BaseException):
            # The outcome is in the log: the end it stands for must reach the thread stream as well.
            # Published again with the same ids, a duplicate of whatever of it was stored.
            log.warning("run's end not stored on the thread stream; publishing it again", error=repr(ended))
            await thread_events.ended(outcome)

    async def _finish(self, outcome: contracts.Event, started_seq: int) -> None:
        try:
            await self.log.append_event(outcome, expect=started_seq, scope="run")
            log.info("run ended", outcome=type(outcome).__name__)
            metrics.RUN_OUTCOMES.labels(_outcome_label(outcome)).inc()
        except Conflict:
            await self._confirm_stop(outcome.thread_id, outcome.run_id, webhook=outcome.webhook)

    async def _confirm_stop(
        self,
        thread_id: str,
        run_id: str,
        *,
        webhook: bool | None = None,
        before: Callable[[Entry], Awaitable[None]] | None = None,
    ) -> bool:
        """Append ``RunStopped`` if the run's newest control event is a cancel still unconfirmed,
        after ``before(cancel)``. False when nothing stopped the run in the log: its
        ``RunStarted`` is still the newest. ``webhook``: whether the run's request names one,
        None when the request was not read."""
        last = await self.log.last(subjects.run_control(thread_id, run_id))
        if last is not None and last.subject.endswith(".started"):
            return False
        if last is None or not last.subject.endswith(".cancelled"):
            return True
        if before is not None:
            await before(last)
        with contextlib.suppress(Conflict):
            stopped = contracts.RunStopped(thread_id=thread_id, run_id=run_id, webhook=webhook)
            await self.log.append_event(stopped, expect=last.seq, scope="run")
            log.info("run stopped")
        return True

    async def _keep_input(self, requested: contracts.RunRequested, cancel: Entry) -> None:
        """What a run interrupted by the next one (``multitask_strategy="interrupt"``) keeps when
        it stored nothing yet: its input, applied to the state it started from, as LangGraph's
        default durability would have stored at its start. A one-node graph's run is checkpointed
        only at its end (docs/durability.md), so without this the thread would lose the message
        the next run answers after. Stored before the stop is confirmed, guarded by the cancel:
        the next run starts only after the stop."""
        thread_id, run_id, kwargs = requested.thread_id, requested.run_id, requested.kwargs
        if cancel.event().action != "interrupt" or kwargs.durability or kwargs.command or not kwargs.input:
            return
        if await self._has_checkpoint_of(thread_id, run_id):
            return  # it got as far as a checkpoint: that is what it keeps
        saver = self.saver.bound(RunGuard(thread_id=thread_id, run_id=run_id, started_seq=cancel.seq))
        config = run_config(requested)
        store = self.store.for_run()
        try:
            async with self.graphs.graph(requested.graph_id, config, store=store, context=kwargs.context or None) as graph:
                graph = graph.copy(update={"store": store, "checkpointer": saver})
                await graph.aupdate_state(config, kwargs.input, as_node=START)
            log.info("interrupted run's input kept")
        except RunSuperseded:
            pass  # stopped meanwhile (by another delivery of the run): the stop is confirmed already
        except (InvalidUpdateError, ValueError) as err:  # an input the graph does not take: nothing to keep
            log.warning("interrupted run's input not kept", error=repr(err))

    async def _heartbeat(self, msg) -> None:
        interval = max(self.settings.executor_ack_wait_s / 3, 0.5)
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(Exception):
                await msg.in_progress()

    async def _run_graph(
        self, requested: contracts.RunRequested, saver: RunSaver, thread_events: ProtocolRunEvents, *, retry: bool
    ) -> contracts.Event:
        config = run_config(requested)
        store = self.store.for_run()
        context = requested.kwargs.context or None
        async with self.graphs.graph(requested.graph_id, config, store=store, context=context) as graph:
            durability = requested.kwargs.durability or self.graphs.durability(requested.graph_id, graph)
            graph = graph.copy(update={"store": store, "checkpointer": saver})
            return await self._run_built(graph, requested, config, saver, thread_events, durability=durability, retry=retry)

    async def _run_built(
        self,
        graph,
        requested: contracts.RunRequested,
        config: dict,
        saver: RunSaver,
        thread_events: ProtocolRunEvents,
        *,
        durability: str | None,
        retry: bool,
    ) -> contracts.Event:
        thread_id, run_id = requested.thread_id, requested.run_id
        kwargs = requested.kwargs
        graph_input: Any = command_from(kwargs.command) if kwargs.command else kwargs.input
        if retry and await self._has_checkpoint_of(thread_id, run_id):
            # An earlier delivery got some steps done: continue from its last checkpoint.
            graph_input = None
        await thread_events.running()
        # A run started through the v3 protocol streams its events there instead of SSE chunks.
        stream = thread_events if thread_events.drives_run else RunStreamWriter(self.js, thread_id, run_id, kwargs.stream_mode)
        try:
            await stream.run(
                graph,
                graph_input,
                config,
                context=kwargs.context or None,
                subgraphs=kwargs.subgraphs,
                interrupt_before=kwargs.interrupt_before,
                interrupt_after=kwargs.interrupt_after,
                **({"durability": durability} if durability else {}),
            )
        finally:
            # Whatever was streamed is stored before the outcome (or the stop) is appended.
            await asyncio.shield(stream.flush())
        if not stream.paused and saver.current_checkpoint_id is not None:
            # The common case, known without decoding the final state a second time; small values
            # go with it, so that the answer to the waiting client needs no read of the checkpoint.
            return contracts.RunSucceeded(
                thread_id=thread_id, run_id=run_id, checkpoint_id=saver.current_checkpoint_id, values=await _small_values(graph, saver)
            )
        # A pause, whose interrupts the state has by task, or a run that wrote nothing (a
        # redelivery of a run that had ended): read the state back.
        snapshot = await graph.aget_state({"configurable": {"thread_id": thread_id}})
        checkpoint_id = (snapshot.config or {}).get("configurable", {}).get("checkpoint_id")
        if snapshot.next:
            interrupts = {
                task.id: [jsonable(i) for i in task.interrupts] for task in snapshot.tasks if task.interrupts
            }
            return contracts.RunInterrupted(thread_id=thread_id, run_id=run_id, checkpoint_id=checkpoint_id, interrupts=interrupts)
        return contracts.RunSucceeded(thread_id=thread_id, run_id=run_id, checkpoint_id=checkpoint_id)

    async def _has_checkpoint_of(self, thread_id: str, run_id: str) -> bool:
        newest = await self.log.last(subjects.checkpoints(thread_id))
        return newest is not None and subjects.run_of(newest.subject) == run_id


async def _small_values(graph, saver: RunSaver) -> Any:
    """The run's final values when they are small enough to go into its outcome, else None."""
    if saver.current_checkpoint is None:
        return None
    # Encoded once: a large state is measured, not decoded again to be dropped.
    encoded = await state_values.as_json(graph, saver.current_checkpoint, saver, saver.guard.thread_id)
    return orjson.loads(encoded) if len(encoded) <= contracts.INLINE_VALUES_MAX_BYTES else None


def _backoff(msg) -> float:
    """Redelivery delay after the broker could not be reached: growing, so that the deliveries
    THREADBUS_EXECUTOR_MAX_DELIVER allows outlast a cluster's leader election (seconds), not
    only an executor crash."""
    return float(min(2 ** (msg.metadata.num_delivered - 1), 30))


def _outcome_label(outcome: contracts.Event) -> str:
    match outcome:
        case contracts.RunFailed(error=contracts.RUN_TIMEOUT):
            return "timeout"
        case contracts.RunFailed():
            return "error"
        case contracts.RunInterrupted():
            return "paused"
    return "success"


def run_config(requested: contracts.RunRequested) -> dict[str, Any]:
    kwargs = requested.kwargs
    config = dict(kwargs.config)
    configurable = dict(config.get("configurable") or {})
    configurable.update(
        thread_id=requested.thread_id,
        run_id=requested.run_id,
        assistant_id=requested.assistant_id,
        graph_id=requested.graph_id,
    )
    if kwargs.checkpoint_id:
        configurable["checkpoint_id"] = kwargs.checkpoint_id
    if kwargs.checkpoint:
        configurable.update(kwargs.checkpoint)
    config["configurable"] = configurable
    config["metadata"] = {
        **(config.get("metadata") or {}),
        **requested.metadata,
        "run_id": requested.run_id,
        "thread_id": requested.thread_id,
        "assistant_id": requested.assistant_id,
        "graph_id": requested.graph_id,
    }
    return config


def command_from(command: dict[str, Any]) -> Command:
    goto = command.get("goto")
    if goto is not None:
        goto = [_send_or_node(g) for g in goto] if isinstance(goto, list) else _send_or_node(goto)
    return Command(resume=command.get("resume"), update=command.get("update"), goto=goto or ())


def _send_or_node(goto: Any) -> Any:
    if isinstance(goto, dict):
        return Send(goto["node"], goto.get("input"))
    return goto
