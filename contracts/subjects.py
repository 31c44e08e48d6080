"""Subjects and streams of threadbus, and the only code that builds subject strings.

Thread log (stream ``TB_THREADS``). Events are published on these subjects::

    tb.thread.<thread>.run.<run>.<event>              control events of one run
    tb.thread.<thread>.meta.thread.<event>            control events of the thread itself
    tb.thread.<thread>.run.<run>.ckpt.<ns>.<id>       a checkpoint written by that run
    tb.thread.<thread>.run.<run>.write.<ns>.<id>.<task>   pending writes of one task
    tb.thread.<thread>.head.<ns>                      which run wrote the namespace's newest checkpoint
    tb.thread.<thread>.index.ckpt.<ns>.<id>           which run wrote that checkpoint

and the stream stores each with the thread's partition inserted after the thread token
(``tb.thread.<thread>.<partition>.run.<run>.<event>``): a subject transform in the stream
configuration, ``{{partition(PARTITIONS,1)}}`` over the thread token, so the same thread always
lands in the same partition and one orchestrator consumer per partition sees exactly its threads.
Publishers never compute a partition; readers match it with ``*``.

The last two are the checkpointer's pointers (small, rewritten with every checkpoint): they make
"the newest checkpoint" and "checkpoint <id>" a get of a literal subject, whose cost does not grow
with the thread's history as a wildcard over every run's subjects does.

Stored control events have seven tokens and checkpoint records and pointers other counts, so ``tb.thread.<t>.*.*.*.*``
selects exactly a thread's control events and ``tb.thread.<t>.*.run.<r>.*`` one run's. Rolling a
run back purges ``tb.thread.<t>.*.run.<r>.>``; deleting a thread purges ``tb.thread.<t>.>``.

The filters below match stored subjects; the parsers (:func:`thread_of`, :func:`run_of`) take
either form.

Run stream log (stream ``TB_RUNSTREAM``, expiring after a configurable age)::

    tb.stream.<thread>.<run>                          the run's SSE events, in order

Thread event stream (stream ``TB_THREADEVENTS``, the v3 protocol's events, expiring like the run
stream log)::

    tb.events.<thread>                                every run's protocol events, in order

Dead letters (stream ``TB_DEADLETTER``)::

    tb.deadletter.<service>                           a message that failed contract validation,
                                                      as it was, with the reason in headers

Tokens are encoded with :func:`token`: ids made of letters, digits, ``-`` and ``_`` stay as
they are; anything else (a checkpoint namespace, an arbitrary thread id) becomes ``~`` followed
by its unpadded base64url form, which is injective and reversible.
"""

from __future__ import annotations

import base64
import re

THREAD_STREAM = "TB_THREADS"
PREFIX = "tb.thread"
RUN_STREAM = "TB_RUNSTREAM"
STREAM_PREFIX = "tb.stream"
THREAD_EVENTS_STREAM = "TB_THREADEVENTS"
THREAD_EVENTS_PREFIX = "tb.events"
DEADLETTER_STREAM = "TB_DEADLETTER"
DEADLETTER_PREFIX = "tb.deadletter"
# Fixed for the life of a stream: changing it would move threads between partitions.
PARTITIONS = 16

_SAFE = re.compile(r"[A-Za-z0-9_-]+")

# Event type name -> the last subject token of a control event.
EVENT_TOKENS = {
    "RunRequested": "requested",
    "RunCancelRequested": "cancel_requested",
    "RunAccepted": "accepted",
    "RunRejected": "rejected",
    "RunStarted": "started",
    "RunCancelled": "cancelled",
    "RunStopped": "stopped",
    "RunSucceeded": "succeeded",
    "RunFailed": "failed",
    "RunInterrupted": "interrupted",
    "RunRolledBack": "rolledback",
    "RunDeleted": "run_deleted",
    "ThreadCreated": "created",
    "ThreadUpdated": "updated",
    "ThreadDeleted": "deleted",
}


def token(value: str) -> str:
    if _SAFE.fullmatch(value):  # not match: "$" also matches before a final newline
        return value
    return "~" + base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")


def untoken(tok: str) -> str:
    if not tok.startswith("~"):
        return tok
    raw = tok[1:]
    return base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()


def partition_transform() -> tuple[str, str]:
    """The thread stream's subject transform (source, destination)."""
    return f"{PREFIX}.*.>", f"{PREFIX}.{{{{wildcard(1)}}}}.{{{{partition({PARTITIONS},1)}}}}.>"


def thread_all(thread_id: str) -> str:
    return f"{PREFIX}.{token(thread_id)}.>"


def thread_control(thread_id: str) -> str:
    """Every control event of one thread (runs and the thread itself)."""
    return f"{PREFIX}.{token(thread_id)}.*.*.*.*"


def all_control(partition: int | None = None) -> str:
    """Every control event of every thread, or of the threads of one partition."""
    return f"{PREFIX}.*.{'*' if partition is None else partition}.*.*.*"


def run_control(thread_id: str, run_id: str) -> str:
    return f"{PREFIX}.{token(thread_id)}.*.run.{token(run_id)}.*"


def run_event(thread_id: str, run_id: str, type_name: str) -> str:
    """The stored subject of one control event of a run: literal but for the partition, so a
    last-by-subject get of it costs the same however long the thread's log is."""
    return f"{PREFIX}.{token(thread_id)}.*.run.{token(run_id)}.{EVENT_TOKENS[type_name]}"


def run_all(thread_id: str, run_id: str) -> str:
    return f"{PREFIX}.{token(thread_id)}.*.run.{token(run_id)}.>"


def started_any() -> str:
    """The executors' work queue: every ``RunStarted`` of every thread."""
    return f"{PREFIX}.*.*.run.*.started"


def outcome_any(type_name: str) -> str:
    """Every run's events of one type, in every thread (e.g. every ``RunSucceeded``)."""
    return f"{PREFIX}.*.*.run.*.{EVENT_TOKENS[type_name]}"


def event_any(type_name: str) -> str:
    """Every stored control event of one type, in every thread (a run's or a thread's own)."""
    if type_name.startswith("Thread"):
        return f"{PREFIX}.*.*.meta.thread.{EVENT_TOKENS[type_name]}"
    return outcome_any(type_name)


def cancels_published() -> str:
    """Every ``RunCancelled`` as published, for a plain (non-stream) subscription: it sees the
    subject a publisher used, not the stored one."""
    return f"{PREFIX}.*.run.*.cancelled"


def control_event(thread_id: str, run_id: str | None, type_name: str) -> str:
    """The subject to publish a control event on."""
    event = EVENT_TOKENS[type_name]
    if run_id is None:
        return f"{PREFIX}.{token(thread_id)}.meta.thread.{event}"
    return f"{PREFIX}.{token(thread_id)}.run.{token(run_id)}.{event}"


def sibling(subject: str, type_name: str) -> str:
    """The subject of another control event of the same run, in the form ``subject`` has (stored,
    with its partition, or published): a literal subject, for a direct get of the last message."""
    return f"{subject.rsplit('.', 1)[0]}.{EVENT_TOKENS[type_name]}"


def checkpoint(thread_id: str, run_id: str, ns: str, checkpoint_id: str) -> str:
    """The subject to publish a checkpoint on."""
    return f"{PREFIX}.{token(thread_id)}.run.{token(run_id)}.ckpt.{token(ns)}.{token(checkpoint_id)}"


def checkpoints(thread_id: str | None, ns: str | None = None, checkpoint_id: str | None = None) -> str:
    """Stored checkpoints of a thread (of every thread when None), optionally of one namespace or
    one id, whichever run wrote them."""
    thread_tok = "*" if thread_id is None else token(thread_id)
    ns_tok = "*" if ns is None else token(ns)
    id_tok = "*" if checkpoint_id is None else token(checkpoint_id)
    return f"{PREFIX}.{thread_tok}.*.run.*.ckpt.{ns_tok}.{id_tok}"


def checkpoint_head(thread_id: str, ns: str) -> str:
    """The subject to publish a namespace's newest-checkpoint pointer on."""
    return f"{PREFIX}.{token(thread_id)}.head.{token(ns)}"


def checkpoint_heads(thread_id: str, ns: str | None = None) -> str:
    """Stored newest-checkpoint pointers of a thread (of one namespace)."""
    return f"{PREFIX}.{token(thread_id)}.*.head.{'*' if ns is None else token(ns)}"


def checkpoint_ref(thread_id: str, ns: str, checkpoint_id: str) -> str:
    """The subject to publish a checkpoint's pointer (the run that wrote it) on."""
    return f"{PREFIX}.{token(thread_id)}.index.ckpt.{token(ns)}.{token(checkpoint_id)}"


def checkpoint_refs(thread_id: str, ns: str | None = None, checkpoint_id: str | None = None) -> str:
    """Stored checkpoint pointers of a thread, optionally of one namespace or one id."""
    ns_tok = "*" if ns is None else token(ns)
    id_tok = "*" if checkpoint_id is None else token(checkpoint_id)
    return f"{PREFIX}.{token(thread_id)}.*.index.ckpt.{ns_tok}.{id_tok}"


def stored_checkpoint(thread_id: str, run_id: str, ns: str, checkpoint_id: str) -> str:
    """One checkpoint as stored, literal but for the partition."""
    return f"{PREFIX}.{token(thread_id)}.*.run.{token(run_id)}.ckpt.{token(ns)}.{token(checkpoint_id)}"


def writes_record(thread_id: str, run_id: str, ns: str, checkpoint_id: str, task_id: str) -> str:
    """The subject to publish one task's pending writes on."""
    return f"{PREFIX}.{token(thread_id)}.run.{token(run_id)}.write.{token(ns)}.{token(checkpoint_id)}.{token(task_id)}"


def writes(thread_id: str, ns: str | None = None, checkpoint_id: str | None = None) -> str:
    ns_tok = "*" if ns is None else token(ns)
    id_tok = "*" if checkpoint_id is None else token(checkpoint_id)
    return f"{PREFIX}.{token(thread_id)}.*.run.*.write.{ns_tok}.{id_tok}.*"


def run_records(run_id: str, kind: str) -> str:
    """The stored ``kind`` ("ckpt" or "write") records of one run, in whichever thread."""
    return f"{PREFIX}.*.*.run.{token(run_id)}.{kind}.>"


def run_stream(thread_id: str, run_id: str | None = None) -> str:
    """The stream log of one run's SSE events (of every run of the thread when run_id is None)."""
    return f"{STREAM_PREFIX}.{token(thread_id)}.{'*' if run_id is None else token(run_id)}"


def thread_events(thread_id: str) -> str:
    """The v3 protocol's event stream of one thread, every run's events in order."""
    return f"{THREAD_EVENTS_PREFIX}.{token(thread_id)}"


def dead_letter(service: str) -> str:
    return f"{DEADLETTER_PREFIX}.{token(service)}"


def run_of_stream(subject: str) -> str:
    """The run of a message in the run stream log."""
    return untoken(subject.split(".")[3])


def published_tokens(subject: str) -> list[str]:
    """The tokens of a thread-log subject as published (a stored one loses its partition)."""
    parts = subject.split(".")
    if len(parts) > 3 and parts[3].isdigit():
        del parts[3]
    return parts


def partition_of(subject: str) -> int:
    """The partition of a stored thread-log subject."""
    return int(subject.split(".")[3])


def thread_of(subject: str) -> str:
    return untoken(subject.split(".")[2])


def run_of(subject: str) -> str | None:
    parts = published_tokens(subject)
    return untoken(parts[4]) if parts[3] == "run" else None
