"""What one checkpoint lookup costs nats-server, at a short and a long thread.

Fills a thread of the real thread stream (``broker.bootstrap``) with runs shaped like a graph's:
four control events, three checkpoints of ~2 KB and three pending-write records per run, and
times each way of finding a checkpoint (p50 of a few hundred sequential requests, one client):

- ``wildcard last``: the newest message on ``tb.thread.<t>.*.run.*.ckpt.<ns>.*`` (the old "latest")
- ``wildcard by id``: the same with the id literal and the run ``*`` (the old "by id")
- ``literal by id``: only the partition ``*``
- ``head pointer``: a literal subject per thread and namespace
- ``by sequence``: a direct get of a known sequence
- ``subjects``: the stream info listing of the thread's checkpoint subjects (no payloads)

Usage: ``.venv/bin/python bench/checkpoint_lookups.py [--small 30] [--large 3000]``
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid

import nats

from contracts import subjects
from threadbus import broker
from threadbus.embedded import EmbeddedNats
from threadbus.settings import Settings

CONTROL = ("requested", "accepted", "started", "succeeded")


async def fill(js, thread_id: str, checkpoints: int) -> tuple[str, str, int]:
    """Appends runs until the thread holds ``checkpoints`` checkpoints; returns the last one's
    run, id and sequence."""
    pending = []
    run = ckpt = ""
    for i in range(checkpoints // 3):
        run = str(uuid.uuid4())
        for event in CONTROL[:3]:
            pending.append(js.publish(f"tb.thread.{thread_id}.run.{run}.{event}", b"{}" * 64))
        for step in range(3):
            ckpt = f"1f0{i:05d}-{step}"
            pending.append(js.publish(subjects.checkpoint(thread_id, run, "", ckpt), b"x" * 2048))
            pending.append(js.publish(f"tb.thread.{thread_id}.run.{run}.write.~.{ckpt}.task", b"y" * 256))
        pending.append(js.publish(f"tb.thread.{thread_id}.head.~", f"{run}:{ckpt}".encode()))
        pending.append(js.publish(f"tb.thread.{thread_id}.run.{run}.succeeded", b"{}" * 64))
        if len(pending) > 500:
            await asyncio.gather(*pending)
            pending.clear()
    acks = await asyncio.gather(*pending)
    return run, ckpt, acks[-3].seq if acks else 0


async def p50(fn, reps: int = 1000) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


async def measure(js, thread_id: str, run: str, ckpt: str, seq: int) -> dict[str, float]:
    stream = subjects.THREAD_STREAM
    return {
        "wildcard last": await p50(lambda: js.get_last_msg(stream, subjects.checkpoints(thread_id, ""), direct=True)),
        "wildcard by id": await p50(lambda: js.get_last_msg(stream, subjects.checkpoints(thread_id, "", ckpt), direct=True)),
        "literal by id": await p50(
            lambda: js.get_last_msg(stream, f"tb.thread.{thread_id}.*.run.{run}.ckpt.~.{ckpt}", direct=True)
        ),
        "head pointer": await p50(lambda: js.get_last_msg(stream, f"tb.thread.{thread_id}.*.head.~", direct=True)),
        "by sequence": await p50(lambda: js.get_msg(stream, seq, direct=True)),
        "subjects": await p50(lambda: js.stream_info(stream, subjects_filter=subjects.checkpoints(thread_id, "")), 100),
    }


async def main(small: int, large: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedNats(tmp)
        server.start()
        try:
            nc = await nats.connect(server.url)
            await broker.bootstrap(nc, Settings())
            js = nc.jetstream(timeout=30)
            await fill(js, str(uuid.uuid4()), 30_000)  # other threads' history in the same stream
            results = {}
            for size in (small, large):
                thread_id = str(uuid.uuid4())
                results[size] = await measure(js, thread_id, *(await fill(js, thread_id, size)))
            await nc.close()
        finally:
            server.stop()
    print(f"{'lookup':<16}{small:>10} ckpts{large:>10} ckpts{'ratio':>8}")
    for name in results[small]:
        a, b = results[small][name], results[large][name]
        print(f"{name:<16}{a:>13.3f} ms{b:>13.3f} ms{b / a:>8.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=30)
    parser.add_argument("--large", type=int, default=3000)
    args = parser.parse_args()
    asyncio.run(main(args.small, args.large))
