"""Typed FastStream subscribers for the thread log's events.

:class:`ThreadEvents` is a FastStream ``NatsRouter`` whose :meth:`~ThreadEvents.on` subscribes a
handler to the events of the given types in every thread, from a durable pull consumer on the
``TB_THREADS`` stream:

- the subjects are the stored ones of :mod:`contracts.subjects` (with the partition token), so
  a handler sees what the log holds, never a publish the stream refused;
- the stream is declared with ``JStream(..., declare=False)``: FastStream's default rewrites
  an existing stream's configuration and drops what the log relies on (``DESIGN.md`` §6);
- one message at a time (``PullSub(batch_size=1)``): FastStream runs a batch's handlers
  concurrently, which would break the log's order;
- a handler that raises gets its message redelivered (``NACK_ON_ERROR``), it is not dropped;
- the handler's argument is decoded by :func:`contracts.decode`, as the services decode it, into
  the event's Struct; annotate it with :data:`AnyThreadEvent` to take every type. A message that
  is not a contract event is dead-lettered (``TB_DEADLETTER``, under the durable's name) and
  acknowledged, not redelivered forever.

:func:`connect` makes the FastStream broker from threadbus's settings (servers, credentials,
TLS) with its service lines on structlog; :func:`surface` is the router the integration AsyncAPI
document is generated from (``python -m contracts.export``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated, Any, get_args

import msgspec
from faststream import AckPolicy
from faststream.exceptions import AckMessage
from faststream.nats import JStream, NatsBroker, NatsRouter, PullSub
from pydantic import PlainValidator, WithJsonSchema

import contracts
from contracts import export, subjects
from contracts.export import inline_schema
from threadbus import broker, logs
from threadbus.settings import Settings

THREAD_LOG = JStream(subjects.THREAD_STREAM, declare=False)
CONTROL_EVENTS: tuple[type, ...] = get_args(contracts.ControlEvent)


def _decode_any(value: Any) -> contracts.Event:
    if isinstance(value, contracts.Event):
        return value
    try:
        return msgspec.convert(value, contracts.ControlEvent, strict=False)
    except msgspec.ValidationError as err:
        raise ValueError(str(err)) from None


AnyThreadEvent = Annotated[
    contracts.ControlEvent,
    PlainValidator(_decode_any),
    WithJsonSchema({"oneOf": [inline_schema(t) for t in CONTROL_EVENTS]}),
]
"""The annotation of a handler that takes every control event (``ThreadEvents.on()`` with no type)."""


class ThreadEvents(NatsRouter):
    def on(self, event_type: type | None = None, *, durable: str, **options: Any) -> Callable:
        """Subscribe the decorated handler to the events of ``event_type`` (every control event
        when None) from the durable consumer ``durable``, which is created on the broker if it does
        not exist and otherwise resumes where it stopped. ``options`` go to FastStream's
        ``subscriber`` (``deliver_policy``, ``config``, ``title``, ``dependencies``, ...)."""
        subject = subjects.all_control() if event_type is None else subjects.event_any(event_type.__name__)
        return self.subscriber(
            subject,
            stream=THREAD_LOG,
            durable=durable,
            pull_sub=PullSub(batch_size=1),
            ack_policy=AckPolicy.NACK_ON_ERROR,
            decoder=_decoder(durable),
            **options,
        )


def _decoder(service: str):
    """Decodes a message as the services do (:func:`contracts.decode`). One that is not a
    contract event is dead-lettered under ``service`` and acknowledged: redelivered, it would
    fail again, forever."""

    async def decode(message) -> contracts.Event:
        try:
            return contracts.decode(message.body)
        except msgspec.DecodeError as err:
            raw = message.raw_message
            await broker.dead_letter(raw._client, service, raw, str(err))  # nats-py keeps the connection there
            raise AckMessage from None

    return decode


class _StructlogForFastStream:
    """FastStream's own lines as structlog events: its notes ("Received", "Processed", "callback
    ... is being executed") at debug level, its warnings and handler errors as they are."""

    def __init__(self) -> None:
        self._logger = logs.get("faststream")

    def log(self, level: int, msg: str, *args: Any, extra: dict | None = None, exc_info: Any = None, **kw: Any) -> None:
        level = level if level >= logging.WARNING else logging.DEBUG
        fields = {k: v for k, v in (extra or {}).items() if v}
        if exc_info:
            fields["exc_info"] = exc_info
        self._logger.log(level, msg.strip(), **fields)

    def __getattr__(self, level: str):  # .info(...), .error(...), as on a logging.Logger
        number = logging.getLevelNamesMapping().get(level.upper())
        if number is None:
            raise AttributeError(level)
        return lambda msg, *args, **kw: self.log(number, msg, *args, **kw)


def connect(settings: Settings | None = None, **options: Any) -> NatsBroker:
    """A FastStream broker on threadbus's NATS (``NATS_URL``, credentials and TLS settings), logging
    through structlog like the services."""
    settings = settings or Settings()
    return NatsBroker(
        servers=[s.strip() for s in settings.nats_url.split(",")],
        logger=_StructlogForFastStream(),
        log_level=logging.DEBUG,
        **broker.credentials(settings),
        **options,
    )


def surface() -> ThreadEvents:
    """Every event an integration can subscribe to, and the request it can publish: the router
    the integration AsyncAPI document (``contracts/integrations.asyncapi.json``) describes."""
    router = ThreadEvents()
    for event_type in CONTROL_EVENTS:
        name = event_type.__name__

        async def handler(event) -> None:  # described, never run
            pass

        handler.__annotations__ = {"event": event_type, "return": None}
        handler.__name__ = handler.__qualname__ = name
        router.on(event_type, durable=f"your-service-{subjects.EVENT_TOKENS[name]}", title=name, description=_summary(event_type))(
            handler
        )
    router.publisher(
        export.subject_of("RunRequested").replace("<", "{").replace(">", "}"),
        stream=THREAD_LOG,
        schema=contracts.RunRequested,
        title="RequestRun",
        description="Ask for a run: Requester.run/resume, or publish it yourself (docs/contracts.md).",
    )
    return router


def _summary(event_type: type) -> str:
    doc = " ".join((event_type.__doc__ or "").split())
    return f"{event_type.__name__}: {doc}" if doc else event_type.__name__
