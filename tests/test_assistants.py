"""Assistants and their versions, through langgraph_sdk."""

from __future__ import annotations

import pytest
from langgraph_sdk.errors import NotFoundError

HI = {"messages": [{"role": "human", "content": "hi"}]}


async def test_patch_makes_a_new_version_and_latest_switches_between_them(client):
    created = await client.assistants.create("configured", config={"configurable": {"greeting": "v1"}}, name="greeter")
    aid = created["assistant_id"]
    v2 = await client.assistants.update(aid, config={"configurable": {"greeting": "v2"}}, metadata={"stage": "beta"})
    assert v2["version"] == 2 and v2["metadata"] == {"stage": "beta"}

    versions = await client.assistants.get_versions(aid)
    assert [v["version"] for v in versions] == [2, 1]
    assert [v["config"]["configurable"]["greeting"] for v in versions] == ["v2", "v1"]
    assert [v["version"] for v in await client.assistants.get_versions(aid, metadata={"stage": "beta"})] == [2]

    thread = (await client.threads.create())["thread_id"]
    assert (await client.runs.wait(thread, aid, input=HI))["messages"][-1]["content"] == "v2"

    back = await client.assistants.set_latest(aid, 1)
    assert back["version"] == 1 and back["config"]["configurable"]["greeting"] == "v1"
    assert (await client.assistants.get(aid))["version"] == 1
    assert (await client.runs.wait(thread, aid, input=HI))["messages"][-1]["content"] == "v1"

    # A patch after going back is a new version, numbered after every existing one.
    v3 = await client.assistants.update(aid, name="greeter 3")
    assert v3["version"] == 3 and v3["config"]["configurable"]["greeting"] == "v1"

    with pytest.raises(NotFoundError):
        await client.assistants.set_latest(aid, 9)
    await client.assistants.delete(aid)
    with pytest.raises(NotFoundError):
        await client.assistants.get_versions(aid)


async def test_run_config_wins_over_the_assistants(client):
    aid = (await client.assistants.create("configured", config={"configurable": {"greeting": "assistant"}}))["assistant_id"]
    thread = (await client.threads.create())["thread_id"]
    result = await client.runs.wait(thread, aid, input=HI, config={"configurable": {"greeting": "run"}})
    assert result["messages"][-1]["content"] == "run"
    assert (await client.runs.wait(thread, aid, input=HI))["messages"][-1]["content"] == "assistant"


async def test_graph_assistants_have_a_first_version(client):
    versions = await client.assistants.get_versions("echo")
    assert [v["version"] for v in versions] == [1]
    assert versions[0]["graph_id"] == "echo"
