"""Streaming runs over SSE, through langgraph_sdk, against real processes.

The ``streamer`` test graph (tests/graphs/streaming_graphs.py) calls a tool through a fake chat
model, streams its answer token by token from another fake model, writes custom events and runs
a subgraph, so every stream mode has something to show.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
from langgraph_sdk import get_client

from tests.graphs.streaming_graphs import ANSWER
from tests.support import TEST_GRAPHS, ThreadbusProcess

QUESTION = {"messages": [{"role": "human", "content": "weather in Paris?"}]}
SLOW = {"configurable": {"token_delay": 0.15}}


async def collect(parts) -> list:
    return [part async for part in parts]


def events_of(parts: list) -> list[str]:
    return [p.event for p in parts]


@pytest.fixture(scope="module")
def second_gateway(server, nats_url, tmp_path_factory):
    """Another gateway on the session's broker, with a short heartbeat; the session's
    orchestrator and executor serve its runs."""
    proc = ThreadbusProcess(
        ["gateway", "--config", str(TEST_GRAPHS)],
        log_path=tmp_path_factory.mktemp("gateway-b") / "gateway.log",
        env={"NATS_URL": nats_url, "THREADBUS_STREAM_HEARTBEAT_S": "0.2"},
    ).start()
    yield proc
    proc.stop()


async def stream_mode(client, mode, **kwargs) -> list:
    thread = await client.threads.create()
    return await collect(client.runs.stream(thread["thread_id"], "streamer", input=QUESTION, stream_mode=mode, **kwargs))


async def test_a_stream_starts_with_metadata_and_ends_with_end(client):
    parts = await stream_mode(client, "values")
    assert parts[0].event == "metadata"
    assert set(parts[0].data) == {"run_id", "attempt"} and parts[0].data["attempt"] == 1
    assert parts[-1].event == "end"


async def test_values_mode_sends_the_state_after_each_step(client):
    parts = await stream_mode(client, "values")
    values = [p.data for p in parts if p.event == "values"]
    assert set(events_of(parts)) == {"metadata", "values", "end"}
    assert [m["type"] for m in values[0]["messages"]] == ["human"]
    final = values[-1]
    assert [m["type"] for m in final["messages"]] == ["human", "ai", "tool", "ai"]
    assert final["messages"][-1]["content"] == ANSWER
    assert final["summary"] == "4 messages"


async def test_updates_mode_sends_each_node_update_in_order(client):
    parts = await stream_mode(client, "updates")
    updates = [p.data for p in parts if p.event == "updates"]
    assert [next(iter(u)) for u in updates] == ["agent", "tools", "agent", "summarize"]
    assert updates[1]["tools"]["messages"][0]["content"] == "Paris: sunny"


async def test_messages_tuple_mode_streams_tokens_with_their_metadata(client):
    parts = await stream_mode(client, "messages-tuple")
    messages = [p.data for p in parts if p.event == "messages"]
    assert set(events_of(parts)) == {"metadata", "messages", "end"}
    assert all(isinstance(m, list) and len(m) == 2 for m in messages)
    tokens = [chunk["content"] for chunk, meta in messages if chunk["id"] == "answer-1"]
    assert len(tokens) > 5 and "".join(tokens) == ANSWER
    assert {meta["langgraph_node"] for chunk, meta in messages if chunk["id"] == "answer-1"} == {"agent"}
    tool_calls = [chunk["tool_calls"] for chunk, _ in messages if chunk.get("tool_calls")]
    assert tool_calls[0][0]["name"] == "lookup"
    assert any(chunk["type"] == "tool" for chunk, _ in messages)


async def test_messages_mode_sends_metadata_then_the_message_so_far(client):
    parts = await stream_mode(client, "messages")
    answer = [p for p in parts if p.event.startswith("messages/") and "answer-1" in str(p.data)]
    assert answer[0].event == "messages/metadata" and "answer-1" in answer[0].data
    partials = [p.data[0]["content"] for p in answer if p.event == "messages/partial"]
    assert partials[-1] == ANSWER
    assert all(b.startswith(a) for a, b in zip(partials, partials[1:]))  # accumulated, not deltas
    assert "messages/complete" in events_of(parts)  # the tool message arrives whole


async def test_events_mode_sends_astream_events(client):
    parts = await stream_mode(client, "events")
    kinds = [p.data["event"] for p in parts if p.event == "events"]
    assert set(events_of(parts)) == {"metadata", "events", "end"}
    assert kinds[0] == "on_chain_start"
    assert kinds.count("on_chat_model_stream") > 5
    tools = [p.data for p in parts if p.event == "events" and p.data["event"] == "on_tool_start"]
    assert tools[0]["name"] == "lookup" and tools[0]["data"]["input"] == {"city": "Paris"}


async def test_custom_mode_sends_what_nodes_write(client):
    parts = await stream_mode(client, "custom")
    assert [p.data for p in parts if p.event == "custom"] == [{"progress": "calling a tool"}, {"progress": "answering"}]


@pytest.mark.parametrize("mode", ["debug", "checkpoints", "tasks"])
async def test_debug_checkpoints_and_tasks_modes(client, mode):
    parts = await stream_mode(client, mode)
    data = [p.data for p in parts if p.event == mode]
    assert data and set(events_of(parts)) == {"metadata", mode, "end"}
    if mode == "debug":
        assert {d["type"] for d in data} == {"checkpoint", "task", "task_result"}
    elif mode == "checkpoints":
        assert {"config", "values", "next", "metadata"} <= set(data[-1])
        assert data[-1]["values"]["messages"][-1]["content"] == ANSWER
    else:
        names = [d["name"] for d in data if "input" in d]
        assert names == ["agent", "tools", "agent", "summarize"]
        assert [d["name"] for d in data if "result" in d] == names


async def test_several_modes_and_subgraph_events(client):
    parts = await stream_mode(client, ["updates", "custom"], stream_subgraphs=True)
    names = events_of(parts)
    inner = [p for p in parts if p.event.startswith("custom|summarize:")]
    assert [p.data for p in inner] == [{"progress": "summarizing"}]
    assert any(n.startswith("updates|summarize:") for n in names)
    assert names.index("custom") < names.index("updates")  # in the order the graph produced them


async def test_a_failed_graph_sends_error_then_end(client):
    thread = await client.threads.create()
    parts = await collect(client.runs.stream(thread["thread_id"], "failing", input=QUESTION))
    assert events_of(parts)[-2:] == ["error", "end"]
    assert parts[-2].data == {"error": "ValueError", "message": "kaboom"}


async def test_stateless_stream(client):
    parts = await collect(client.runs.stream(None, "streamer", input=QUESTION, stream_mode="updates"))
    assert events_of(parts)[0] == "metadata" and events_of(parts)[-1] == "end"
    assert len([p for p in parts if p.event == "updates"]) == 4


async def test_resumable_ids_increase_and_join_replays_from_any_point(client):
    thread = (await client.threads.create())["thread_id"]
    parts = await collect(
        client.runs.stream(thread, "streamer", input=QUESTION, stream_mode=["updates", "custom"], stream_resumable=True)
    )
    run_id = parts[0].data["run_id"]
    ids = [int(p.id) for p in parts if p.event not in ("metadata", "end")]
    assert ids == sorted(set(ids)) and len(ids) == 6

    replay = await collect(client.runs.join_stream(thread, run_id, last_event_id="-"))
    assert [(p.event, p.data) for p in replay] == [(p.event, p.data) for p in parts[1:]]

    middle = str(ids[2])
    rest = await collect(client.runs.join_stream(thread, run_id, last_event_id=middle))
    assert [int(p.id) for p in rest if p.event != "end"] == ids[3:]

    only_custom = await collect(client.runs.join_stream(thread, run_id, last_event_id="-", stream_mode="custom"))
    assert events_of(only_custom) == ["custom", "custom", "end"]


async def test_join_without_last_event_id_sees_only_new_events(client):
    thread = (await client.threads.create())["thread_id"]
    first: list = []
    joined: list = []
    stream = client.runs.stream(
        thread, "streamer", input=QUESTION, config=SLOW, stream_mode="messages-tuple", stream_resumable=True
    )
    async for part in stream:
        first.append(part)
        if part.event == "messages" and part.data[0]["content"] == "weather":
            seen = int(part.id)
            run_id = first[0].data["run_id"]
            joined = await collect(client.runs.join_stream(thread, run_id))
    assert joined[-1].event == "end" and first[-1].event == "end"
    joined_ids = [int(p.id) for p in joined if p.event == "messages"]
    assert joined_ids and min(joined_ids) > seen
    assert [p.data for p in joined if p.event == "messages"] == [p.data for p in first if p.event == "messages" and int(p.id) in joined_ids]


async def test_joining_a_finished_run_gives_its_result_and_end(client):
    thread = (await client.threads.create())["thread_id"]
    run = await client.runs.create(thread, "streamer", input=QUESTION)
    await client.runs.join(thread, run["run_id"])
    parts = await collect(client.runs.join_stream(thread, run["run_id"]))
    assert events_of(parts) == ["values", "end"]
    assert parts[0].data["messages"][-1]["content"] == ANSWER


async def test_reject_answers_409_before_any_event(client):
    thread = (await client.threads.create())["thread_id"]
    running = await client.runs.create(thread, "streamer", input=QUESTION, config=SLOW)
    with pytest.raises(httpx.HTTPStatusError) as err:
        await collect(client.runs.stream(thread, "streamer", input=QUESTION, multitask_strategy="reject"))
    assert err.value.response.status_code == 409
    await client.runs.join(thread, running["run_id"])


@pytest.mark.parametrize("strategy", ["interrupt", "rollback"])
async def test_double_texting_ends_the_first_stream_cleanly(client, strategy):
    thread = (await client.threads.create())["thread_id"]
    first: list = []
    second_run = None
    async for part in client.runs.stream(thread, "streamer", input=QUESTION, config=SLOW, stream_mode="messages-tuple"):
        first.append(part)
        if second_run is None and part.event == "messages" and part.data[0]["id"] == "answer-1":
            second_run = await client.runs.create(thread, "echo", input=QUESTION, multitask_strategy=strategy)
    assert first[-1].event == "end"
    tokens = [p.data[0]["content"] for p in first if p.event == "messages" and p.data[0]["id"] == "answer-1"]
    assert "".join(tokens) != ANSWER  # it stopped mid-answer
    await client.runs.join(thread, second_run["run_id"])
    runs = {r["run_id"]: r["status"] for r in await client.runs.list(thread)}
    first_run = first[0].data["run_id"]
    assert runs[second_run["run_id"]] == "success"
    assert (runs.get(first_run) == "interrupted") if strategy == "interrupt" else (first_run not in runs)


async def test_on_disconnect_cancel_stops_the_run_and_default_continues(client):
    async def leave_early(**kwargs) -> tuple[str, str]:
        thread = (await client.threads.create())["thread_id"]
        async for part in client.runs.stream(thread, "streamer", input=QUESTION, config=SLOW, **kwargs):
            if part.event == "metadata":
                run_id = part.data["run_id"]
                break
        await client.runs.join(thread, run_id)
        return thread, run_id

    thread, run_id = await leave_early(on_disconnect="cancel")
    assert (await client.runs.get(thread, run_id))["status"] == "interrupted"
    thread, run_id = await leave_early()
    assert (await client.runs.get(thread, run_id))["status"] == "success"


async def test_a_run_streamed_on_one_gateway_is_joined_on_another(client, second_gateway):
    other = get_client(url=second_gateway.url)
    thread = (await client.threads.create())["thread_id"]
    on_a: list = []
    on_b: list = []
    async for part in client.runs.stream(
        thread, "streamer", input=QUESTION, config=SLOW, stream_mode="messages-tuple", stream_resumable=True
    ):
        on_a.append(part)
        if not on_b and part.event == "messages":
            on_b = await collect(other.runs.join_stream(thread, on_a[0].data["run_id"], last_event_id="-"))
    assert [(p.event, p.data) for p in on_b] == [(p.event, p.data) for p in on_a[1:]]


async def test_idle_streams_get_heartbeats(second_gateway):
    async with httpx.AsyncClient(base_url=second_gateway.url, timeout=30) as http:
        thread = (await http.post("/threads", json={})).json()["thread_id"]
        body = {"assistant_id": "two_step", "input": QUESTION, "config": {"configurable": {"delay": 0.6}}}
        async with http.stream("POST", f"/threads/{thread}/runs/stream", json=body) as res:
            text = "".join([chunk async for chunk in res.aiter_text()])
    assert ": heartbeat" in text
    assert text.rstrip().endswith("event: end\ndata: null")


async def test_a_resumable_stream_survives_its_gateway_being_killed(nats_url, server, tmp_path):
    def gateway(port=None) -> ThreadbusProcess:
        return ThreadbusProcess(
            ["gateway", "--config", str(TEST_GRAPHS)],
            log_path=tmp_path / "gateway.log",
            env={"NATS_URL": nats_url},
            port=port,
        ).start()

    first = gateway()
    replacement = None
    client = get_client(url=first.url)
    try:
        thread = (await client.threads.create())["thread_id"]
        seen: list = []
        async for part in client.runs.stream(
            thread, "streamer", input=QUESTION, config=SLOW, stream_mode="messages-tuple", stream_resumable=True
        ):
            seen.append(part)
            if replacement is None and part.event == "messages" and part.data[0]["content"] == "weather":
                first.kill()
                replacement = await asyncio.to_thread(gateway, first.port)
        assert replacement is not None and seen[-1].event == "end"
        ids = [int(p.id) for p in seen if p.event == "messages"]
        assert ids == sorted(set(ids)), "every event exactly once, in order"
        everything = await collect(client.runs.join_stream(thread, seen[0].data["run_id"], last_event_id="-"))
        assert [(p.event, p.data) for p in seen[1:]] == [(p.event, p.data) for p in everything]
    finally:
        first.kill()
        if replacement is not None:
            replacement.stop()


async def test_thread_stream_follows_every_run_with_run_done(client):
    thread = (await client.threads.create())["thread_id"]
    followed: list = []

    async def follow():
        # From the start of the thread ("-"), so the test does not depend on when it connected.
        async for part in await client.threads.join_stream(thread, last_event_id="-"):
            followed.append(part)
            if len([p for p in followed if p.event == "metadata"]) == 2:
                return

    listener = asyncio.create_task(follow())
    runs = [await client.runs.wait(thread, "two_step", input=QUESTION) for _ in range(2)]
    await asyncio.wait_for(listener, 30)
    assert runs[0] and runs[1]
    done = [p for p in followed if p.event == "metadata"]
    assert [d.data["status"] for d in done] == ["run_done", "run_done"]
    order = events_of(followed)
    assert order == ["values", "values", "values", "metadata"] * 2


async def test_joining_after_the_stream_log_expired_gives_the_result_and_end(tmp_path):
    # Its own broker: the stream log's max age is a property of the stream.
    proc = ThreadbusProcess(
        ["dev", "--data-dir", str(tmp_path / "data"), "--config", str(TEST_GRAPHS)],
        log_path=tmp_path / "threadbus.log",
        env={"THREADBUS_STREAM_MAX_AGE_S": "1"},
    ).start()
    try:
        client = get_client(url=proc.url)
        thread = (await client.threads.create())["thread_id"]
        parts = await collect(client.runs.stream(thread, "streamer", input=QUESTION, stream_resumable=True))
        run_id = parts[0].data["run_id"]
        while [p for p in await collect(client.runs.join_stream(thread, run_id, last_event_id="-")) if p.id]:
            await asyncio.sleep(0.2)  # until the broker has expired the run's events
        for last_event_id in ("-", parts[-2].id, None):
            joined = await collect(client.runs.join_stream(thread, run_id, last_event_id=last_event_id))
            assert events_of(joined) == ["values", "end"]
            assert joined[0].data["messages"][-1]["content"] == ANSWER
    finally:
        proc.stop()
