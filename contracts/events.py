"""Events of a thread's log.

Every event is a msgspec Struct encoded as JSON with a ``type`` tag and a ``v`` version field.
A consumer must ignore fields it does not know; a producer bumps ``v`` only for a change that
an old consumer would misread.

Who writes what:
- gateway: ``RunRequested``, ``RunCancelRequested``, ``ThreadCreated``/``ThreadUpdated``/``ThreadDeleted``
  (any other service may write these too: they are the commands of the system);
- orchestrator: ``RunAccepted``, ``RunRejected``, ``RunStarted``, ``RunCancelled``, ``RunRolledBack``;
- executor: ``RunStopped``, ``RunSucceeded``, ``RunFailed``, ``RunInterrupted``, and the
  checkpoint records ``CheckpointSaved``/``WritesSaved``.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal, Union

import msgspec

__all__ = [
    "RUN_TIMEOUT",
    "INLINE_VALUES_MAX_BYTES",
    "INLINE_REQUEST_MAX_BYTES",
    "Event",
    "RunKwargs",
    "RunRequested",
    "RunCancelRequested",
    "RunAccepted",
    "RunRejected",
    "RunStarted",
    "RunCancelled",
    "RunStopped",
    "RunSucceeded",
    "RunFailed",
    "RunInterrupted",
    "RunRolledBack",
    "RunDeleted",
    "ThreadCreated",
    "ThreadUpdated",
    "ThreadDeleted",
    "TypedBlob",
    "CheckpointSaved",
    "CheckpointPointer",
    "WritesSaved",
    "PendingWrite",
    "ControlEvent",
    "StreamChunk",
    "ThreadStreamEvent",
    "ThreadStreamParams",
    "MultitaskStrategy",
    "CancelAction",
    "RejectReason",
    "TERMINAL_EVENTS",
    "encode",
    "decode",
    "now",
]

MultitaskStrategy = Literal["reject", "enqueue", "interrupt", "rollback"]
CancelAction = Literal["interrupt", "rollback"]
# busy: reject strategy and the thread has an in-flight run; paused: new input on a thread paused
# in a human-in-the-loop interrupt while the policy refuses it; not_paused: a resume Command for a
# thread that has no pause to resume; unknown_assistant, unknown_thread: the request names an
# assistant or a thread that does not exist (a request published on the bus, not checked by a gateway).
RejectReason = Literal["busy", "paused", "not_paused", "unknown_assistant", "unknown_thread"]


def now() -> datetime:
    return datetime.now(timezone.utc)


class Event(msgspec.Struct, kw_only=True, tag_field="type"):
    v: int = 1
    thread_id: str
    at: datetime = msgspec.field(default_factory=now)

    # For pydantic (FastStream validates handler arguments with it and generates AsyncAPI from
    # it): decoded by msgspec, as the services decode, and described by the event's published JSON
    # Schema, inlined, so that a generated document says what contracts/schema/ says.
    @classmethod
    def __get_pydantic_core_schema__(cls, source, handler):
        from pydantic_core import core_schema

        def validate(value):
            if isinstance(value, cls):
                return value
            try:
                return msgspec.convert(value, cls, strict=False)
            except msgspec.ValidationError as err:
                raise ValueError(str(err)) from None

        return core_schema.no_info_plain_validator_function(validate)

    @classmethod
    def __get_pydantic_json_schema__(cls, schema, handler):
        from contracts.export import inline_schema

        return inline_schema(cls)


class RunKwargs(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What a run was asked to do; stored as the run's ``kwargs`` as LangGraph Platform shows it."""

    input: Any = None
    command: dict[str, Any] | None = None
    config: dict[str, Any] = msgspec.field(default_factory=dict)
    context: dict[str, Any] = msgspec.field(default_factory=dict)
    stream_mode: list[str] = msgspec.field(default_factory=lambda: ["values"])
    interrupt_before: list[str] | Literal["*"] | None = None
    interrupt_after: list[str] | Literal["*"] | None = None
    checkpoint_id: str | None = None
    checkpoint: dict[str, Any] | None = None
    webhook: str | None = None
    subgraphs: bool = False
    resumable: bool = False
    temporary: bool = False
    # LangGraph's checkpointing of the run, when the client chose it: "exit" writes one checkpoint
    # at the end instead of one per step (fewer appends; a crash restarts the run from its input,
    # and an interrupted run keeps nothing). Unset: LangGraph's default, "async".
    durability: Literal["sync", "async", "exit"] | None = None
    # Started by the v3 thread protocol (``run.start``/``input.respond``): the run streams the
    # protocol's events on the thread stream instead of SSE chunks on the run stream.
    thread_stream: bool = False


class RunRequested(Event, tag=True, kw_only=True):
    run_id: str
    assistant_id: str
    graph_id: str
    multitask_strategy: MultitaskStrategy = "enqueue"
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    kwargs: RunKwargs = msgspec.field(default_factory=RunKwargs)
    # The publisher checked, just before publishing, that the assistant and the thread exist (the
    # gateway does, to answer 404 at once): the orchestrator does not ask again. A publisher that
    # did not check leaves it False and has a missing record answered with a RunRejected.
    admitted: bool = False

    @property
    def resumes(self) -> bool:
        """True when the run carries a Command that resumes a human-in-the-loop pause."""
        return bool(self.kwargs.command) and "resume" in self.kwargs.command


class RunCancelRequested(Event, tag=True, kw_only=True):
    run_id: str
    action: CancelAction = "interrupt"


class RunAccepted(Event, tag=True, kw_only=True):
    run_id: str


class RunRejected(Event, tag=True, kw_only=True):
    run_id: str
    reason: RejectReason
    detail: str


INLINE_REQUEST_MAX_BYTES = 8192
"""The largest encoded ``RunRequested`` a ``RunStarted`` carries itself."""


class RunStarted(Event, tag=True, kw_only=True):
    run_id: str
    # The run's request, when its decider had it at hand and it encodes to at most
    # INLINE_REQUEST_MAX_BYTES: its executor then need not read it. None: read it from the log.
    request: RunRequested | None = None


class RunCancelled(Event, tag=True, kw_only=True):
    """The orchestrator's decision to stop a run. A pending run ends here; a running one ends
    when its executor confirms with ``RunStopped``."""

    run_id: str
    action: CancelAction
    # True: the run had not started, and this ends it; False: it was running, and ends when its
    # executor confirms with RunStopped. None: not told (an event written before it was).
    pending: bool | None = None


# On an outcome, ``webhook`` tells the webhook sender whether the run's request named a webhook,
# so that it reads the request only for those runs; None (an outcome written before it was told,
# or by a writer that does not know) means "read the request to find out".


class RunStopped(Event, tag=True, kw_only=True):
    run_id: str
    webhook: bool | None = None


class RunSucceeded(Event, tag=True, kw_only=True):
    """The run ended; its result is the state in checkpoint ``checkpoint_id``, the thread's newest
    checkpoint (root namespace) when the run ended."""

    run_id: str
    checkpoint_id: str | None = None
    # The state values in that checkpoint, when they encode to at most INLINE_VALUES_MAX_BYTES
    # of JSON; None: read them from the checkpoint.
    values: Any = None
    webhook: bool | None = None


INLINE_VALUES_MAX_BYTES = 8192
"""The largest final state an outcome carries itself (``RunSucceeded.values``)."""

RUN_TIMEOUT = "RunTimeout"
"""``RunFailed.error`` of a run stopped because it ran longer than the deployment allows."""


class RunFailed(Event, tag=True, kw_only=True):
    run_id: str
    error: str
    message: str
    values: Any = None
    webhook: bool | None = None


class RunInterrupted(Event, tag=True, kw_only=True):
    """The graph paused for a human (``interrupt()`` or ``interrupt_before/after``). The run itself
    ended ``success``; the thread is ``interrupted`` until a run resumes it."""

    run_id: str
    checkpoint_id: str | None = None  # the paused state, as in RunSucceeded
    values: Any = None  # written by threadbus before outcomes named their checkpoint; read, never written
    interrupts: dict[str, list[dict[str, Any]]] = msgspec.field(default_factory=dict)
    webhook: bool | None = None


class RunRolledBack(Event, tag=True, kw_only=True):
    """Tombstone: the run and its checkpoints were compacted out of the log."""

    run_id: str


class RunDeleted(Event, tag=True, kw_only=True):
    """A finished run was deleted (``DELETE /threads/{t}/runs/{r}``): it is no longer listed. Its
    events stay in the log and its checkpoints in the thread's history."""

    run_id: str


class ThreadCreated(Event, tag=True, kw_only=True):
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)


class ThreadUpdated(Event, tag=True, kw_only=True):
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)


class ThreadDeleted(Event, tag=True, kw_only=True):
    pass


class TypedBlob(msgspec.Struct, array_like=True):
    """A value serialised by LangGraph's serializer: its type name and bytes."""

    type: str
    data: bytes


class CheckpointSaved(Event, tag=True, kw_only=True):
    run_id: str
    checkpoint_ns: str
    checkpoint_id: str
    parent_checkpoint_id: str | None = None
    checkpoint: TypedBlob
    metadata: TypedBlob


class CheckpointPointer(Event, tag=True, kw_only=True):
    """Which run's subject holds a checkpoint, so that readers get it by a literal subject. Stored
    twice per checkpoint: as the checkpoint's ref and as its namespace's head (the newest
    checkpoint of the namespace). A pointer whose checkpoint is gone (rolled back) means nothing."""

    run_id: str
    checkpoint_ns: str
    checkpoint_id: str
    # A stream sequence the checkpoint's pending writes all come after (the writing run's
    # RunStarted), so that a reader fetches them without looking that up first; 0: unknown.
    writes_after: int = 0


class PendingWrite(msgspec.Struct, array_like=True):
    idx: int
    channel: str
    value: TypedBlob


class WritesSaved(Event, tag=True, kw_only=True):
    """One ``put_writes`` call: the writes a task made against a checkpoint. Readers apply them
    in log order: for ``idx >= 0`` the first write of a (task, idx) wins, for the special negative
    indexes (error, interrupt, resume, ...) the last one does, as LangGraph's savers do."""

    run_id: str
    checkpoint_ns: str
    checkpoint_id: str
    task_id: str
    task_path: str = ""
    writes: list[PendingWrite]


class StreamChunk(msgspec.Struct, kw_only=True):
    """One server-sent event of a run, in the run's stream log (``tb.stream.<thread>.<run>``).
    ``event`` is the SSE event name (``values``, ``updates``, ``messages``, ``custom``, ...,
    ``mode|ns`` for subgraphs); ``data`` its JSON payload."""

    event: str
    data: Any = None


class ThreadStreamParams(msgspec.Struct, kw_only=True):
    namespace: list[str] = msgspec.field(default_factory=list)
    timestamp: int  # wall-clock milliseconds since the epoch
    data: Any = None


class ThreadStreamEvent(msgspec.Struct, kw_only=True):
    """One event of the v3 thread protocol, in the thread's stream (``tb.events.<thread>``), as
    clients receive it minus ``type``, ``seq`` and ``event_id``, which readers add: the event's
    stream sequence is both. ``method`` is ``values``, ``messages``, ``tools``, ``lifecycle``,
    ``input.requested``, ``updates``, ``custom``, ``checkpoints`` or ``tasks``."""

    method: str
    params: ThreadStreamParams


ControlEvent = Union[
    RunRequested,
    RunCancelRequested,
    RunAccepted,
    RunRejected,
    RunStarted,
    RunCancelled,
    RunStopped,
    RunSucceeded,
    RunFailed,
    RunInterrupted,
    RunRolledBack,
    RunDeleted,
    ThreadCreated,
    ThreadUpdated,
    ThreadDeleted,
]
AnyEvent = Union[ControlEvent, CheckpointSaved, WritesSaved, CheckpointPointer]

TERMINAL_EVENTS = (RunStopped, RunSucceeded, RunFailed, RunInterrupted, RunRolledBack)

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(AnyEvent)


def encode(event: msgspec.Struct) -> bytes:
    return _encoder.encode(event)


def decode(data: bytes) -> AnyEvent:
    return _decoder.decode(data)
