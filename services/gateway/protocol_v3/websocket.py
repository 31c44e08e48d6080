"""The WebSocket on ``/threads/{thread_id}/stream/events``.

Every inbound text frame is a command (the envelope of ``POST /commands``; the reply carries the
same ``id``). ``subscription.subscribe`` / ``reconnect`` add a filtered follower of the thread's
events, ``subscription.unsubscribe`` removes one; every other command acts on the thread as over
HTTP. Events go out as the JSON of an SSE ``data:``, each at most once per socket however many
subscriptions match it. A frame that is not a JSON object gets an error envelope and the socket is
closed (4400, which the SDK does not retry); a failure of the server closes it with 1011.

A subscription's reply counts the events it replays (those stored when it was made), and is sent
before them; live events follow in order.
"""

from __future__ import annotations

import asyncio
import contextlib
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import orjson
import structlog
from fastapi import APIRouter, HTTPException, WebSocket, WebSocketDisconnect

from services.gateway import streams
from services.gateway.protocol_v3 import events, filters
from services.gateway.protocol_v3.access import check_readable
from services.gateway.protocol_v3.commands import CommandError, Commands, envelope, error, success
from threadbus import logs

log = logs.get("threadbus.gateway.protocol_v3")
router = APIRouter()

CLOSE_BAD_FRAME = 4400  # 4000 + HTTP status, the SDK's convention for a refusal not worth retrying
CLOSE_SERVER_ERROR = 1011
# A replay waits at most this long for the events it knows are stored.
_REPLAY_TIMEOUT_S = 10.0


@dataclass
class _Subscription:
    wanted: filters.Filter
    stack: AsyncExitStack
    task: asyncio.Task | None = None


@dataclass
class _Socket:
    websocket: WebSocket
    backend: object
    thread_id: str
    subscriptions: dict[str, _Subscription] = field(default_factory=dict)
    sent: set[int] = field(default_factory=set)  # seqs already written to this socket
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    next_id: int = 1

    async def send(self, payload: bytes) -> None:
        async with self.lock:
            await self.websocket.send_text(payload.decode())

    async def serve(self) -> None:
        commands = Commands(self.backend)
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text") if message.get("text") is not None else message.get("bytes")
            try:
                raw = orjson.loads(text or b"")
            except orjson.JSONDecodeError:
                raw = None
            if not isinstance(raw, dict):
                await self.send(orjson.dumps(error(None, "invalid_argument", "a frame must be a JSON command object")))
                await self.websocket.close(CLOSE_BAD_FRAME, "invalid frame")
                return
            try:
                command_id, method, params = envelope(raw)
            except CommandError as err:
                await self.send(orjson.dumps(error(None, err.code, err.message)))
                continue
            if method in ("subscription.subscribe", "subscription.reconnect", "subscription.unsubscribe"):
                reply = await self.subscription_command(command_id, method, params)
                if reply is not None:
                    await self.send(orjson.dumps(reply))
            else:
                await self.send(orjson.dumps(await commands.execute(self.thread_id, command_id, method, params)))

    async def subscription_command(self, command_id: int, method: str, params) -> dict | None:
        if not isinstance(params, dict):
            return error(command_id, "invalid_argument", "params must be a JSON object")
        if method == "subscription.unsubscribe":
            subscription = self.subscriptions.pop(str(params.get("subscription_id")), None)
            if subscription is None:
                return error(command_id, "no_such_subscription", f"no subscription {params.get('subscription_id')!r}")
            await _end(subscription)
            return success(command_id, {})
        try:
            wanted = filters.parse(params)
            since = filters.parse_since(params, required=method == "subscription.reconnect")
            await events.check_retained(self.backend.js, self.thread_id, since or 0)
        except filters.InvalidFilter as err:
            return error(command_id, "invalid_argument", str(err))
        except events.ResumeGap as gap:
            return error(command_id, "resume_gap", str(gap), min_available_seq=gap.min_available_seq)
        await self.subscribe(command_id, method, wanted, since)
        return None  # the reply is sent before the replayed events

    async def subscribe(self, command_id: int, method: str, wanted: filters.Filter, since: int | None) -> None:
        subscription_id = f"sub-{self.next_id}"
        self.next_id += 1
        subscription = _Subscription(wanted, AsyncExitStack())
        queue = await events.follow(self.backend.js, self.thread_id, since, subscription.stack)
        # Stored when the consumer already existed: everything up to it is the replay, nothing is
        # between the replay and the live events.
        newest = await events.last_seq(self.backend.js, self.thread_id)
        replay: list[events.StoredEvent] = []
        async with asyncio.timeout(_REPLAY_TIMEOUT_S):
            while newest > (since or 0) and (not replay or replay[-1].seq < newest):
                replay.append(await queue.get())
        fresh = self._fresh(wanted, replay)
        result = {"subscription_id": subscription_id, "replayed_events": len(fresh)}
        if method == "subscription.reconnect":
            result.update(restored=True, missed_events=len(fresh))
        await self.send(orjson.dumps(success(command_id, result, newest)))
        for event in fresh:
            await self.send(event.wire())
        self.subscriptions[subscription_id] = subscription
        subscription.task = asyncio.create_task(self._pump(wanted, queue))

    def _fresh(self, wanted: filters.Filter, batch: list[events.StoredEvent]) -> list[events.StoredEvent]:
        fresh = []
        for event in batch:
            if event.seq not in self.sent and wanted.matches(event.method, event.namespace, event.custom_name):
                self.sent.add(event.seq)
                fresh.append(event)
        return fresh

    async def _pump(self, wanted: filters.Filter, queue: asyncio.Queue) -> None:
        try:
            while True:
                batch = events.drain(queue, await queue.get())
                for event in self._fresh(wanted, batch):
                    await self.send(event.wire())
        except (WebSocketDisconnect, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("thread stream socket failed")
            with contextlib.suppress(Exception):
                await self.websocket.close(CLOSE_SERVER_ERROR)

    async def close(self) -> None:
        subscriptions, self.subscriptions = list(self.subscriptions.values()), {}
        for subscription in subscriptions:
            await _end(subscription)


async def _end(subscription: _Subscription) -> None:
    if subscription.task is not None:
        subscription.task.cancel()
        with contextlib.suppress(BaseException):
            await subscription.task
    await streams.release(subscription.stack)


@router.websocket("/threads/{thread_id}/stream/events")
async def thread_socket(websocket: WebSocket, thread_id: str) -> None:
    backend = websocket.app.state.backend
    with structlog.contextvars.bound_contextvars(thread_id=thread_id):
        try:
            await websocket.app.state.authenticator(websocket)
            await check_readable(backend, thread_id)
        except HTTPException as err:
            # A browser cannot read the status of a refused upgrade: accept, then close with 4000 + status.
            await websocket.accept()
            await websocket.close(4000 + err.status_code, str(err.detail)[:120])
            return
        await websocket.accept()
        socket = _Socket(websocket, backend, thread_id)
        try:
            await socket.serve()
        except WebSocketDisconnect:
            pass
        except Exception:
            log.exception("thread stream socket failed")
            with contextlib.suppress(Exception):
                await websocket.close(CLOSE_SERVER_ERROR)
        finally:
            await socket.close()
