"""An invariant checker that replays thread logs.

The pure part, :func:`check_thread`, replays one thread's log given as ``(seq, subject, event)``
triples (``event`` is the decoded control event, or ``None`` for checkpoint/write records, whose
subject says all that is checked about them) and reports, for that thread:

``overlapping_executions`` (a)
    Each run that started and ended has an execution interval ``[seq of RunStarted, seq of its
    terminal event]`` (``RunStopped``/``RunSucceeded``/``RunFailed``/``RunInterrupted``, or the
    ``RunRolledBack`` tombstone when nothing else ended it). The intervals of a thread must be
    disjoint (DESIGN §2 invariant 2).
``record_outside_execution`` (a)
    Every checkpoint or writes record of a run (``...run.<r>.ckpt...``/``...run.<r>.write...``)
    lies strictly inside that run's interval: nothing is written before the run started, after
    it ended, or by a run that never started. Records under the unguarded run token ``_``
    (state updates made outside a run) and records of runs that have no control event left at
    all (a run deleted with ``DELETE /runs/{id}``, whose checkpoints stay by design) are not
    checked; the latter are counted as ``orphan_records``.
``terminal_outcomes`` (b)
    Every accepted run has exactly one terminal outcome: ``RunStopped``, ``RunSucceeded``,
    ``RunFailed``, ``RunInterrupted``, ``RunRolledBack``, or ``RunCancelled`` of a run that had not
    started (a cancelled pending run). A run still pending or running is listed as *in flight*,
    not reported as a violation.
``enqueue_order`` (c)
    Among the runs that started, the order of ``RunStarted`` is the order of ``RunAccepted``.
``rolled_back_leftovers`` (d)
    A run with a ``RunRolledBack`` tombstone has nothing else in the log: no control event, no
    checkpoint, no write.
``started_while_running`` (e)
    No ``RunStarted`` while another run of the thread is running (started, no terminal yet).
``lifecycle``
    Anything else a correct log never shows: a run accepted twice or both accepted and rejected,
    started twice, started without being accepted or after its terminal outcome, an outcome of a
    run that never started.

A thread's log is normally *compacted*: rolled-back runs are reduced to their tombstone, so their
executions cannot be checked any more. :func:`check_thread` also accepts a *history* recorded
live while the thread ran (``compacted=False``, e.g. with :class:`Recorder`), in which the
rolled-back runs' events still appear; (d) then means nothing of the run appears *after* its
tombstone. A live recorder can miss messages purged before they reached it, so in history mode
the events of a rolled-back run are only checked for what a gap cannot make up.

``ThreadDeleted`` starts the thread afresh: what came before it was purged (or, in a history,
ended with the thread).

The broker part, :func:`verify`, reads threads with :meth:`ThreadLog.read` and lists the thread
ids present from the stream's per-subject counts; ``threadbus verify`` prints its report.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import msgspec
from nats.aio.client import Client as NATS

import contracts
from contracts import subjects
from threadbus.checkpointer import UNGUARDED_RUN
from threadbus.threadlog import Entry, ThreadLog

__all__ = [
    "KINDS",
    "Violation",
    "ThreadReport",
    "Report",
    "check_thread",
    "check_threads",
    "records_of",
    "read_thread",
    "thread_ids",
    "verify",
    "Recorder",
    "run_cli",
]

OVERLAP = "overlapping_executions"
OUTSIDE = "record_outside_execution"
TERMINAL = "terminal_outcomes"
ORDER = "enqueue_order"
LEFTOVER = "rolled_back_leftovers"
STARTED_WHILE_RUNNING = "started_while_running"
LIFECYCLE = "lifecycle"
KINDS = (OVERLAP, OUTSIDE, TERMINAL, ORDER, LEFTOVER, STARTED_WHILE_RUNNING, LIFECYCLE)

_OUTCOMES = (contracts.RunStopped, contracts.RunSucceeded, contracts.RunFailed, contracts.RunInterrupted)

# One replayed message: stream sequence, subject, decoded control event (None for a record).
Record = tuple[int, str, Any]


@dataclass(frozen=True)
class Violation:
    kind: str
    thread_id: str
    run_id: str | None
    detail: str
    seqs: tuple[int, ...] = ()


@dataclass
class ThreadReport:
    thread_id: str
    entries: int = 0
    runs: int = 0
    accepted: int = 0
    started: int = 0
    rolled_back: int = 0
    # run id -> "undecided" | "pending" | "running", at the end of the log
    in_flight: dict[str, str] = field(default_factory=dict)
    orphan_records: int = 0
    undecodable: int = 0
    violations: list[Violation] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def counts(self) -> dict[str, int]:
        return _counts(self.violations)


def _counts(violations: list[Violation]) -> dict[str, int]:
    found = Counter(v.kind for v in violations)
    return {kind: found.get(kind, 0) for kind in KINDS}


@dataclass
class Report:
    threads: list[ThreadReport] = field(default_factory=list)
    max_examples: int = 5

    @property
    def violations(self) -> list[Violation]:
        return [v for t in self.threads for v in t.violations]

    @property
    def ok(self) -> bool:
        return not self.violations

    def counts(self) -> dict[str, int]:
        return _counts(self.violations)

    def examples(self) -> dict[str, list[Violation]]:
        out: dict[str, list[Violation]] = {}
        for v in self.violations:
            bucket = out.setdefault(v.kind, [])
            if len(bucket) < self.max_examples:
                bucket.append(v)
        return out

    def in_flight(self) -> dict[str, dict[str, str]]:
        return {t.thread_id: dict(t.in_flight) for t in self.threads if t.in_flight}

    def totals(self) -> dict[str, int]:
        return {
            "threads": len(self.threads),
            "entries": sum(t.entries for t in self.threads),
            "runs": sum(t.runs for t in self.threads),
            "accepted": sum(t.accepted for t in self.threads),
            "started": sum(t.started for t in self.threads),
            "rolled_back": sum(t.rolled_back for t in self.threads),
            "in_flight": sum(len(t.in_flight) for t in self.threads),
            "orphan_records": sum(t.orphan_records for t in self.threads),
            "undecodable": sum(t.undecodable for t in self.threads),
            "violations": len(self.violations),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "totals": self.totals(),
            "violations": self.counts(),
            "examples": {k: [asdict(v) for v in vs] for k, vs in self.examples().items()},
            "in_flight": self.in_flight(),
            "threads": [
                {
                    "thread_id": t.thread_id,
                    "entries": t.entries,
                    "runs": t.runs,
                    "accepted": t.accepted,
                    "started": t.started,
                    "rolled_back": t.rolled_back,
                    "in_flight": t.in_flight,
                    "orphan_records": t.orphan_records,
                    "undecodable": t.undecodable,
                    "violations": {k: n for k, n in t.counts().items() if n},
                }
                for t in self.threads
            ],
        }

    def format(self) -> str:
        totals = self.totals()
        lines = [
            f"threads {totals['threads']}  entries {totals['entries']}  runs {totals['runs']}"
            f"  accepted {totals['accepted']}  started {totals['started']}  rolled back {totals['rolled_back']}"
            f"  in flight {totals['in_flight']}  orphan records {totals['orphan_records']}",
        ]
        for kind, n in self.counts().items():
            lines.append(f"  {kind:<26} {n}")
        for kind, examples in self.examples().items():
            lines.append(f"{kind}:")
            for v in examples:
                lines.append(f"  thread {v.thread_id} run {v.run_id} seqs {list(v.seqs)}: {v.detail}")
        for tid, runs in self.in_flight().items():
            for rid, status in runs.items():
                lines.append(f"in flight: thread {tid} run {rid} {status}")
        lines.append("OK" if self.ok else f"FAILED: {totals['violations']} violation(s)")
        return "\n".join(lines)


# -- the pure replay ----------------------------------------------------------------------------
@dataclass
class _Run:
    run_id: str
    control: list[tuple[int, str]] = field(default_factory=list)  # (seq, event type) of every control event
    records: list[int] = field(default_factory=list)  # seqs of checkpoint/writes records
    requested: int | None = None
    accepted: int | None = None
    rejected: int | None = None
    started: int | None = None
    terminals: list[tuple[int, str]] = field(default_factory=list)
    tombstone: int | None = None
    unstarted_outcomes: list[tuple[int, str]] = field(default_factory=list)

    @property
    def end(self) -> int | None:
        """Sequence of the run's first terminal event after its start."""
        if self.started is None:
            return None
        return next((seq for seq, _ in self.terminals if seq > self.started), None)


def _classify(subject: str) -> tuple[str, str | None]:
    """("control" | "record" | "other", run id or None) of a thread-log subject."""
    parts = subjects.published_tokens(subject)
    if len(parts) == 6:
        return "control", subjects.run_of(subject)
    if len(parts) >= 8 and parts[3] == "run" and parts[5] in ("ckpt", "write"):
        return "record", subjects.untoken(parts[4])
    return "other", None


class _Replay:
    def __init__(self, report: ThreadReport, compacted: bool):
        self.report = report
        self.compacted = compacted
        self.runs: dict[str, _Run] = {}
        self.running: dict[str, int] = {}  # run id -> seq of its RunStarted

    def flag(self, kind: str, run_id: str | None, detail: str, *seqs: int) -> None:
        self.report.violations.append(Violation(kind, self.report.thread_id, run_id, detail, tuple(seqs)))

    def run(self, run_id: str) -> _Run:
        if run_id not in self.runs:
            self.runs[run_id] = _Run(run_id)
        return self.runs[run_id]

    def feed(self, seq: int, subject: str, event: Any) -> None:
        what, run_id = _classify(subject)
        if what == "record":
            if run_id != UNGUARDED_RUN:
                self.run(run_id).records.append(seq)
            return
        if what != "control":
            return
        if event is None:
            self.report.undecodable += 1
            return
        if isinstance(event, contracts.ThreadDeleted):
            self.finish(deleted=True)
            self.runs, self.running = {}, {}
            return
        if run_id is None:
            return
        if isinstance(event, contracts.RunDeleted):
            return  # no longer listed; its history is checked as any other run's
        r = self.run(run_id)
        name = type(event).__name__
        r.control.append((seq, name))
        ended = bool(r.terminals) or r.tombstone is not None
        match event:
            case contracts.RunRequested():
                r.requested = seq
            case contracts.RunAccepted():
                if r.accepted is not None:
                    self.flag(LIFECYCLE, run_id, "accepted twice", r.accepted, seq)
                elif r.rejected is not None:
                    self.flag(LIFECYCLE, run_id, "accepted after being rejected", r.rejected, seq)
                else:
                    r.accepted = seq
            case contracts.RunRejected():
                if r.accepted is not None:
                    self.flag(LIFECYCLE, run_id, "rejected after being accepted", r.accepted, seq)
                r.rejected = seq
            case contracts.RunStarted():
                if r.started is not None:
                    self.flag(LIFECYCLE, run_id, "started twice", r.started, seq)
                    return
                if ended:
                    self.flag(LIFECYCLE, run_id, "started after its terminal outcome", r.terminals[0][0] if r.terminals else r.tombstone, seq)
                others = {rid: s for rid, s in self.running.items() if rid != run_id}
                for other, other_seq in others.items():
                    self.flag(
                        STARTED_WHILE_RUNNING,
                        run_id,
                        f"started while run {other} (started at {other_seq}) was running",
                        other_seq,
                        seq,
                    )
                r.started = seq
                if not ended:
                    self.running[run_id] = seq
            case contracts.RunCancelled():
                if r.started is None and not ended:
                    r.terminals.append((seq, name))  # a pending run ends with its cancel
            case _ if isinstance(event, _OUTCOMES):
                if r.started is None:
                    r.unstarted_outcomes.append((seq, name))
                r.terminals.append((seq, name))
                self.running.pop(run_id, None)
            case contracts.RunRolledBack():
                if r.tombstone is not None:
                    self.flag(LIFECYCLE, run_id, "rolled back twice", r.tombstone, seq)
                    return
                r.tombstone = seq
                if not r.terminals:
                    r.terminals.append((seq, name))
                self.running.pop(run_id, None)

    def _check_predecessors(self) -> None:
        for r in self.runs.values():
            if r.tombstone is not None:
                continue  # compacted: anything but the tombstone is a leftover (d); history: gaps
            if r.started is not None and r.accepted is None:
                self.flag(LIFECYCLE, r.run_id, "started without being accepted", r.started)
            for seq, name in r.unstarted_outcomes:
                self.flag(LIFECYCLE, r.run_id, f"{name} of a run that never started", seq)

    def _gappy(self, r: _Run) -> bool:
        """In a live history, a rolled-back run's events may have been purged before they were
        recorded; missing predecessors of such a run are not evidence of anything."""
        return not self.compacted and r.tombstone is not None

    def finish(self, deleted: bool = False) -> None:
        rep = self.report
        rep.runs += len(self.runs)
        rep.accepted += sum(1 for r in self.runs.values() if r.accepted is not None)
        rep.started += sum(1 for r in self.runs.values() if r.started is not None)
        rep.rolled_back += sum(1 for r in self.runs.values() if r.tombstone is not None)
        self._check_predecessors()
        self._check_leftovers()
        self._check_terminals(deleted)
        self._check_intervals()
        self._check_order()

    def _check_leftovers(self) -> None:
        for r in self.runs.values():
            if r.tombstone is None:
                continue
            if self.compacted:
                extra = [(s, n) for s, n in r.control if s != r.tombstone] + [(s, "record") for s in r.records]
            else:
                extra = [(s, n) for s, n in r.control if s > r.tombstone] + [(s, "record") for s in r.records if s > r.tombstone]
            if extra:
                extra.sort()
                kinds = sorted({n for _, n in extra})
                self.flag(
                    LEFTOVER,
                    r.run_id,
                    f"{len(extra)} message(s) besides its RunRolledBack tombstone ({', '.join(kinds)})",
                    r.tombstone,
                    *(s for s, _ in extra),
                )

    def _check_terminals(self, deleted: bool) -> None:
        for r in self.runs.values():
            if r.tombstone is not None:
                # Compacted: whatever else is left of it is a leftover (d). History: it may have
                # gaps, and what follows its tombstone is a leftover too.
                continue
            if r.accepted is None:
                if r.requested is not None and r.rejected is None and not r.terminals and not deleted:
                    self.report.in_flight[r.run_id] = "undecided"
                continue
            if len(r.terminals) > 1:
                self.flag(
                    TERMINAL,
                    r.run_id,
                    f"{len(r.terminals)} terminal outcomes: {', '.join(n for _, n in r.terminals)}",
                    *(s for s, _ in r.terminals),
                )
            elif not r.terminals and not deleted:
                self.report.in_flight[r.run_id] = "pending" if r.started is None else "running"

    def _check_intervals(self) -> None:
        intervals = []
        for r in self.runs.values():
            end = r.end
            if r.started is not None and end is not None:
                intervals.append((r.started, end, r.run_id))
            if self.compacted and r.tombstone is not None:
                continue  # its records are leftovers (d)
            if not r.control:
                self.report.orphan_records += len(r.records)
                continue
            for seq in r.records:
                if not self.compacted and r.tombstone is not None and seq > r.tombstone:
                    continue  # reported as a leftover (d)
                if r.started is None:
                    if not self._gappy(r):  # else its RunStarted may just not have been recorded
                        self.flag(OUTSIDE, r.run_id, "record of a run that never started", seq)
                elif seq < r.started:
                    self.flag(OUTSIDE, r.run_id, f"record before the run started at {r.started}", r.started, seq)
                elif end is not None and seq > end:
                    self.flag(OUTSIDE, r.run_id, f"record after the run ended at {end}", end, seq)
        intervals.sort()
        latest: tuple[int, int, str] | None = None  # the interval reaching furthest so far
        for start, end, run_id in intervals:
            if latest is not None and start < latest[1]:
                self.flag(
                    OVERLAP,
                    run_id,
                    f"execution [{start}, {end}] overlaps run {latest[2]}'s [{latest[0]}, {latest[1]}]",
                    latest[0],
                    latest[1],
                    start,
                    end,
                )
            if latest is None or end > latest[1]:
                latest = (start, end, run_id)

    def _check_order(self) -> None:
        started = sorted((r.started, r.accepted, r.run_id) for r in self.runs.values() if r.started is not None and r.accepted is not None)
        for (s1, a1, r1), (s2, a2, r2) in zip(started, started[1:]):
            if a2 < a1:
                self.flag(
                    ORDER,
                    r2,
                    f"started at {s2} after run {r1} (started at {s1}) but accepted earlier ({a2} < {a1})",
                    a2,
                    a1,
                    s1,
                    s2,
                )


def check_thread(thread_id: str, records: Iterable[Record], *, compacted: bool = True) -> ThreadReport:
    """Replay one thread's log (``(seq, subject, event)``; any order, duplicates of a sequence
    counted once) and report what it breaks. Pure: no I/O."""
    by_seq: dict[int, Record] = {}
    for rec in records:
        by_seq.setdefault(rec[0], rec)
    report = ThreadReport(thread_id=thread_id, entries=len(by_seq))
    replay = _Replay(report, compacted)
    for seq in sorted(by_seq):
        _, subject, event = by_seq[seq]
        replay.feed(seq, subject, event)
    replay.finish()
    return report


def check_threads(logs: dict[str, Sequence[Record]], *, compacted: bool = True, max_examples: int = 5) -> Report:
    return Report([check_thread(tid, recs, compacted=compacted) for tid, recs in logs.items()], max_examples=max_examples)


# -- reading from the broker ---------------------------------------------------------------------
def records_of(entries: Iterable[Entry]) -> list[Record]:
    """``(seq, subject, event)`` of thread-log entries; only control events are decoded."""
    out: list[Record] = []
    for e in entries:
        event = None
        if _classify(e.subject)[0] == "control":
            try:
                event = e.event()
            except msgspec.ValidationError:
                event = None
        out.append((e.seq, e.subject, event))
    return out


async def read_thread(log: ThreadLog, thread_id: str) -> list[Record]:
    return records_of(await log.read(subjects.thread_all(thread_id)))


async def thread_ids(nc: NATS, stream: str = subjects.THREAD_STREAM) -> list[str]:
    """The ids of the threads that have control events in the stream, from its per-subject counts."""
    found: set[str] = set()
    offset = 0
    while True:
        req = {"subjects_filter": subjects.all_control(), "offset": offset}
        msg = await nc.request(f"$JS.API.STREAM.INFO.{stream}", json.dumps(req).encode(), timeout=10)
        info = json.loads(msg.data)
        if "error" in info:
            raise RuntimeError(f"stream info of {stream}: {info['error']}")
        page = (info.get("state") or {}).get("subjects") or {}
        found.update(subjects.thread_of(s) for s in page)
        total = info.get("total", 0)
        offset += len(page)
        if not page or offset >= total:
            return sorted(found)


async def verify(nc: NATS, threads: Sequence[str] | None = None, *, stream: str = subjects.THREAD_STREAM, max_examples: int = 5) -> Report:
    """Replay the given threads (default: every thread in the stream) from the broker."""
    log = ThreadLog(nc, stream=stream)
    ids = list(threads) if threads is not None else await thread_ids(nc, stream)
    report = Report(max_examples=max_examples)
    sem = asyncio.Semaphore(16)

    async def one(tid: str) -> ThreadReport:
        async with sem:
            return check_thread(tid, await read_thread(log, tid))

    report.threads = list(await asyncio.gather(*(one(t) for t in ids)))
    return report


class Recorder:
    """Records a thread's log live, as a history that compaction has not touched yet.

    An ordered push consumer on ``tb.thread.<t>.>`` from the start of the stream; messages that
    are purged before the consumer delivers them are missed (see :func:`check_thread`)."""

    def __init__(self, nc: NATS, thread_id: str, stream: str = subjects.THREAD_STREAM):
        self.nc = nc
        self.thread_id = thread_id
        self.stream = stream
        self.records: dict[int, Record] = {}
        self._sub = None

    async def __aenter__(self) -> "Recorder":
        from nats.js.api import DeliverPolicy

        js = self.nc.jetstream()
        self._sub = await js.subscribe(
            subjects.thread_all(self.thread_id),
            stream=self.stream,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
            cb=self._on_msg,
        )
        return self

    async def _on_msg(self, msg) -> None:
        seq = msg.metadata.sequence.stream
        self.records[seq] = records_of([Entry(seq=seq, subject=msg.subject, data=msg.data, msg_id=None)])[0]

    async def settle(self, timeout: float = 10.0) -> None:
        """Wait until everything stored on the thread so far has been recorded."""
        last = await ThreadLog(self.nc, stream=self.stream).last(subjects.thread_all(self.thread_id))
        if last is None:
            return
        async with asyncio.timeout(timeout):
            while not self.records or max(self.records) < last.seq:
                await asyncio.sleep(0.02)

    async def __aexit__(self, *exc) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()

    def history(self) -> list[Record]:
        return [self.records[s] for s in sorted(self.records)]


# -- the `threadbus verify` command ---------------------------------------------------------------
async def run_cli(settings, thread: str | None, as_json: bool) -> int:
    """Print the report of every thread (or one); 1 when a violation was found."""
    from threadbus import broker

    nc = await broker.connect(settings, "verify")
    try:
        report = await verify(nc, [thread] if thread else None)
    finally:
        await nc.close()
    print(json.dumps(report.to_dict(), indent=2) if as_json else report.format())
    return 0 if report.ok else 1
