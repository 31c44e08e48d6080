"""Subjects and streams of threadbus, and the only code that builds subject strings.

Thread log (stream ``TB_THREADS``)::

    tb.thread.<thread>.run.<run>.<event>              control events of one run (6 tokens)
    tb.thread.<thread>.meta.thread.<event>            control events of the thread itself (6 tokens)
    tb.thread.<thread>.run.<run>.ckpt.<ns>.<id>       a checkpoint written by that run
    tb.thread.<thread>.run.<run>.write.<ns>.<id>.<task>   pending writes of one task

Control events always have six tokens and checkpoint records more, so ``tb.thread.<t>.*.*.*``
selects exactly a thread's control events and ``tb.thread.<t>.run.<r>.*`` one run's. Rolling a
run back purges ``tb.thread.<t>.run.<r>.>``; deleting a thread purges ``tb.thread.<t>.>``.

Run stream log (stream ``TB_RUNSTREAM``, expiring after a configurable age)::

    tb.stream.<thread>.<run>                          the run's SSE events, in order

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
DEADLETTER_STREAM = "TB_DEADLETTER"
DEADLETTER_PREFIX = "tb.deadletter"

_SAFE = re.compile(r"^[A-Za-z0-9_-]+$")

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
    "ThreadCreated": "created",
    "ThreadUpdated": "updated",
    "ThreadDeleted": "deleted",
}


def token(value: str) -> str:
    if _SAFE.match(value):
        return value
    return "~" + base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")


def untoken(tok: str) -> str:
    if not tok.startswith("~"):
        return tok
    raw = tok[1:]
    return base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()


def thread_all(thread_id: str) -> str:
    return f"{PREFIX}.{token(thread_id)}.>"


def thread_control(thread_id: str) -> str:
    """Every control event of one thread (runs and the thread itself)."""
    return f"{PREFIX}.{token(thread_id)}.*.*.*"


def all_control() -> str:
    return f"{PREFIX}.*.*.*.*"


def run_control(thread_id: str, run_id: str) -> str:
    return f"{PREFIX}.{token(thread_id)}.run.{token(run_id)}.*"


def run_all(thread_id: str, run_id: str) -> str:
    return f"{PREFIX}.{token(thread_id)}.run.{token(run_id)}.>"


def started_any() -> str:
    """The executors' work queue: every ``RunStarted`` of every thread."""
    return f"{PREFIX}.*.run.*.started"


def outcome_any(type_name: str) -> str:
    """Every run's events of one type, in every thread (e.g. every ``RunSucceeded``)."""
    return f"{PREFIX}.*.run.*.{EVENT_TOKENS[type_name]}"


def cancelled_any() -> str:
    return f"{PREFIX}.*.run.*.cancelled"


def control_event(thread_id: str, run_id: str | None, type_name: str) -> str:
    event = EVENT_TOKENS[type_name]
    if run_id is None:
        return f"{PREFIX}.{token(thread_id)}.meta.thread.{event}"
    return f"{PREFIX}.{token(thread_id)}.run.{token(run_id)}.{event}"


def checkpoint(thread_id: str, run_id: str, ns: str, checkpoint_id: str) -> str:
    return f"{PREFIX}.{token(thread_id)}.run.{token(run_id)}.ckpt.{token(ns)}.{token(checkpoint_id)}"


def checkpoints(thread_id: str, ns: str | None = None, checkpoint_id: str | None = None) -> str:
    """Checkpoints of a thread, optionally of one namespace or one id, whichever run wrote them."""
    ns_tok = "*" if ns is None else token(ns)
    id_tok = "*" if checkpoint_id is None else token(checkpoint_id)
    return f"{PREFIX}.{token(thread_id)}.run.*.ckpt.{ns_tok}.{id_tok}"


def writes_record(thread_id: str, run_id: str, ns: str, checkpoint_id: str, task_id: str) -> str:
    return f"{PREFIX}.{token(thread_id)}.run.{token(run_id)}.write.{token(ns)}.{token(checkpoint_id)}.{token(task_id)}"


def writes(thread_id: str, ns: str | None = None, checkpoint_id: str | None = None) -> str:
    ns_tok = "*" if ns is None else token(ns)
    id_tok = "*" if checkpoint_id is None else token(checkpoint_id)
    return f"{PREFIX}.{token(thread_id)}.run.*.write.{ns_tok}.{id_tok}.*"


def run_records(run_id: str, kind: str) -> str:
    """The ``kind`` ("ckpt" or "write") records of one run, in whichever thread."""
    return f"{PREFIX}.*.run.{token(run_id)}.{kind}.>"


def run_stream(thread_id: str, run_id: str | None = None) -> str:
    """The stream log of one run's SSE events (of every run of the thread when run_id is None)."""
    return f"{STREAM_PREFIX}.{token(thread_id)}.{'*' if run_id is None else token(run_id)}"


def dead_letter(service: str) -> str:
    return f"{DEADLETTER_PREFIX}.{token(service)}"


def run_of_stream(subject: str) -> str:
    """The run of a message in the run stream log."""
    return untoken(subject.split(".")[3])


def thread_of(subject: str) -> str:
    return untoken(subject.split(".")[2])


def run_of(subject: str) -> str | None:
    parts = subject.split(".")
    return untoken(parts[4]) if parts[3] == "run" else None
