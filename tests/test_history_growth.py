"""What a read or a run costs does not grow with the thread's history: counted, not timed.

One ``threadbus dev`` on a nats-server of its own (so that nats-server's ``/varz`` counts only its
traffic), two threads of the ``noop`` graph, one with 10 runs and one with 1,000, made through the
SDK. For each operation: the messages nats-server received and sent (``in_msgs + out_msgs``; the
best of a few tries, as the services' idle chatter — lease renewals, pull requests — lands in
some) and the checkpoints the checkpointer decoded (``/metrics``).
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request

import nats
import pytest
from langgraph_sdk import get_client

from contracts import subjects
from services.orchestrator.service import Orchestrator
from services.orchestrator.snapshots import Snapshots
from tests.support import TEST_GRAPHS, ThreadbusProcess
from threadbus.broker import WEBHOOKS_CONSUMER
from threadbus.embedded import EmbeddedNats
from threadbus.settings import Settings
from threadbus.thread_state import ThreadState
from threadbus.threadlog import ThreadLog

SMALL, LARGE = 10, 1000
TRIES = 5
# Messages one operation may cost more on the long thread: the idle chatter of the services
# that a measurement can catch. Folding the long thread's log costs thousands.
SLACK = 12


@pytest.fixture(scope="module")
def quiet(tmp_path_factory):
    broker = EmbeddedNats(tmp_path_factory.mktemp("nats-growth"))
    broker.start()
    proc = ThreadbusProcess(
        ["dev", "--nats-url", broker.url, "--config", str(TEST_GRAPHS)],
        log_path=tmp_path_factory.mktemp("threadbus-growth") / "threadbus.log",
    ).start()
    yield broker, proc
    proc.stop()
    broker.stop()


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read().decode()


def broker_messages(broker: EmbeddedNats) -> int:
    varz = json.loads(_get(f"http://127.0.0.1:{broker.monitor_port}/varz"))
    return varz["in_msgs"] + varz["out_msgs"]


def checkpoints_decoded(proc: ThreadbusProcess) -> float:
    found = re.search(r"^threadbus_checkpoints_decoded_total (\S+)$", _get(f"{proc.url}/metrics"), re.M)
    return float(found.group(1)) if found else 0.0


def webhooks_idle(broker: EmbeddedNats) -> bool:
    """Whether the webhook sender has handled every outcome stored (asked of nats-server's
    monitoring port, which costs no broker message)."""
    jsz = json.loads(_get(f"http://127.0.0.1:{broker.monitor_port}/jsz?consumers=true"))
    for account in jsz.get("account_details", []):
        for stream in account.get("stream_detail", []):
            for consumer in stream.get("consumer_detail") or []:
                if consumer["name"] == WEBHOOKS_CONSUMER:
                    return consumer["num_pending"] == 0 and consumer["num_ack_pending"] == 0
    raise AssertionError("no webhooks consumer")


async def cost(broker, proc, operation, *, then_webhooks: bool = False) -> tuple[int, float]:
    """(broker messages, checkpoints decoded) of ``operation`` (and, ``then_webhooks``, of the
    webhook sender's handling of the outcomes it stored), the cheapest of a few tries."""
    best = None
    for _ in range(TRIES):
        msgs, decoded = await asyncio.to_thread(broker_messages, broker), await asyncio.to_thread(checkpoints_decoded, proc)
        await operation()
        while then_webhooks and not await asyncio.to_thread(webhooks_idle, broker):
            await asyncio.sleep(0.005)
        msgs = await asyncio.to_thread(broker_messages, broker) - msgs
        decoded = await asyncio.to_thread(checkpoints_decoded, proc) - decoded
        best = (msgs, decoded) if best is None or msgs < best[0] else best
    return best


async def thread_with_runs(client, runs: int) -> str:
    thread = (await client.threads.create())["thread_id"]
    created = []
    for start in range(0, runs, 50):
        created += await asyncio.gather(
            *(client.runs.create(thread, "noop", input={}) for _ in range(start, min(start + 50, runs)))
        )
    # Enqueued runs run one after the other: once every one has ended, the thread has settled.
    for run in created[-50:]:
        await client.runs.join(thread, run["run_id"])
    return thread


@pytest.fixture(scope="module")
async def threads(quiet):
    _, proc = quiet
    client = get_client(url=proc.url)
    small = await thread_with_runs(client, SMALL)
    large = await thread_with_runs(client, LARGE)
    return {SMALL: small, LARGE: large}


async def costs(quiet, threads, make_operation, **options) -> dict[int, tuple[int, float]]:
    broker, proc = quiet
    client = get_client(url=proc.url)
    return {size: await cost(broker, proc, make_operation(client, thread), **options) for size, thread in threads.items()}


@pytest.mark.timeout(300)
async def test_history_with_a_limit_decodes_that_many_checkpoints_whatever_the_history(quiet, threads):
    measured = await costs(quiet, threads, lambda client, t: lambda: client.threads.get_history(t, limit=10))
    (small_msgs, small_decoded), (large_msgs, large_decoded) = measured[SMALL], measured[LARGE]
    assert small_decoded == large_decoded == 10, measured
    assert large_msgs <= small_msgs + SLACK, measured


async def test_the_state_of_a_long_thread_costs_what_a_short_ones_does(quiet, threads):
    measured = await costs(quiet, threads, lambda client, t: lambda: client.threads.get_state(t))
    (small_msgs, small_decoded), (large_msgs, large_decoded) = measured[SMALL], measured[LARGE]
    assert small_decoded == large_decoded == 1, measured
    assert large_msgs <= small_msgs + SLACK, measured


async def test_a_run_on_a_long_thread_costs_what_it_does_on_a_short_one(quiet, threads):
    # The whole run path: request, decisions, execution from the latest checkpoint, outcome, the
    # wait, and the webhook sender's look at the run it ended.
    measured = await costs(
        quiet, threads, lambda client, t: lambda: client.runs.wait(t, "noop", input={}), then_webhooks=True
    )
    assert measured[LARGE][0] <= measured[SMALL][0] + SLACK, measured


async def test_a_cold_start_folds_the_tail_after_the_snapshot_not_the_history(quiet, threads):
    broker, _ = quiet
    nc = await nats.connect(broker.url)
    try:
        log = ThreadLog(nc)
        orchestrator = Orchestrator(nc, Settings())
        snapshots = Snapshots(nc.jetstream())
        tails, full = {}, {}
        for size, thread in threads.items():
            last = (await log.last(subjects.thread_control(thread))).seq
            # The live orchestrator snapshots a thread every so many events, statuses left out
            # (the short thread may not have had that many).
            snapshot = await snapshots.load(thread)
            if size == LARGE:
                assert snapshot is not None and snapshot.statuses == {}

            before = await asyncio.to_thread(broker_messages, broker)
            state, tail = await orchestrator._cold_start(thread, through=last)
            tails[size] = await asyncio.to_thread(broker_messages, broker) - before
            assert state.seq == last and state.status == "idle"
            assert tail < orchestrator.settings.orchestrator_snapshot_every, tail

            before = await asyncio.to_thread(broker_messages, broker)
            await orchestrator._fold_tail(ThreadState(thread_id=thread), through=last)
            full[size] = await asyncio.to_thread(broker_messages, broker) - before
        assert tails[LARGE] <= tails[SMALL] + SLACK, tails
        # What the snapshot saves: the fold from sequence 1 grows with the runs.
        assert full[LARGE] > 50 * full[SMALL] / 2, full
    finally:
        await nc.close()
