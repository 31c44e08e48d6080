"""`threadbus events`: a thread's log as a timeline, printed by the CLI as an operator runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.support import ROOT

HI = {"messages": [{"role": "human", "content": "hi"}]}


def events_cli(nats_url: str, *args: str, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "threadbus.cli", "events", *args],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env={**os.environ, "NATS_URL": nats_url}, **kwargs,
    )


async def test_the_timeline_shows_decisions_outcomes_and_rollback_tombstones(client, nats_url):
    thread = (await client.threads.create())["thread_id"]
    first = await client.runs.create(thread, "two_step", input=HI, config={"configurable": {"delay": 0.5}})
    second = await client.runs.create(thread, "echo", input=HI, multitask_strategy="rollback")
    await client.runs.join(thread, second["run_id"])

    text = events_cli(nats_url, thread)
    assert text.returncode == 0, text.stderr
    kinds = [line.split()[2] for line in text.stdout.splitlines()]
    # Each run's graph is recorded in the thread's metadata (ThreadUpdated) before it is requested.
    assert kinds == [
        "ThreadCreated", "ThreadUpdated", "ThreadUpdated", "RunRequested", "RunAccepted", "RunRolledBack", "RunStarted", "RunSucceeded",
    ]
    assert f"run={first['run_id']}  rolled back" in text.stdout
    assert "strategy=rollback graph=echo" in text.stdout

    as_json = events_cli(nats_url, thread, "--json")
    records = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [r["type"] for r in records] == kinds
    assert [r["seq"] for r in records] == sorted(r["seq"] for r in records)
    assert records[-1]["run_id"] == second["run_id"]


async def test_follow_prints_events_as_they_are_appended(client, nats_url):
    thread = (await client.threads.create())["thread_id"]
    follower = subprocess.Popen(
        [sys.executable, "-m", "threadbus.cli", "events", thread, "--follow"],
        stdout=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, "NATS_URL": nats_url},
    )
    try:
        assert "ThreadCreated" in follower.stdout.readline()
        await client.runs.wait(thread, "echo", input=HI)
        seen = []
        while "RunSucceeded" not in (seen[-1] if seen else ""):
            seen.append(follower.stdout.readline())
        assert [line.split()[2] for line in seen] == ["ThreadUpdated", "RunRequested", "RunAccepted", "RunStarted", "RunSucceeded"]
    finally:
        follower.kill()
        follower.wait()


def test_an_unknown_thread_is_an_error(nats_url):
    result = events_cli(nats_url, "no-such-thread")
    assert result.returncode == 1 and "no events" in result.stderr
