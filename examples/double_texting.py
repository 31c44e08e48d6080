"""LangGraph Academy's double-texting lesson, against a running server (``make dev``).

The four scenarios of the lesson, on the task mAIstro assistant, with the same requests:
reject (the second run is refused with 409), enqueue (both runs answer; the second sees the
ToDo the first added), interrupt (the first run ends ``interrupted``) and rollback (the first
run is gone: 404). Prints the conversations; exits 1 when an expectation fails.

    python examples/double_texting.py [URL]      # default http://127.0.0.1:8123
"""

from __future__ import annotations

import asyncio
import sys

import httpx
from langchain_core.messages import HumanMessage, convert_to_messages
from langgraph_sdk import get_client

GRAPH = "task_maistro"
CONFIG = {"configurable": {"user_id": "Test-Double-Texting"}}
failures: list[str] = []


def expect(ok: bool, what: str) -> None:
    print(("  ok: " if ok else "  FAILED: ") + what)
    if not ok:
        failures.append(what)


def said(text: str) -> dict:
    return {"messages": [HumanMessage(content=text)]}


async def show(client, thread_id: str) -> list:
    state = await client.threads.get_state(thread_id)
    messages = convert_to_messages(state["values"]["messages"])
    for m in messages:
        m.pretty_print()
    return messages


async def reject(client) -> None:
    print("\n## Reject")
    thread = await client.threads.create()
    tid = thread["thread_id"]
    run = await client.runs.create(tid, GRAPH, input=said("Add a ToDo to follow-up with DI Repairs."), config=CONFIG)
    try:
        await client.runs.create(
            tid, GRAPH, input=said("Add a ToDo to mount dresser to the wall."), config=CONFIG, multitask_strategy="reject"
        )
        expect(False, "the second run is rejected")
    except httpx.HTTPStatusError as e:
        print("Failed to start concurrent run", e)
        expect(e.response.status_code == 409, "the second run is rejected with 409")
    await client.runs.join(tid, run["run_id"])
    await show(client, tid)


async def enqueue(client) -> None:
    print("\n## Enqueue")
    tid = (await client.threads.create())["thread_id"]
    first = await client.runs.create(tid, GRAPH, input=said("Send Erik his t-shirt gift this weekend."), config=CONFIG)
    second = await client.runs.create(
        tid, GRAPH, input=said("Get cash and pay nanny for 2 weeks. Do this by Friday."), config=CONFIG, multitask_strategy="enqueue"
    )
    await client.runs.join(tid, second["run_id"])
    messages = await show(client, tid)
    humans = [m.content for m in messages if m.type == "human"]
    expect(len(humans) == 2, "both messages were answered, in order")
    statuses = [(await client.runs.get(tid, r["run_id"]))["status"] for r in (first, second)]
    expect(statuses == ["success", "success"], f"both runs succeeded ({statuses})")
    last = messages[-1].content
    expect("Send Erik his t-shirt gift" in last, "the second run sees the ToDo the first one stored")


async def interrupt(client) -> None:
    print("\n## Interrupt")
    tid = (await client.threads.create())["thread_id"]
    interrupted = await client.runs.create(tid, GRAPH, input=said("Give me a summary of my ToDos due tomorrow."), config=CONFIG)
    await asyncio.sleep(1)
    second = await client.runs.create(
        tid, GRAPH, input=said("Never mind, give me a summary of ToDos due next week."), config=CONFIG, multitask_strategy="interrupt"
    )
    await client.runs.join(tid, second["run_id"])
    await show(client, tid)
    status = (await client.runs.get(tid, interrupted["run_id"]))["status"]
    print("First run:", status)
    expect(status == "interrupted", "the first run was interrupted")


async def rollback(client) -> None:
    print("\n## Rollback")
    tid = (await client.threads.create())["thread_id"]
    rolled_back = await client.runs.create(tid, GRAPH, input=said("Add a ToDo to call to make appointment at salon."), config=CONFIG)
    second = await client.runs.create(
        tid, GRAPH, input=said("Add a ToDo to call to make appointment at barber."), config=CONFIG, multitask_strategy="rollback"
    )
    await client.runs.join(tid, second["run_id"])
    messages = await show(client, tid)
    try:
        await client.runs.get(tid, rolled_back["run_id"])
        expect(False, "the first run is deleted")
    except httpx.HTTPStatusError as e:
        print("Original run was correctly deleted")
        expect(e.response.status_code == 404, "the first run is gone (404)")
    expect([m.content for m in messages if m.type == "human"] == ["Add a ToDo to call to make appointment at barber."],
           "the thread holds only the second message")


async def main(url: str) -> int:
    client = get_client(url=url)
    for scenario in (reject, enqueue, interrupt, rollback):
        await scenario(client)
    print("\nAll expectations met." if not failures else f"\n{len(failures)} expectation(s) failed: {failures}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8123")))
