"""Every query parameter of the searches behaves as on LangGraph Platform, through the SDK."""

from __future__ import annotations

import uuid

import pytest
from langgraph_sdk.errors import UnprocessableEntityError


def said(text: str) -> dict:
    return {"messages": [{"role": "human", "content": text}]}


@pytest.fixture
async def tagged_threads(client):
    """Three threads of one test, told apart by ``metadata.tag``; the second has run twice and
    the third is paused."""
    tag = uuid.uuid4().hex
    threads = [(await client.threads.create(metadata={"tag": tag, "n": i}))["thread_id"] for i in range(3)]
    await client.runs.wait(threads[1], "echo", input=said("one"))
    await client.runs.wait(threads[1], "echo", input=said("two"))
    await client.runs.wait(threads[2], "pausing", input=said("wait"))
    return tag, threads


async def test_threads_search_filters_sorts_pages_selects_and_extracts(client, tagged_threads):
    tag, threads = tagged_threads
    found = await client.threads.search(metadata={"tag": tag}, sort_by="created_at", sort_order="asc")
    assert [t["thread_id"] for t in found] == threads
    desc = await client.threads.search(metadata={"tag": tag}, sort_by="created_at", sort_order="desc")
    assert [t["thread_id"] for t in desc] == threads[::-1]
    page = await client.threads.search(metadata={"tag": tag}, sort_by="created_at", sort_order="asc", limit=1, offset=1)
    assert [t["thread_id"] for t in page] == [threads[1]]
    assert [t["thread_id"] for t in await client.threads.search(metadata={"tag": tag, "n": 2})] == [threads[2]]
    assert [t["thread_id"] for t in await client.threads.search(metadata={"tag": tag}, status="interrupted")] == [threads[2]]
    assert [t["thread_id"] for t in await client.threads.search(ids=[threads[0], threads[2]], sort_by="thread_id")] == sorted(
        [threads[0], threads[2]], reverse=True
    )
    by_values = await client.threads.search(metadata={"tag": tag}, values={"messages": [{"content": "echo: two"}]})
    assert [t["thread_id"] for t in by_values] == [threads[1]]
    selected = await client.threads.search(metadata={"tag": tag}, select=["thread_id", "status"], sort_by="created_at")
    assert all(set(t) == {"thread_id", "status"} for t in selected)
    extracted = await client.threads.search(
        ids=[threads[1]], select=["thread_id"], extract={"last": "values.messages[-1].content", "none": "values.nope[3]"}
    )
    assert extracted == [{"thread_id": threads[1], "extracted": {"last": "echo: two", "none": None}}]
    ordered = [t["thread_id"] for t in await client.threads.search(metadata={"tag": tag}, sort_by="updated_at")]
    assert ordered[-1] == threads[0]  # never ran: the least recently updated


async def test_threads_count_takes_the_same_filters(client, tagged_threads):
    tag, threads = tagged_threads
    assert await client.threads.count(metadata={"tag": tag}) == 3
    assert await client.threads.count(metadata={"tag": tag}, status="idle") == 2
    assert await client.threads.count(metadata={"tag": tag}, values={"messages": [{"content": "echo: one"}]}) == 1


async def test_an_unknown_select_field_or_too_many_extracts_is_a_422(client, tagged_threads):
    with pytest.raises(UnprocessableEntityError):
        await client.threads.search(select=["no_such_field"])
    with pytest.raises(UnprocessableEntityError):
        await client.threads.search(extract={f"k{i}": "values" for i in range(11)})


async def test_runs_list_pages_filters_and_selects(client, tagged_threads):
    _, threads = tagged_threads
    runs = await client.runs.list(threads[1])
    assert [r["status"] for r in runs] == ["success", "success"]
    assert runs[0]["kwargs"]["input"] == said("two")  # newest first
    assert [r["run_id"] for r in await client.runs.list(threads[1], limit=1, offset=1)] == [runs[1]["run_id"]]
    assert await client.runs.list(threads[1], status="error") == []
    assert all(set(r) == {"run_id", "status"} for r in await client.runs.list(threads[1], select=["run_id", "status"]))


async def test_assistants_search_and_count(client):
    graph_tag = uuid.uuid4().hex
    made = [
        await client.assistants.create("echo", name=f"{name}-{graph_tag}", metadata={"tag": graph_tag}) for name in ("b", "a", "c")
    ]
    by_name = await client.assistants.search(metadata={"tag": graph_tag}, sort_by="name", sort_order="asc")
    assert [a["name"] for a in by_name] == [f"{n}-{graph_tag}" for n in "abc"]
    page = await client.assistants.search(metadata={"tag": graph_tag}, sort_by="name", sort_order="asc", limit=1, offset=2)
    assert [a["assistant_id"] for a in page] == [made[2]["assistant_id"]]
    selected = await client.assistants.search(metadata={"tag": graph_tag}, select=["assistant_id", "name"])
    assert all(set(a) == {"assistant_id", "name"} for a in selected)
    assert await client.assistants.count(metadata={"tag": graph_tag}) == 3
    assert await client.assistants.count(metadata={"tag": graph_tag}, name="a-") == 1
