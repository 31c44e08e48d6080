"""The orchestrator process: folds every thread's control events and appends its decisions.

Threads are spread over partitions; an orchestrator consumes the control events of the
partitions whose lease it holds (:mod:`services.orchestrator.leases`), each from a durable
``orchestrator-p<k>`` consumer that it recreates on taking the partition over, starting at the
first event the previous holder did not acknowledge. Messages that are waiting are taken
together, grouped by thread, and the threads are handled concurrently, each in log order; the
consumer acknowledges cumulatively, and what is handled is acknowledged a moment later up to the
first event not handled yet (:mod:`services.orchestrator.acks`). A
thread's state is cached in memory and, on first sight, folded from its snapshot and the log's
tail after it (:mod:`services.orchestrator.snapshots`), so a restart loses nothing (DESIGN
invariant 6) and a cold start costs the tail, not the thread's history.

Decisions are appended one at a time, each with an expected-sequence check over the thread's
control events (a request's ``RunAccepted``, then the ``RunStarted`` of an idle thread, checked
against the accept's sequence): if anything was appended since the state was folded, the decision
is refused, the state catches up from the log and the next decision is made again. A second
orchestrator, or one that resumes after a pause, cannot append a decision based on a stale state
(invariant 1). Not one atomic batch: nats-server stages every atomic batch of a file-backed stream
in a file store of its own (4-7 ms measured, against 0.3 ms for an append), the largest cost a
run had.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections import OrderedDict, defaultdict

import msgspec
import nats.js.errors
import structlog
from nats.aio.client import Client as NATS

import contracts
from contracts import subjects
from services.orchestrator.acks import ACK_BATCH, ACK_EVERY_S, AckFloor
from services.orchestrator.decider import next_decision
from services.orchestrator.leases import Leases
from services.orchestrator.snapshots import Snapshots, worth_saving
from threadbus import broker, logs, metrics, thread_events
from threadbus.admission import Admission
from threadbus.read_model.database import Database
from threadbus.read_model.projector import Projector
from threadbus.settings import Settings
from threadbus.thread_state import ThreadState, evolve, fold
from threadbus.threadlog import Conflict, ThreadLog

log = logs.get("threadbus.orchestrator")

_CACHE_SIZE = 50_000
_MAX_BATCH = 512
# Bounds the accepted requests kept for their starts (at most 8 KiB each: INLINE_REQUEST_MAX_BYTES).
_ACCEPTED_REQUESTS_KEPT = 2_048
_RETRY_DELAY_S = 0.5
_STALL_CHECK_S = 3.0
PROJECTING_PARTITION = 0
_STOP_TIMEOUT_S = 5.0


class Orchestrator:
    def __init__(self, nc: NATS, settings: Settings):
        self.nc = nc
        self.settings = settings
        self.log = ThreadLog(nc)
        self.admission = Admission(nc.jetstream())
        self.states: OrderedDict[str, ThreadState] = OrderedDict()
        # Requests this orchestrator accepted, until their runs start (those that never start,
        # cancelled or rolled back while queued, are dropped oldest first beyond a bound).
        self.accepted_requests: OrderedDict[tuple[str, str], contracts.RunRequested] = OrderedDict()
        # thread -> events delivered since its last snapshot, for the threads in ``states``
        self.unsaved: dict[str, int] = {}
        self.snapshots = Snapshots(nc.jetstream())
        # One context for the process's publishes: each context subscribes an inbox of its own.
        self.js = nc.jetstream()
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        # partition -> the task that subscribes to it and holds the subscription; taking a
        # partition over can take a while on a cluster electing leaders, and must not hold up the
        # renewal of the other leases.
        self.holding: dict[int, asyncio.Task] = {}
        # partition -> the acknowledgement state of its current subscription: a message that
        # came through an earlier one (or another partition holder's) is not handled here.
        self.floors: dict[int, AckFloor] = {}
        # The holder of partition 0 also projects the log into the read model.
        self.projecting: dict[int, asyncio.Task] = {}
        self.received: defaultdict[int, int] = defaultdict(int)  # partition -> events pushed to us
        # Bumped whenever partitions change hands: a state folded before may have missed events
        # another orchestrator appended, and must not be cached.
        self.epoch = 0
        self.leases: Leases | None = None  # taken in run()
        self.replicated = False  # read from the thread stream's configuration at start
        self.balanced_once = False
        # Computed when scraped: an up-to-date sum would cost a pass over every thread per event.
        metrics.QUEUED_RUNS.set_function(lambda: sum(len(s.queue) for s in self.states.values()))
        metrics.DEEPEST_QUEUE.set_function(lambda: max((len(s.queue) for s in self.states.values()), default=0))

    async def run(self, stop: asyncio.Event) -> None:
        if not self.settings.database_url:
            raise RuntimeError("THREADBUS_DATABASE_URL is not set: the orchestrator projects the thread log into the read model")
        self.db = Database(self.settings.database_url)
        await self.db.open()
        try:
            await self._run(stop)
        finally:
            await self.db.close()

    async def _run(self, stop: asyncio.Event) -> None:
        js = self.nc.jetstream()
        self.leases = leases = Leases(await js.key_value(broker.LEASES_BUCKET), self.name)
        self.replicated = (await js.stream_info(subjects.THREAD_STREAM)).config.num_replicas > 1
        worker = asyncio.create_task(self._work())
        acknowledging = asyncio.create_task(self._acknowledge())
        try:
            started = False
            while not stop.is_set():
                try:
                    await self._balance(leases)
                except broker.UNREACHABLE as err:
                    log.warning("leases not renewed; trying again", error=repr(err))
                if not started:
                    started = True
                    log.info("orchestrator consuming", name=self.name, partitions=sorted(self.holding))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.settings.orchestrator_lease_s / 3)
        finally:
            for partition in list(self.holding):
                await self._stop_consuming(partition)
            with contextlib.suppress(Exception):  # with the broker gone, the leases expire instead
                await leases.leave()
            worker.cancel()
            acknowledging.cancel()
            await asyncio.gather(worker, acknowledging, return_exceptions=True)

    async def _balance(self, leases: Leases) -> None:
        """Renews the leases, lets go of lost ones, takes free partitions up to a fair share and
        hands back the surplus."""
        for partition in await leases.renew():
            log.warning("partition lease lost", partition=partition)
            await self._stop_consuming(partition)
        wanted = await leases.fair_share()
        # The partitions taken at start are listed once ("orchestrator consuming"); one taken
        # later, from an orchestrator that left or died, is worth a line of its own.
        at_start = not self.balanced_once
        self.balanced_once = True
        for partition in await leases.acquire(wanted):
            self.holding[partition] = asyncio.create_task(self._hold(partition, at_start), name=f"partition-{partition}")
            if partition == PROJECTING_PARTITION:
                projector = Projector(self.nc, self.db, batch_wait_s=self.settings.projector_batch_wait_s)
                self.projecting[partition] = asyncio.create_task(projector.run(), name="projector")
        for partition in leases.surplus(wanted):
            await self._stop_consuming(partition)
            await leases.release(partition)
            log.info("partition handed back", partition=partition)
        metrics.PARTITIONS_HELD.set(len(self.holding))

    async def _hold(self, partition: int, at_start: bool = False) -> None:
        """Subscribes to the partition, retrying while the broker cannot answer, and holds the
        subscription until cancelled; subscribes again if the consumer stops pushing."""
        while True:
            floor = AckFloor(partition)
            sub = await self._subscribe_retrying(partition, floor, at_start)
            at_start = False
            self.floors[partition] = floor
            try:
                await self._until_stalled(partition)
            finally:
                # What it handled and did not ack yet is delivered again by the next consumer.
                floor.retired = True
                if self.floors.get(partition) is floor:
                    del self.floors[partition]
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
            log.warning("partition consumer stopped pushing; subscribing again", partition=partition)

    async def _subscribe_retrying(self, partition: int, floor: AckFloor, at_start: bool):
        start = None
        while True:
            try:
                if start is None:
                    start = await self._resume_point(partition)
                return await self._subscribe(partition, start, floor, at_start)
            except (*broker.UNREACHABLE, nats.js.errors.APIError) as err:
                log.warning("partition not subscribed yet; trying again", partition=partition, error=repr(err))
                await asyncio.sleep(1.0)

    async def _until_stalled(self, partition: int) -> None:
        """Returns once the partition's consumer has events for us but pushed nothing for a
        while. Seen on a cluster that lost the consumer's leader: the new leader may not resume
        a push consumer that was waiting on flow control, and nats-py does not notice."""
        js = self.nc.jetstream()
        while True:
            seen = self.received[partition]
            await asyncio.sleep(_STALL_CHECK_S)
            if self.received[partition] != seen:
                continue  # it pushed: not stalled, and the broker need not be asked
            try:
                info = await js.consumer_info(subjects.THREAD_STREAM, broker.orchestrator_durable(partition))
            except (*broker.UNREACHABLE, nats.js.errors.APIError):
                continue  # the broker cannot tell now; neither can we
            if self.received[partition] == seen and (info.num_pending or not info.push_bound):
                return

    async def _resume_point(self, partition: int) -> int:
        """The first event of the partition its previous holder did not acknowledge; the
        previous holder's consumer is deleted, so that it delivers nothing more."""
        js = self.nc.jetstream()
        durable = broker.orchestrator_durable(partition)
        try:
            info = await js.consumer_info(subjects.THREAD_STREAM, durable)
        except nats.js.errors.NotFoundError:
            return 1
        # Nothing acknowledged since it was last created: its floor reads 0, its start holds.
        start = max(info.ack_floor.stream_seq + 1, info.config.opt_start_seq or 1)
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_consumer(subjects.THREAD_STREAM, durable)
        return start

    async def _subscribe(self, partition: int, start: int, floor: AckFloor, at_start: bool = False):
        js = self.nc.jetstream()
        durable = broker.orchestrator_durable(partition)
        deliver = f"_TB.deliver.orchestrator.p{partition}.{self.name}"
        info = await js.add_consumer(subjects.THREAD_STREAM, broker.orchestrator_consumer(partition, deliver, start))

        async def delivered(msg) -> None:
            self.received[partition] += 1
            floor.delivered(msg)
            self.inbox.put_nowait((msg, floor))

        sub = await js.subscribe_bind(subjects.THREAD_STREAM, info.config, durable, cb=delivered, manual_ack=True)
        self._forget_states()
        (log.debug if at_start else log.info)("partition taken", partition=partition, from_seq=start)
        return sub

    async def _stop_consuming(self, partition: int) -> None:
        if (floor := self.floors.get(partition)) is not None:
            await self._ack(floor)  # spares the next holder handling it again (unless the lease is lost)
        tasks = [t for t in (self.holding.pop(partition, None), self.projecting.pop(partition, None)) if t is not None]
        if not tasks:
            return
        for task in tasks:
            task.cancel()
        # Bounded: a task that does not end must not keep this orchestrator from renewing and
        # rebalancing its other leases (the log's expected-sequence checks guard what it might do).
        _, stuck = await asyncio.wait(tasks, timeout=_STOP_TIMEOUT_S)
        for task in stuck:
            log.error("task did not stop when its partition was let go", partition=partition, task=task.get_name(), waiting_in=logs.awaiting(task))
        self._forget_states()

    def _forget_states(self) -> None:
        self.epoch += 1
        self.states.clear()
        self.unsaved.clear()

    def _requeue(self, msgs: list, floor: AckFloor) -> None:
        for msg in msgs:
            self.inbox.put_nowait((msg, floor))

    async def _work(self) -> None:
        while True:
            batch = [await self.inbox.get()]
            while not self.inbox.empty() and len(batch) < _MAX_BATCH:
                batch.append(self.inbox.get_nowait())
            # A thread's partition has one current subscription, so its messages share a floor.
            by_thread: dict[str, list] = defaultdict(list)
            floors: dict[str, AckFloor] = {}
            for msg, floor in batch:
                # Else the partition was let go, or subscribed again (which delivers it again).
                if self.floors.get(floor.partition) is floor:
                    tid = subjects.thread_of(msg.subject)
                    by_thread[tid].append(msg)
                    floors[tid] = floor
            results = await asyncio.gather(
                *(self._handle_thread(tid, msgs) for tid, msgs in by_thread.items()), return_exceptions=True
            )
            for (tid, msgs), result in zip(by_thread.items(), results):
                floor = floors[tid]
                if isinstance(result, BaseException):
                    # Handled again in a moment, from the thread's log, by this process: a nak
                    # would not reach a broker that is away, and its ack wait is long. Should
                    # this process die meanwhile, the broker redelivers them after the ack wait.
                    # Unhandled, they hold the partition's ack floor back.
                    self.states.pop(tid, None)
                    log.error("thread handling failed", thread_id=tid, error=repr(result), exc_info=result)
                    asyncio.get_running_loop().call_later(_RETRY_DELAY_S, self._requeue, msgs, floor)
                    continue
                floor.handled(msgs)
            for floor in set(floors.values()):
                if floor.waiting >= ACK_BATCH:
                    await self._ack(floor)

    async def _acknowledge(self) -> None:
        while True:
            await asyncio.sleep(ACK_EVERY_S)
            for floor in list(self.floors.values()):
                await self._ack(floor)

    async def _ack(self, floor: AckFloor) -> None:
        """Acks the partition's handled floor, if this process still holds the partition's lease
        for certain (half a lease since it was last confirmed: see :mod:`services.orchestrator.acks`)."""
        if not self.leases.confirmed_within(floor.partition, self.settings.orchestrator_lease_s / 2):
            return
        if (msg := floor.take()) is None:
            return
        try:
            await msg.ack()
        # Whatever failed, the acknowledging task must go on: the next ack covers these events,
        # and a takeover handles them again.
        except Exception as err:  # noqa: BLE001
            log.warning("events not acknowledged", partition=floor.partition, error=repr(err))

    async def _handle_thread(self, thread_id: str, msgs: list) -> None:
        with structlog.contextvars.bound_contextvars(thread_id=thread_id):
            epoch = self.epoch
            state = self.states.get(thread_id)
            if state is None:
                state, unsaved = await self._cold_start(thread_id, through=max(m.metadata.sequence.stream for m in msgs))
            else:
                # Our own decisions come back as delivered events too: counting deliveries counts them.
                unsaved = self.unsaved.get(thread_id, 0) + len(msgs)
            deleted = False
            for msg in msgs:
                seq = msg.metadata.sequence.stream
                if seq <= state.seq:
                    continue
                try:
                    event = contracts.decode(msg.data)
                except msgspec.DecodeError as err:
                    await broker.dead_letter(self.nc, "orchestrator", msg, str(err))
                    continue
                state = evolve(state, event, seq)
                deleted = isinstance(event, contracts.ThreadDeleted)
            state = await self._settle(state)
            if epoch == self.epoch:
                self._remember(state)
                self.unsaved[thread_id] = await self._snapshot(state, unsaved, deleted)

    async def _cold_start(self, thread_id: str, through: int) -> tuple[ThreadState, int]:
        """The thread's state from its snapshot and the log's tail after it, and the tail's length
        (events not in a snapshot). A snapshot whose sequence does not hold one of the thread's
        events is not of this log (a stream created anew under the bucket) or its event was
        compacted away: the thread is folded from the start."""
        snapshot = await self.snapshots.load(thread_id)
        if snapshot is not None and snapshot.seq:
            event = await self.log.at(snapshot.seq)
            if event is None or subjects.thread_of(event.subject) != thread_id:
                log.info("snapshot does not match the log; folding the thread from the start", snapshot_seq=snapshot.seq)
                return await self._load(thread_id, through)
        return await self._fold_tail(snapshot or ThreadState(thread_id=thread_id), through)

    async def _load(self, thread_id: str, through: int = 0) -> tuple[ThreadState, int]:
        """The thread's state folded from the start of its log, when the view we had was refused:
        its snapshot, which may be what was wrong, is dropped."""
        await self.snapshots.drop(thread_id)
        return await self._fold_tail(ThreadState(thread_id=thread_id), through)

    async def _fold_tail(self, state: ThreadState, through: int) -> tuple[ThreadState, int]:
        """``state`` and the thread's log after it, which holds at least sequence ``through`` (a
        state folded from a lagging replica and then fed a newer event would pass the
        expected-sequence check with a gap in its view); and how many events that was."""
        entries = await self.log.read(
            subjects.thread_control(state.thread_id), after=state.seq, through=through if through > state.seq else 0
        )
        events = list(_decoded(entries))
        await self._finish_compactions(state.thread_id, events)
        return fold(state, events), len(events)

    async def _snapshot(self, state: ThreadState, unsaved: int, deleted: bool) -> int:
        """Saves (or, for a deleted thread, drops) the thread's snapshot when it is due; returns
        the events left unsaved. A snapshot that cannot be written now is written later."""
        try:
            if deleted:
                await self.snapshots.drop(state.thread_id)
                return 0
            if worth_saving(state, unsaved, self.settings.orchestrator_snapshot_every):
                await self.snapshots.save(state)
                return 0
        except broker.UNREACHABLE as err:
            log.warning("snapshot not written; trying again later", error=repr(err))
        return unsaved

    async def _finish_compactions(self, thread_id: str, events: list[tuple[int, contracts.Event]]) -> None:
        """Compact again the runs rolled back since the thread's last start.

        The purge follows the tombstone's append; an orchestrator that died (or whose purge failed)
        between the two leaves the run's checkpoints behind. The next run only starts after the
        purge, so a tombstone with no ``RunStarted`` after it may not have been compacted, and
        compacting is idempotent.
        """
        for seq, event in reversed(events):
            if isinstance(event, contracts.RunStarted):
                return
            if isinstance(event, contracts.RunRolledBack):
                await self.log.compact(thread_id, event.run_id, below=seq)

    async def _catch_up(self, state: ThreadState, through: int) -> ThreadState:
        entries = await self.log.read(subjects.thread_control(state.thread_id), after=state.seq, through=through)
        return fold(state, _decoded(entries))

    async def _decision(self, state: ThreadState, refusals: dict[str, contracts.RunRejected | None]) -> contracts.Event | None:
        """The next decision the state calls for, if any. The start of a run this orchestrator
        accepted carries the run's request, so that the executor need not read it."""
        decision = next_decision(state, self.settings.paused_thread_input)
        if decision is not None and (request := _answered_request(state)) is not None:
            # Checked before any decision it causes: a request naming nothing that exists must
            # not cancel the runs in flight (interrupt, rollback) on its way to a refusal.
            if request.run_id not in refusals:
                refusals[request.run_id] = await self.admission.refusal(request)
            decision = refusals[request.run_id] or decision
            if isinstance(decision, contracts.RunAccepted):
                self._keep_request(request)
        if isinstance(decision, contracts.RunCancelled):
            decision = msgspec.structs.replace(decision, pending=decision.run_id in state.queue)
        if isinstance(decision, contracts.RunStarted):
            request = self.accepted_requests.get((decision.thread_id, decision.run_id))
            if request is not None:
                decision = msgspec.structs.replace(decision, request=request)
        return decision

    def _keep_request(self, request: contracts.RunRequested) -> None:
        key = (request.thread_id, request.run_id)
        if len(contracts.encode(request)) > contracts.INLINE_REQUEST_MAX_BYTES:
            self.accepted_requests.pop(key, None)  # not one an earlier request with this id left
            return
        self.accepted_requests[key] = request
        while len(self.accepted_requests) > _ACCEPTED_REQUESTS_KEPT:
            self.accepted_requests.popitem(last=False)

    async def _settle(self, state: ThreadState) -> ThreadState:
        conflicts = 0
        refusals: dict[str, contracts.RunRejected | None] = {}  # run id -> asked once per settling
        while (decision := await self._decision(state, refusals)) is not None:
            try:
                seq = await self.log.append_event(decision, expect=state.seq)
            except Conflict as conflict:
                conflicts += 1
                newest = conflict.last_seq if conflict.last_seq and conflict.last_seq > state.seq else 0
                caught_up = await self._catch_up(state, through=newest)
                if caught_up.seq == state.seq or conflicts > 3:
                    # Nothing newer to read, yet the check failed: our view is wrong; rebuild it.
                    caught_up, _ = await self._load(state.thread_id, through=newest)
                state = caught_up
                continue
            # A run cancelled before it started: no executor ends it on the v3 thread stream.
            never_started = isinstance(decision, contracts.RunCancelled) and decision.pending
            _count(state, decision)
            run_id = getattr(decision, "run_id", None)
            if isinstance(decision, contracts.RunStarted):
                self.accepted_requests.pop((state.thread_id, run_id), None)
            log.info("decided", decision=type(decision).__name__, run_id=run_id, seq=seq, **_details(decision))
            if self.replicated:
                # A replicated stream checks the expectation against what it has applied, so an
                # append by another writer still replicating (an executor's outcome on another
                # run's subject) can land just before ours, unseen: fold what the log holds up to
                # our decision instead, or that event would be skipped as already seen.
                state = await self._catch_up(state, through=seq)
            else:
                state = evolve(state, decision, seq)
            if never_started:
                # Its clients are told here.
                try:
                    await thread_events.publish_cancelled(self.js, state.thread_id, run_id)
                except broker.UNREACHABLE as err:  # the decision stands; only its stream clients wait longer
                    log.warning("cancel not published on the thread stream", run_id=run_id, error=repr(err))
            if isinstance(decision, contracts.RunRolledBack):
                # Before anything else is decided: a run started after it starts from the state
                # before the rolled-back run.
                await self.log.compact(state.thread_id, decision.run_id, below=seq)
        return state

    def _remember(self, state: ThreadState) -> None:
        self.states[state.thread_id] = state
        self.states.move_to_end(state.thread_id)
        while len(self.states) > _CACHE_SIZE:
            evicted, _ = self.states.popitem(last=False)
            self.unsaved.pop(evicted, None)


def _answered_request(state: ThreadState) -> contracts.RunRequested | None:
    """The request the state's next decision answers (or cancels runs for), if it answers one:
    compactions and cancel requests come first (``next_decision``)."""
    if state.to_compact or not state.inbox or not isinstance(state.inbox[0], contracts.RunRequested):
        return None
    return state.inbox[0]


def _count(state: ThreadState, decision: contracts.Event) -> None:
    """Metrics of a request's answer, from the request it answers (the first of the inbox)."""
    if isinstance(decision, (contracts.RunAccepted, contracts.RunRejected)) and state.inbox:
        request = state.inbox[0]
        label = "accepted" if isinstance(decision, contracts.RunAccepted) else f"rejected_{decision.reason}"
        metrics.RUN_REQUESTS.labels(request.multitask_strategy, label).inc()
        metrics.DECISION_SECONDS.observe(max(0.0, (contracts.now() - request.at).total_seconds()))


def _decoded(entries):
    for entry in entries:
        try:
            yield entry.seq, entry.event()
        except msgspec.DecodeError:
            log.warning("invalid event skipped", subject=entry.subject, seq=entry.seq)


def _details(decision) -> dict:
    match decision:
        case contracts.RunRejected(reason=reason):
            return {"reason": reason}
        case contracts.RunCancelled(action=action):
            return {"action": action}
    return {}
