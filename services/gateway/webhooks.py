"""Webhooks: a run with ``webhook`` gets its result POSTed there once it ends.

Driven by the log, not by the request that created the run: gateways share the durable push
consumer ``webhook-senders`` on run outcomes (``broker.webhooks_consumer``), subscribed as one
deliver group, so each outcome goes to one gateway whichever took the request, and the call is
still made after any process restarts (an outcome not acknowledged is delivered again). An
outcome that says its run has no webhook costs its delivery and an ack, nothing else. A failed
call (a connection error or a non-2xx answer) is retried with a growing delay (a nak with that
delay), ``THREADBUS_WEBHOOK_ATTEMPTS`` times in all; then it is given up with an error in the
log, not retried forever.

The body is the run as ``GET /threads/{t}/runs/{r}`` shows it, plus ``values`` (what ``wait``
returns: the final values, ``__interrupt__`` or ``__error__``) and ``webhook_sent_at``.
"""

from __future__ import annotations

import asyncio

import httpx
import msgspec
import structlog

import contracts
from contracts import subjects
from services.gateway import views
from threadbus import broker, logs
from threadbus.jsonable import jsonable

log = logs.get("threadbus.gateway.webhooks")

# How long a stopping sender lets the calls in hand finish (a call's own timeout is 10 s).
STOP_GRACE_S = 5.0


class WebhookSender:
    def __init__(self, backend):
        self.backend = backend
        self.attempts = backend.settings.webhook_attempts
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(10.0))

    async def run(self, stop: asyncio.Event) -> None:
        handling: set[asyncio.Task] = set()

        async def delivered(msg) -> None:
            # Handled side by side, not one after another: one slow receiver must not hold up the
            # calls behind it. How many are in hand at once is the consumer's max_ack_pending.
            task = asyncio.create_task(self._handle_or_leave(msg))
            handling.add(task)
            task.add_done_callback(handling.discard)

        sub = await self.backend.js.subscribe_bind(
            stream=subjects.THREAD_STREAM,
            config=broker.webhooks_consumer(),
            consumer=broker.WEBHOOKS_CONSUMER,
            cb=delivered,
            manual_ack=True,
        )
        try:
            await stop.wait()
        finally:
            # Left subscribed, its queue would hold the connection's drain forever. Unsubscribed
            # first, so that nothing new arrives while the calls in hand finish; one not finished
            # in time is not acknowledged, and the broker delivers it again (to another gateway).
            await sub.unsubscribe()
            if handling:
                _, unfinished = await asyncio.wait(handling, timeout=STOP_GRACE_S)
                for task in unfinished:
                    task.cancel()
                await asyncio.gather(*unfinished, return_exceptions=True)
            await self.http.aclose()

    async def _handle_or_leave(self, msg) -> None:
        try:
            await self._handle(msg)
        except broker.UNREACHABLE as err:
            # Not acknowledged: the broker delivers it again after the consumer's ack_wait.
            log.warning("webhook outcome left for redelivery", error=repr(err))
        except Exception:  # the same; the sender goes on with the other outcomes
            log.exception("webhook outcome left for redelivery")

    async def _handle(self, msg) -> None:
        try:
            outcome = contracts.decode(msg.data)
        except Exception:  # noqa: BLE001 - not ours to judge here: the orchestrator dead-letters it
            await msg.ack()
            return
        thread_id, run_id = outcome.thread_id, outcome.run_id
        with structlog.contextvars.bound_contextvars(thread_id=thread_id, run_id=run_id):
            if getattr(outcome, "webhook", None) is False:  # its executor knew the request
                await msg.ack()
                return
            # Not told: one literal get of the request tells, whatever the thread's length; the
            # run's other events are read only for a run that has one.
            requested = await self.backend.log.last(subjects.run_event(thread_id, run_id, "RunRequested"))
            if requested is None or not _webhook_of(requested):
                await msg.ack()
                return
            view = await views.run_view(
                self.backend.log, thread_id, run_id, after=requested.seq - 1, seen=(msg.metadata.sequence.stream, outcome)
            )
            if view is None:  # deleted or rolled back since it ended
                await msg.ack()
                return
            record, status = view
            url = record.requested.kwargs.webhook
            body = {
                **views.run_object(record, status),
                "values": await self.backend.runs.result_values(thread_id, outcome, record.requested.graph_id),
                "webhook_sent_at": contracts.now().isoformat(),
            }
            attempt = msg.metadata.num_delivered
            try:
                response = await self.http.post(url, json=jsonable(body))
                response.raise_for_status()
            except httpx.HTTPError as err:
                if attempt < self.attempts:
                    log.warning("webhook failed, will retry", url=url, attempt=attempt, error=str(err))
                    await msg.nak(delay=min(2.0 ** (attempt - 1), 60.0))
                    return
                log.error("webhook failed, giving up", url=url, attempts=attempt, error=str(err))
            else:
                log.info("webhook sent", url=url, attempt=attempt)
            if record.requested.kwargs.temporary:
                # A stateless run's thread was kept for this call (the executor leaves it).
                await self.backend.log.delete_thread(thread_id)
            await msg.ack()


def _webhook_of(entry) -> str | None:
    try:
        event = entry.event()
    except msgspec.DecodeError:
        return None
    return event.kwargs.webhook if isinstance(event, contracts.RunRequested) else None
