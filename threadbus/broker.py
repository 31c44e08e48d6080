"""Connecting to NATS and creating threadbus's streams, consumers and buckets.

Everything is created with nats-py, idempotently, with exactly the config threadbus needs: an
existing stream whose config drifted is updated back (never through FastStream's
``declare=True``, which rewrites configs and drops ``allow_atomic``/``allow_direct``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    KeyValueConfig,
    StorageType,
    StreamConfig,
    SubjectTransform,
)

from contracts import subjects
from threadbus import logs
from threadbus.settings import Settings

log = logs.get("threadbus.broker")

ORCHESTRATOR_CONSUMER = "orchestrator"  # one per partition: orchestrator-p<k>
EXECUTOR_CONSUMER = "executor"
WEBHOOKS_CONSUMER = "webhook-senders"
# The pull consumer the webhook senders shared before: replaced at bootstrap (a consumer cannot
# change from pull to push in place), from where it had got to.
_PULL_WEBHOOKS_CONSUMER = "webhooks"
THREADS_BUCKET = "tb_threads"
ASSISTANTS_BUCKET = "tb_assistants"
STORE_BUCKET = "tb_store"
ASSISTANT_VERSIONS_BUCKET = "tb_assistant_versions"
CRONS_BUCKET = "tb_crons"
LEASES_BUCKET = "tb_leases"
SNAPSHOTS_BUCKET = "tb_thread_snapshots"


# The broker could not be reached or did not answer: worth trying again, not a verdict on the work.
UNREACHABLE = (
    nats.errors.TimeoutError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.ConnectionDrainingError,
    nats.errors.NoServersError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.NoRespondersError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
)


async def connect(settings: Settings, name: str) -> NATS:
    nc = NATS()

    async def disconnected():
        if nc.is_closed:  # closed by us, not lost
            return
        log.warning("nats disconnected", service=name)

    async def reconnected():
        log.info("nats reconnected", service=name)

    async def error(err):
        log.warning("nats error", service=name, error=str(err))

    await nc.connect(
        servers=[s.strip() for s in settings.nats_url.split(",")],
        name=f"threadbus-{name}",
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        disconnected_cb=disconnected,
        reconnected_cb=reconnected,
        error_cb=error,
        **credentials(settings),
    )
    return nc


async def close(nc: NATS, timeout: float = 5.0) -> None:
    """Drain (finish what is in flight), but never wait forever: with the broker gone, draining
    cannot complete, and a service told to stop must still exit."""
    try:
        await asyncio.wait_for(nc.drain(), timeout)
    except Exception:  # noqa: BLE001 - whatever the drain hit, closing is what is left to do
        await nc.close()


def credentials(settings: Settings) -> dict[str, Any]:
    """nats.connect's authentication and TLS options from the settings that are set."""
    options: dict[str, Any] = {}
    if settings.nats_creds:
        options["user_credentials"] = settings.nats_creds
    if settings.nats_user:
        options.update(user=settings.nats_user, password=settings.nats_password)
    if settings.nats_token:
        options["token"] = settings.nats_token
    if settings.nats_tls_ca or settings.nats_tls_cert:
        context = ssl.create_default_context(cafile=settings.nats_tls_ca)
        if settings.nats_tls_cert:
            context.load_cert_chain(settings.nats_tls_cert, settings.nats_tls_key)
        options["tls"] = context
    return options


def _stream(settings: Settings, name: str, prefix: str, **config) -> StreamConfig:
    """A file-backed stream of every subject under ``prefix``, replicated as the settings say."""
    return StreamConfig(
        name=name,
        subjects=[f"{prefix}.>"],
        storage=StorageType.FILE,
        num_replicas=settings.replicas,
        max_msg_size=settings.max_payload_mb * 1024 * 1024,
        **config,
    )


def thread_stream_config(settings: Settings) -> StreamConfig:
    return _stream(
        settings,
        subjects.THREAD_STREAM,
        subjects.PREFIX,
        subject_transform=SubjectTransform(*subjects.partition_transform()),
        duplicate_window=settings.duplicate_window_s,
        allow_direct=True,
        allow_rollup_hdrs=True,
        allow_atomic=True,
    )


# Long enough for a reconnect to resend what was buffered and for the broker to acknowledge it.
PUBLISH_ACK_TIMEOUT_S = 10.0


async def acknowledged(pending: list[asyncio.Future]) -> None:
    """Waits for the acknowledgements of ``publish_async`` publishes, at most
    PUBLISH_ACK_TIMEOUT_S: nats-py's publish futures never time out, and one the broker lost in a
    crash (published, never acknowledged) would hold its waiter forever. Past the bound:
    ``nats.errors.TimeoutError``, as for any publish the broker did not answer."""
    if not pending:
        return
    try:
        await asyncio.wait_for(asyncio.gather(*pending), PUBLISH_ACK_TIMEOUT_S)
    except TimeoutError:
        raise nats.errors.TimeoutError from None


async def ensure_stream(js, config: StreamConfig) -> None:
    try:
        await js.add_stream(config)
    except nats.js.errors.BadRequestError as err:
        if err.err_code != 10058:  # stream name already in use with a different configuration
            raise
        log.warning("stream config drifted, updating", stream=config.name)
        await js.update_stream(config)


def run_stream_config(settings: Settings) -> StreamConfig:
    return _stream(
        settings,
        subjects.RUN_STREAM,
        subjects.STREAM_PREFIX,
        max_age=settings.stream_max_age_s,
        duplicate_window=min(settings.duplicate_window_s, settings.stream_max_age_s),
        allow_direct=True,
    )


def thread_events_stream_config(settings: Settings) -> StreamConfig:
    """The v3 protocol's thread streams: kept as long as the run stream log (the same retention
    setting), direct gets for a thread's newest event."""
    return _stream(
        settings,
        subjects.THREAD_EVENTS_STREAM,
        subjects.THREAD_EVENTS_PREFIX,
        max_age=settings.stream_max_age_s,
        duplicate_window=min(settings.duplicate_window_s, settings.stream_max_age_s),
        allow_direct=True,
    )


def deadletter_stream_config(settings: Settings) -> StreamConfig:
    return _stream(settings, subjects.DEADLETTER_STREAM, subjects.DEADLETTER_PREFIX, max_age=settings.deadletter_max_age_s)


async def end_ordered(js, sub, stream: str) -> None:
    """Unsubscribes an ordered consumer and deletes it on the server at once. Left to the
    server, an ephemeral consumer lingers for seconds after its subscriber is gone; one per HTTP
    request then adds up past the stream's consumer limit under load (measured: 10026,
    "maximum consumers limit reached", at ~200 requests/s)."""
    with contextlib.suppress(Exception):
        await sub.unsubscribe()
    with contextlib.suppress(Exception):  # gone already, or the broker is away: it expires anyway
        await js.delete_consumer(stream, sub._consumer)  # nats-py keeps the name current across resets


async def kv_scan(kv, keys: str = ">", **watch) -> list:
    """The newest entry of every key matching ``keys`` (deleted ones left out), read in one pass
    of a watch whose consumer is deleted at once. nats-py's ``keys()`` and a stopped watcher leave
    theirs on the server for the watch's inactive threshold (5 minutes): a scan every second, or
    per request, piles them up by the hundred."""
    watcher = await kv.watch(keys, ignore_deletes=True, **watch)
    entries = []
    try:
        async for entry in watcher:
            if entry is None:  # the watcher's "caught up" marker
                break
            entries.append(entry)
    finally:
        await end_ordered(kv._js, watcher._sub, kv._stream)
    return entries


async def dead_letter(nc: NATS, service: str, msg, reason: str) -> None:
    """Keep a message that failed contract validation, with why, where an operator can look
    (``nats stream view TB_DEADLETTER``), instead of retrying it forever or dropping it unseen."""
    headers = {"Threadbus-Reason": reason[:1000], "Threadbus-Subject": msg.subject}
    if getattr(msg, "metadata", None) is not None:
        seq = msg.metadata.sequence.stream
        # A redelivered poison message is dead-lettered once.
        headers.update({"Threadbus-Sequence": str(seq), "Nats-Msg-Id": f"dead:{service}:{msg.subject}:{seq}"})
    await nc.jetstream().publish(subjects.dead_letter(service), msg.data or b"", headers=headers)
    log.warning("dead-lettered an invalid message", service=service, subject=msg.subject, reason=reason[:200])


async def bootstrap(nc: NATS, settings: Settings, patience_s: float = 60.0) -> None:
    """Creates what threadbus needs on the broker, idempotently. A cluster that is still
    electing its JetStream leader answers nothing for a few seconds: wait for it."""
    deadline = asyncio.get_running_loop().time() + patience_s
    while True:
        try:
            return await _bootstrap(nc, settings)
        except UNREACHABLE as err:
            if asyncio.get_running_loop().time() > deadline:
                raise
            log.info("broker not ready yet", error=repr(err))
            await asyncio.sleep(0.5)


class IncompatibleLog(RuntimeError):
    """The thread stream on the broker was written with another subject layout."""


async def _check_layout(js) -> None:
    try:
        info = await js.stream_info(subjects.THREAD_STREAM)
    except nats.js.errors.NotFoundError:
        return
    transform = info.config.subject_transform
    ours = subjects.partition_transform()
    if info.state.messages and (transform is None or (transform.src, transform.dest) != ours):
        # Updating the configuration would leave the stored threads where no reader looks.
        raise IncompatibleLog(
            f"stream {subjects.THREAD_STREAM} holds {info.state.messages} messages stored with another subject layout"
            f" (transform {transform and transform.dest!r}, expected {ours[1]!r}); it was written by an older"
            " threadbus: start on a new data directory, or delete the stream"
        )


def orchestrator_durable(partition: int) -> str:
    return f"{ORCHESTRATOR_CONSUMER}-p{partition}"


def orchestrator_consumer(partition: int, deliver_subject: str, start_seq: int) -> ConsumerConfig:
    """The consumer of one partition's control events, (re)created by whichever orchestrator
    holds the partition's lease, from the first event its predecessor did not acknowledge."""
    return ConsumerConfig(
        durable_name=orchestrator_durable(partition),
        filter_subject=subjects.all_control(partition),
        # Push, so that decisions are taken the moment an event lands; a subject of the owner's
        # own, so that a deposed owner still subscribed hears nothing.
        deliver_subject=deliver_subject,
        flow_control=True,
        idle_heartbeat=5,
        # Cumulative: the holder acks the newest event below which all are handled, now and then
        # (services/orchestrator/acks.py), not each of them.
        ack_policy=AckPolicy.ALL,
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE if start_seq > 1 else DeliverPolicy.ALL,
        opt_start_seq=start_seq if start_seq > 1 else None,
        ack_wait=30,
        max_ack_pending=20_000,
    )


def webhooks_consumer(start_seq: int | None = None) -> ConsumerConfig:
    """The consumer of run outcomes that every gateway's webhook sender shares.

    Push to a deliver group: each outcome goes to one subscribed gateway, and costs a delivery and
    an ack, no fetch requests (a pull consumer costs a request and an end-of-batch status per
    batch, and a request and a timeout every idle second). No idle heartbeats: they would cost a
    message every few seconds while idle, and one member of the group hearing them tells the
    others nothing; after a broker restart the client subscribes again by itself and the durable
    consumer goes on. ``start_seq`` is the first outcome to deliver; None: those stored from now on.
    """
    return ConsumerConfig(
        durable_name=WEBHOOKS_CONSUMER,
        filter_subjects=[subjects.outcome_any(name) for name in ("RunSucceeded", "RunFailed", "RunInterrupted", "RunStopped")],
        deliver_subject="_TB.deliver.webhooks",
        deliver_group=WEBHOOKS_CONSUMER,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE if start_seq else DeliverPolicy.NEW,
        opt_start_seq=start_seq,
        ack_wait=60,
        max_deliver=-1,
        # The backpressure, shared by all gateways: ack_wait runs from the delivery, so as many as
        # this must be answered within it. Each sender calls them all at once, over an HTTP pool of
        # 100 connections with a 10 s timeout: 256 receivers that time out take ~30 s.
        max_ack_pending=256,
    )


async def _ensure_webhooks_consumer(js) -> None:
    """Creates (or updates) the webhook senders' consumer and deletes the pull consumer it
    replaced, after it: an outcome that one had not acknowledged is delivered again, none is
    skipped. Where a consumer starts cannot be updated, so an existing one keeps its start; two
    services bootstrapping at once may both try to create it, and the second keeps the first's."""
    for attempt in (1, 2):
        try:
            existing = await js.consumer_info(subjects.THREAD_STREAM, WEBHOOKS_CONSUMER)
            start_seq = existing.config.opt_start_seq
        except nats.js.errors.NotFoundError:
            start_seq = await _pull_webhooks_resume_seq(js)
        try:
            await js.add_consumer(subjects.THREAD_STREAM, webhooks_consumer(start_seq))
            break
        except nats.js.errors.APIError:  # created meanwhile from another start, which cannot change
            if attempt == 2:
                raise
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await js.delete_consumer(subjects.THREAD_STREAM, _PULL_WEBHOOKS_CONSUMER)
        log.info("replaced the webhooks pull consumer", consumer=WEBHOOKS_CONSUMER, start_seq=start_seq)


async def _pull_webhooks_resume_seq(js) -> int | None:
    """The first outcome the old pull consumer had not acknowledged (its ack floor + 1), or
    None without one. Outcomes above the floor already acknowledged are delivered again (a
    webhook may be called twice, as after any redelivery)."""
    try:
        old = await js.consumer_info(subjects.THREAD_STREAM, _PULL_WEBHOOKS_CONSUMER)
    except nats.js.errors.NotFoundError:
        return None
    return old.ack_floor.stream_seq + 1


async def _bootstrap(nc: NATS, settings: Settings) -> None:
    js = nc.jetstream()
    await _check_layout(js)
    await ensure_stream(js, thread_stream_config(settings))
    await ensure_stream(js, run_stream_config(settings))
    await ensure_stream(js, thread_events_stream_config(settings))
    await ensure_stream(js, deadletter_stream_config(settings))
    consumers = [
        ConsumerConfig(
            durable_name=EXECUTOR_CONSUMER,
            filter_subject=subjects.started_any(),
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=settings.executor_ack_wait_s,
            max_deliver=-1,
            max_ack_pending=10_000,
        ),
    ]
    for cfg in consumers:
        await js.add_consumer(subjects.THREAD_STREAM, cfg)
    await _ensure_webhooks_consumer(js)
    buckets = [
        KeyValueConfig(bucket=bucket, history=16, storage=StorageType.FILE, replicas=settings.replicas)
        for bucket in (THREADS_BUCKET, ASSISTANTS_BUCKET, ASSISTANT_VERSIONS_BUCKET, STORE_BUCKET, CRONS_BUCKET)
    ]
    # Partition leases and orchestrator presence: an entry not renewed within the lease expires.
    buckets.append(
        KeyValueConfig(
            bucket=LEASES_BUCKET, history=1, ttl=settings.orchestrator_lease_s, storage=StorageType.FILE, replicas=settings.replicas
        )
    )
    # The orchestrator's thread snapshots: only the newest matters.
    buckets.append(KeyValueConfig(bucket=SNAPSHOTS_BUCKET, history=1, storage=StorageType.FILE, replicas=settings.replicas))
    for config in buckets:
        try:
            await js.key_value(config.bucket)
        except nats.js.errors.BucketNotFoundError:
            await js.create_key_value(config)
