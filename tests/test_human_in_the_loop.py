"""Human-in-the-loop: pauses, Command resumes, state edits and time travel, all from the log."""

from __future__ import annotations

import asyncio

import pytest
from langgraph_sdk import get_client

from tests.support import TEST_GRAPHS, ThreadbusProcess


def said(text: str) -> dict:
    return {"messages": [{"role": "human", "content": text}]}


def contents(values) -> list[str]:
    return [m["content"] for m in values["messages"]]


async def pause(client) -> tuple[str, dict]:
    tid = (await client.threads.create())["thread_id"]
    result = await client.runs.wait(tid, "pausing", input=said("go"))
    return tid, result


async def test_interrupt_pauses_and_command_resumes(client):
    tid, result = await pause(client)
    [pending] = result["__interrupt__"]
    assert pending["value"] == {"question": "approve?"} and pending["id"]
    assert contents(result) == ["go"]
    thread = await client.threads.get(tid)
    assert thread["status"] == "interrupted"
    assert [i["value"] for group in thread["interrupts"].values() for i in group] == [{"question": "approve?"}]
    state = await client.threads.get_state(tid)
    assert state["next"] == ["ask"]
    assert state["interrupts"][0]["id"] == pending["id"]
    assert state["tasks"][0]["interrupts"][0]["value"] == {"question": "approve?"}
    runs = await client.runs.list(tid)
    assert [r["status"] for r in runs] == ["success"]

    resumed = await client.runs.wait(tid, "pausing", command={"resume": "yes"})
    assert contents(resumed) == ["go", "approved: yes"]
    assert (await client.threads.get(tid))["status"] == "idle"


async def test_resuming_a_thread_that_is_not_paused_is_a_400(client):
    tid = (await client.threads.create())["thread_id"]
    await client.runs.wait(tid, "echo", input=said("hi"))
    with pytest.raises(Exception, match="400"):
        await client.runs.wait(tid, "pausing", command={"resume": "yes"})


async def test_several_interrupts_resumed_at_once_by_id(client):
    tid = (await client.threads.create())["thread_id"]
    result = await client.runs.wait(tid, "parallel_approvals", input=said("spend"))
    ids = {i["value"]["who"]: i["id"] for i in result["__interrupt__"]}
    assert set(ids) == {"legal", "finance"}
    done = await client.runs.wait(
        tid, "parallel_approvals", command={"resume": {ids["legal"]: "ok", ids["finance"]: "no"}}
    )
    assert sorted(done["decisions"]) == ["finance=no", "legal=ok"]


async def test_command_update_and_goto(client):
    tid, _ = await pause(client)
    result = await client.runs.wait(
        tid, "pausing", command={"update": {"messages": [{"role": "human", "content": "edited"}]}, "goto": "ask", "resume": "fine"}
    )
    assert "edited" in contents(result)


async def test_interrupt_before_and_after_then_continue(client):
    tid = (await client.threads.create())["thread_id"]
    paused = await client.runs.wait(tid, "two_step", input=said("q"), interrupt_before=["answer"])
    assert contents(paused) == ["q", "thinking about: q"] and "__interrupt__" not in paused
    assert (await client.threads.get_state(tid))["next"] == ["answer"]
    assert (await client.threads.get(tid))["status"] == "interrupted"
    finished = await client.runs.wait(tid, "two_step", input=None)
    assert contents(finished)[-1] == "answer to: q"

    tid = (await client.threads.create())["thread_id"]
    paused = await client.runs.wait(tid, "two_step", input=said("q"), interrupt_after="*")
    assert contents(paused) == ["q", "thinking about: q"]
    await client.runs.wait(tid, "two_step", input=None, interrupt_after="*")
    assert (await client.threads.get_state(tid))["next"] == []


async def test_a_one_node_graph_pauses_and_resumes_with_one_checkpoint_per_run(client):
    """One-node graphs run with durability "exit" (docs/durability.md): the state a run ends or
    pauses in is its only checkpoint, and pauses of every kind resume from it."""
    tid = (await client.threads.create())["thread_id"]
    paused = await client.runs.wait(tid, "echo", input=said("q"), interrupt_before=["reply"])
    assert contents(paused) == ["q"] and (await client.threads.get_state(tid))["next"] == ["reply"]
    assert contents(await client.runs.wait(tid, "echo", input=None)) == ["q", "echo: q"]
    # After the only node nothing is left to do, so there is nothing to pause before (as in LangGraph).
    after = await client.runs.wait(tid, "echo", input=said("r"), interrupt_after=["reply"])
    assert contents(after)[-1] == "echo: r" and (await client.threads.get_state(tid))["next"] == []
    assert len(await client.threads.get_history(tid, limit=100)) == 3  # one per run

    tid = (await client.threads.create())["thread_id"]
    first = await client.runs.wait(tid, "asking_twice", input=said("go"))
    assert first["__interrupt__"][0]["value"] == {"question": "first?"}
    second = await client.runs.wait(tid, "asking_twice", command={"resume": "a"})
    assert second["__interrupt__"][0]["value"] == {"question": "second?"}
    done = await client.runs.wait(tid, "asking_twice", command={"resume": "b"})
    assert contents(done) == ["go", "answers: a, b"]


async def test_a_run_that_names_its_durability_is_checkpointed_so(client):
    tid = (await client.threads.create())["thread_id"]
    await client.runs.wait(tid, "echo", input=said("q"), durability="sync")
    # The input, the state before the node and the state after it.
    assert len(await client.threads.get_history(tid)) == 3
    await client.runs.wait(tid, "echo", input=said("r"))
    assert len(await client.threads.get_history(tid)) == 4


async def test_interrupt_inside_a_subgraph(client):
    tid = (await client.threads.create())["thread_id"]
    result = await client.runs.wait(tid, "nested", input=said("deep"))
    assert result["__interrupt__"][0]["value"] == {"question": "approve?"}
    state = await client.threads.get_state(tid, subgraphs=True)
    assert state["next"] == ["inner"]
    inner = state["tasks"][0]["state"]
    assert inner is not None and inner["next"] == ["ask"]
    done = await client.runs.wait(tid, "nested", command={"resume": "deeply"})
    assert contents(done)[-1] == "approved: deeply"


async def test_several_pause_resume_cycles(client):
    tid = (await client.threads.create())["thread_id"]
    for i in range(3):
        paused = await client.runs.wait(tid, "pausing", input=said(f"q{i}"))
        assert paused["__interrupt__"]
        done = await client.runs.wait(tid, "pausing", command={"resume": f"a{i}"})
        assert contents(done)[-1] == f"approved: a{i}"
    assert len(await client.runs.list(tid)) == 6


async def test_edit_state_while_paused_and_refuse_while_busy(client):
    tid, _ = await pause(client)
    updated = await client.threads.update_state(tid, {"messages": [{"role": "ai", "content": "note"}]})
    assert updated["checkpoint"]["checkpoint_id"]
    state = await client.threads.get_state(tid)
    assert contents(state["values"]) == ["go", "note"]
    assert state["checkpoint"]["checkpoint_id"] == updated["checkpoint"]["checkpoint_id"]
    at = await client.threads.get_state(tid, checkpoint_id=updated["checkpoint"]["checkpoint_id"])
    assert contents(at["values"]) == ["go", "note"]

    busy = (await client.threads.create())["thread_id"]
    run = await client.runs.create(busy, "two_step", input=said("x"), config={"configurable": {"delay": 0.5}})
    from langgraph_sdk.errors import ConflictError

    with pytest.raises(ConflictError):
        await client.threads.update_state(busy, {"messages": [{"role": "ai", "content": "no"}]})
    await client.runs.join(busy, run["run_id"])


async def test_history_and_time_travel(client):
    tid = (await client.threads.create())["thread_id"]
    await client.runs.wait(tid, "two_step", input=said("one"))
    history = await client.threads.get_history(tid, limit=10)
    assert [len(h["values"].get("messages", [])) for h in history] == sorted(
        (len(h["values"].get("messages", [])) for h in history), reverse=True
    )
    after_think = next(h for h in history if h["next"] == ["answer"])
    older = await client.threads.get_history(tid, limit=10, before=after_think["checkpoint"]["checkpoint_id"])
    assert all(h["checkpoint"]["checkpoint_id"] < after_think["checkpoint"]["checkpoint_id"] for h in older)
    by_step = await client.threads.get_history(tid, metadata={"step": 1})
    assert [h["metadata"]["step"] for h in by_step] == [1]

    # Replay from the checkpoint before `answer`: the answer is produced again on a fork.
    replayed = await client.runs.wait(tid, "two_step", input=None, checkpoint_id=after_think["checkpoint"]["checkpoint_id"])
    assert contents(replayed) == ["one", "thinking about: one", "answer to: one"]
    newest = await client.threads.get_history(tid, limit=2)
    assert newest[1]["metadata"]["source"] == "fork"
    assert newest[1]["parent_checkpoint"]["checkpoint_id"] == after_think["checkpoint"]["checkpoint_id"]
    assert newest[0]["parent_checkpoint"]["checkpoint_id"] == newest[1]["checkpoint"]["checkpoint_id"]


async def test_copy_thread_copies_history(client):
    tid = (await client.threads.create(metadata={"k": "v"}))["thread_id"]
    await client.runs.wait(tid, "echo", input=said("hi"))
    copy = await client.threads.copy(tid)
    assert copy["thread_id"] != tid and copy["metadata"]["k"] == "v"
    original = await client.threads.get_history(tid)
    copied = await client.threads.get_history(copy["thread_id"])
    assert [h["values"] for h in copied] == [h["values"] for h in original]
    result = await client.runs.wait(copy["thread_id"], "echo", input=said("again"))
    assert contents(result) == ["hi", "echo: hi", "again", "echo: again"]
    assert contents((await client.threads.get_state(tid))["values"]) == ["hi", "echo: hi"]


async def test_pause_survives_a_full_restart(tmp_path):
    proc = ThreadbusProcess(
        ["dev", "--data-dir", str(tmp_path / "data"), "--config", str(TEST_GRAPHS)], log_path=tmp_path / "tb.log"
    ).start()
    try:
        tid, _ = await pause(get_client(url=proc.url))
    finally:
        proc.stop()
    proc.start()
    try:
        client = get_client(url=proc.url)
        assert (await client.threads.get(tid))["status"] == "interrupted"
        done = await client.runs.wait(tid, "pausing", command={"resume": "after restart"})
        assert contents(done) == ["go", "approved: after restart"]
    finally:
        proc.stop()


async def test_two_clients_resume_the_same_pause_at_once(client):
    tid, _ = await pause(client)

    async def resume(answer):
        try:
            # The resumed run lasts a second: the other request meets it in flight, however the
            # two are scheduled.
            return await client.runs.wait(
                tid, "pausing", command={"resume": answer}, multitask_strategy="reject", config={"configurable": {"delay": 1.0}}
            )
        except Exception as err:  # runs.wait raises httpx.HTTPStatusError
            return err

    results = await asyncio.gather(resume("a"), resume("b"))
    applied = [r for r in results if isinstance(r, dict)]
    refused = [r for r in results if not isinstance(r, dict)]
    assert len(applied) == 1 and len(refused) == 1
    assert "409" in str(refused[0])
    messages = contents((await client.threads.get_state(tid))["values"])
    assert len([m for m in messages if m.startswith("approved")]) == 1
