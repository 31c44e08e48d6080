"""Double-texting stress: many clients text one thread at once with random strategies.

Twenty clients, each with its own ``langgraph_sdk`` client, send runs of the ``two_step`` graph
(two steps of 50 ms) to ONE thread for a bounded time, each with a random ``multitask_strategy``
and a unique input text. Then, once the thread has no run in flight, the thread's log is checked
with :mod:`threadbus.verify`, twice: as stored (compacted) and as recorded live while the test
ran (a history in which the rolled-back runs' executions are still visible), and the API's view
is checked against what the clients were told.

Set ``THREADBUS_STRESS_SEED`` to replay a plan; the seed is printed (``pytest -s`` shows it).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter

import httpx
import nats
import pytest
from langgraph_sdk import get_client
from langgraph_sdk.errors import ConflictError, NotFoundError

from contracts import subjects
from tests.support import assert_verified
from threadbus import verify
from threadbus.threadlog import ThreadLog

CLIENTS = 20
REQUESTS_PER_CLIENT = 15
DURATION_S = 15.0
# Normally idle well under a second after the last request; a run whose executor task died without
# an outcome would hold the thread for the 30 s ack wait until its redelivery.
SETTLE_TIMEOUT_S = 10.0
STEP = {"configurable": {"delay": 0.05}}
STRATEGIES = ("reject", "enqueue", "interrupt", "rollback")
TERMINAL = {"success", "error", "timeout", "interrupted"}


def said(text: str) -> dict:
    return {"messages": [{"role": "human", "content": text}]}


async def wait_idle(client, tid: str, timeout: float) -> list[dict] | None:
    """The thread's runs once none is in flight and the thread is idle; None after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = await client.runs.list(tid, limit=1000)
        thread = await client.threads.get(tid)
        if thread["status"] == "idle" and not any(r["status"] in ("pending", "running") for r in runs):
            return runs
        await asyncio.sleep(0.1)
    return None


@pytest.mark.timeout(180)
async def test_many_clients_double_text_one_thread(server, nats_url):
    seed = int(os.environ.get("THREADBUS_STRESS_SEED") or random.SystemRandom().randrange(2**32))
    print(f"\nstress seed {seed} (THREADBUS_STRESS_SEED={seed} replays the plan)")
    rng = random.Random(seed)
    # Bursts (next text at once) and gaps long enough for a run to finish now and then.
    plans = [
        [
            (rng.choice(STRATEGIES), rng.uniform(0.0, 0.05) if rng.random() < 0.5 else rng.uniform(0.3, 1.5))
            for _ in range(REQUESTS_PER_CLIENT)
        ]
        for _ in range(CLIENTS)
    ]

    admin = get_client(url=server.url)
    tid = (await admin.threads.create(metadata={"test": "stress", "seed": seed}))["thread_id"]
    accepted: dict[str, tuple[str, str]] = {}  # text -> (run_id, strategy)
    rejected: set[str] = set()
    unexpected: list[str] = []
    # A first run, alone: the thread learns its graph. Twenty first requests at once contend for
    # that thread-record update (Backend._remember_graph, a KV read-modify-write retried 10 times)
    # and some get 409 "... is being updated concurrently", which no strategy explains.
    warmup = await admin.runs.create(tid, "two_step", input=said("warmup"), config=STEP, metadata={"text": "warmup"})
    accepted["warmup"] = (warmup["run_id"], "enqueue")

    nc = await nats.connect(nats_url)
    try:
        async with verify.Recorder(nc, tid) as recorder:
            t0 = time.monotonic()
            deadline = t0 + DURATION_S

            async def texter(n: int) -> None:
                # Its own client (its own HTTP connection pool), as separate users would have.
                client = get_client(url=server.url, timeout=httpx.Timeout(30.0))
                for i, (strategy, pause) in enumerate(plans[n]):
                    if time.monotonic() > deadline:
                        return
                    text = f"c{n}-m{i}-{strategy}"
                    try:
                        run = await client.runs.create(
                            tid, "two_step", input=said(text), config=STEP, multitask_strategy=strategy, metadata={"text": text}
                        )
                        accepted[text] = (run["run_id"], strategy)
                    except ConflictError as err:
                        if strategy != "reject":
                            unexpected.append(f"{text}: 409 for strategy {strategy}: {err}")
                        rejected.add(text)
                    except Exception as err:  # noqa: BLE001 - every other answer is a failure
                        unexpected.append(f"{text}: {err!r}")
                    await asyncio.sleep(pause)

            await asyncio.gather(*(texter(n) for n in range(CLIENTS)))
            sent = time.monotonic()
            runs = await wait_idle(admin, tid, SETTLE_TIMEOUT_S)
            idle = time.monotonic()
            await recorder.settle()
        history = recorder.history()
        stored = await verify.read_thread(ThreadLog(nc), tid)
    finally:
        await nc.close()

    tombstones = {subjects.run_of(s) for _, s, _ in stored if s.endswith(".rolledback")}
    statuses = Counter(r["status"] for r in runs or ())
    print(
        f"sent {len(accepted) + len(rejected)} runs in {sent - t0:.1f}s, idle {idle - sent:.1f}s later:"
        f" {len(accepted)} accepted, {len(rejected)} rejected (409), {len(tombstones)} rolled back,"
        f" listed {dict(statuses)}; log {len(stored)} messages, history {len(history)}"
    )

    # The invariants first (they explain a thread that never settles), on the log as stored and
    # on the history recorded while it was written.
    for name, report in (
        ("stored log", verify.check_thread(tid, stored, compacted=True)),
        ("live history", verify.check_thread(tid, history, compacted=False)),
    ):
        counts = report.counts()
        assert report.ok, f"seed {seed}, {name}: {counts}\n" + "\n".join(
            f"  {v.kind} run {v.run_id} {v.seqs}: {v.detail}" for v in report.violations[:20]
        )
        assert counts[verify.OVERLAP] == 0 and counts[verify.STARTED_WHILE_RUNNING] == 0
        assert counts[verify.TERMINAL] == 0 and counts[verify.ORDER] == 0 and counts[verify.LEFTOVER] == 0
        assert report.in_flight == {}, f"seed {seed}, {name}: runs still in flight after {SETTLE_TIMEOUT_S}s: {report.in_flight}"
    assert runs is not None, f"seed {seed}: the thread is not idle {SETTLE_TIMEOUT_S}s after the last request"
    assert not unexpected, unexpected
    by_run = {run_id: (text, strategy) for text, (run_id, strategy) in accepted.items()}
    listed = {r["run_id"]: r for r in runs}
    late_rejections = {subjects.run_of(s) for _, s, _ in stored if s.endswith(".rejected")} & set(by_run)

    # Every run the API accepted exists, or was rolled back (and then it is 404); never both.
    assert not late_rejections, f"answered 200 but rejected later: {late_rejections}"
    assert set(listed) | tombstones == set(by_run), "accepted runs neither listed nor rolled back"
    assert not set(listed) & tombstones
    # Every listed run is in a terminal status; with this graph nothing fails.
    assert set(statuses) <= TERMINAL - {"error", "timeout"}, statuses
    # No rejected request became a run.
    assert not {r["metadata"].get("text") for r in runs} & rejected
    assert all(r["metadata"]["text"] == by_run[r["run_id"]][0] for r in runs)
    gone = await asyncio.gather(*(admin.runs.get(tid, rid) for rid in tombstones), return_exceptions=True)
    assert all(isinstance(g, NotFoundError) for g in gone), [g for g in gone if not isinstance(g, NotFoundError)]

    # The final state: every successful run's input and answer are there, in the order the runs
    # started; no rolled-back or rejected input is.
    state = await admin.threads.get_state(tid)
    messages = state["values"]["messages"]
    humans = [m["content"] for m in messages if m["type"] == "human"]
    answers = {m["content"] for m in messages if m["type"] == "ai"}
    assert len(humans) == len(set(humans))
    for rid, run in listed.items():
        text = by_run[rid][0]
        if run["status"] == "success":
            assert text in humans, f"input of successful run {rid} ({text}) missing from the state"
            assert f"answer to: {text}" in answers
    rolled_back_texts = {by_run[rid][0] for rid in tombstones}
    everything = {m["content"] for m in messages}
    assert not {t for t in rolled_back_texts | rejected if any(t in c for c in everything)}
    start_order = [
        by_run[subjects.run_of(s)][0] for _, s, _ in stored if s.endswith(".started") and subjects.run_of(s) in by_run
    ]
    assert humans == [t for t in start_order if t in set(humans)], "inputs out of run order"
    assert set(humans) <= set(start_order)
    assert (await admin.threads.get(tid))["status"] == "idle"

    # The load exercised what it is meant to.
    assert rejected and tombstones and statuses["interrupted"] and statuses["success"]


LOAD_THREADS = 200
LOAD_RUNS = 2_000
LOAD_CLIENTS = 40


@pytest.mark.timeout(600)
async def test_two_thousand_runs_on_two_hundred_threads_with_mixed_strategies(server, nats_url):
    """Breadth rather than contention: 2,000 requests spread over 200 threads by 40 clients,
    each with a random strategy; afterwards every thread's log passes verify, nothing is in flight,
    and every accepted run ended or was rolled back (404)."""
    seed = int(os.environ.get("THREADBUS_STRESS_SEED") or random.SystemRandom().randrange(2**32))
    print(f"\nload seed {seed}")
    rng = random.Random(seed)
    admin = get_client(url=server.url, timeout=httpx.Timeout(30.0))
    threads = [(await admin.threads.create(metadata={"test": "load"}))["thread_id"] for _ in range(LOAD_THREADS)]
    work: asyncio.Queue = asyncio.Queue()
    for i in range(LOAD_RUNS):
        work.put_nowait((rng.choice(threads), rng.choice(STRATEGIES), f"load-{i}"))
    accepted: dict[str, tuple[str, str]] = {}  # run_id -> (thread, strategy)
    rejected = 0
    unexpected: list[str] = []

    async def worker() -> None:
        nonlocal rejected
        client = get_client(url=server.url, timeout=httpx.Timeout(30.0))
        while not work.empty():
            tid, strategy, text = work.get_nowait()
            try:
                run = await client.runs.create(tid, "two_step", input=said(text), config=STEP, multitask_strategy=strategy)
                accepted[run["run_id"]] = (tid, strategy)
            except ConflictError:
                if strategy != "reject":
                    unexpected.append(f"{text}: 409 for {strategy}")
                rejected += 1
            except Exception as err:  # noqa: BLE001 - every other answer is a failure
                unexpected.append(f"{text}: {err!r}")

    t0 = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(LOAD_CLIENTS)))
    sent = time.monotonic()
    async with asyncio.timeout(180):
        for tid in threads:
            while await wait_idle(admin, tid, 5.0) is None:
                pass
    idle = time.monotonic()
    print(
        f"{LOAD_RUNS} requests on {LOAD_THREADS} threads sent in {sent - t0:.1f}s ({LOAD_RUNS / (sent - t0):.0f}/s),"
        f" all idle {idle - sent:.1f}s later: {len(accepted)} accepted, {rejected} rejected"
    )
    assert not unexpected, unexpected[:20]

    await assert_verified(nats_url, threads)
    statuses: Counter = Counter()
    for run_id, (tid, _) in accepted.items():
        try:
            statuses[(await admin.runs.get(tid, run_id))["status"]] += 1
        except NotFoundError:
            statuses["rolled back"] += 1
    print(f"statuses {dict(statuses)}")
    assert set(statuses) <= {"success", "interrupted", "rolled back"}, statuses
    assert statuses["success"] and statuses["interrupted"] and statuses["rolled back"] and rejected
