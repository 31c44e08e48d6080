"""The v3 thread protocol (``client.threads.stream``) through the installed SDK, over SSE and WebSocket."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import orjson
import pytest
from langgraph.pregel.remote import RemoteGraph
from langgraph.types import Command
from langgraph_sdk.stream.transport import ProtocolSseTransport

pytestmark = pytest.mark.timeout(60)

TRANSPORTS = ["sse", "websocket"]
HI = {"messages": [{"role": "user", "content": "hi"}]}
# A projection iterated once the run has paused waits for the next run (the SDK's design): tokens
# slow enough that the iteration below each run.start begins while the run is still streaming.
PACED = {"configurable": {"token_delay": 0.05}}
STRAIGHT_THROUGH = {"configurable": {"no_pause": True, "token_delay": 0.05}}


def _texts(values) -> list[str]:
    return [m["content"] for m in (values or {}).get("messages", []) if isinstance(m["content"], str)]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_values_until_the_interrupt_then_respond_and_output(client, transport):
    async with client.threads.stream(assistant_id="v3_agent", transport=transport) as thread:
        await thread.run.start(input=HI, config=PACED)
        snapshots = [s async for s in thread.values]
        assert thread.interrupted
        assert [i["value"] for i in thread.interrupts] == ["Are we good?"]
        assert "Hello, world!" in _texts(snapshots[-1])
        await thread.run.respond("yes")
        output = await thread.output
    assert output["note"] == "ran"
    assert "Human said: yes" in _texts_of_output(output)
    runs = await client.runs.list(thread.thread_id)
    assert sorted(r["status"] for r in runs) == ["success", "success"]  # ordinary runs, seen by the classic API


def _texts_of_output(output) -> list[str]:
    return [m["content"] for m in output["messages"] if isinstance(m["content"], str)]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_sync_values_respond_output(sync_client, transport):
    with sync_client.threads.stream(assistant_id="v3_agent", transport=transport) as thread:
        thread.run.start(input=HI, config=PACED)
        snapshots = list(thread.values)
        assert thread.interrupted and snapshots
        thread.run.respond("fine")
        output = thread.output
    assert output["note"] == "ran" and "Human said: fine" in _texts_of_output(output)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_messages_text_is_exactly_what_was_streamed(client, transport):
    async with client.threads.stream(assistant_id="v3_agent", transport=transport) as thread:
        await thread.run.start(input=HI, config=PACED)
        # The projection feeds each message while it is iterated: read the texts after it.
        messages = [message async for message in thread.messages]
        texts = [await message.text for message in messages]
    assert texts == ["Hello, world!"]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_tool_events_of_a_create_agent_graph(client, transport):
    async with client.threads.stream(assistant_id="v3_tools", transport=transport) as thread:
        await thread.run.start(input={"messages": [{"role": "user", "content": "search for v3"}]})
        handles = [call async for call in thread.tool_calls]
        calls = [(call.name, call.input, await call.output) for call in handles]
        output = await thread.output
    assert [(name, args) for name, args, _ in calls] == [("search", {"query": "v3"})]
    assert calls[0][2]["content"] == "result for 'v3'"
    assert output["messages"][-1]["content"] == "done."


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_subgraph_lifecycle(client, transport):
    async with client.threads.stream(assistant_id="v3_agent", transport=transport) as thread:
        await thread.run.start(input=HI, config=STRAIGHT_THROUGH)
        handles = [h async for h in thread.subgraphs]
        await thread.output
    assert [h.graph_name for h in handles] == ["run_subgraph"]
    assert handles[0].status == "completed"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_custom_extensions_by_name(client, transport):
    async with client.threads.stream(assistant_id="v3_agent", transport=transport) as thread:
        await thread.run.start(input=HI, config=STRAIGHT_THROUGH)
        progress = [(p["step"], p.get("phase")) async for p in thread.extensions["progress"]]
    assert progress == [("speak", "start"), ("speak", "end"), ("sub_node", None)]


async def test_two_threads_streamed_at_once(client):
    async def conversation(word: str):
        async with client.threads.stream(assistant_id="v3_agent") as thread:
            await thread.run.start(input={"messages": [{"role": "user", "content": word}]}, config=STRAIGHT_THROUGH)
            seen = [s async for s in thread.values]
            return thread.thread_id, seen, await thread.output

    (first_id, first, first_out), (second_id, second, second_out) = await asyncio.gather(conversation("one"), conversation("two"))
    assert first_id != second_id
    assert all("two" not in _texts(s) for s in first) and all("one" not in _texts(s) for s in second)
    assert _texts_of_output(first_out)[0] == "one" and _texts_of_output(second_out)[0] == "two"


async def test_closing_mid_stream_and_reconnecting_replays_no_duplicate(server, client):
    async with client.threads.stream(assistant_id="v3_agent") as thread:
        await thread.run.start(input=HI, config=STRAIGHT_THROUGH)
        await thread.output
        thread_id = thread.thread_id
    async with httpx.AsyncClient(base_url=server.url) as http:
        transport = ProtocolSseTransport(client=http, thread_id=thread_id)
        full = await _read(transport, {"channels": ["values", "messages", "lifecycle", "custom"]}, until_root_end=True)
        first = await _read(transport, {"channels": ["values", "messages", "lifecycle", "custom"]}, count=5)
        rest = await _read(
            transport, {"channels": ["values", "messages", "lifecycle", "custom"], "since": first[-1]["seq"]}, until_root_end=True
        )
        await transport.close()
    ids = [e["event_id"] for e in first + rest]
    assert len(ids) == len(set(ids)) and ids == [e["event_id"] for e in full]
    seqs = [e["seq"] for e in full]
    assert seqs == sorted(seqs)


async def _read(transport, params, *, count=None, until_root_end=False):
    handle = transport.open_event_stream(params)
    await handle.ready
    got = []
    async with asyncio.timeout(20):
        async for event in handle.events:
            got.append(event)
            if count is not None and len(got) == count:
                break
            if until_root_end and _root_end(event):
                break
    await handle.close()
    return got


def _root_end(event) -> bool:
    params = event["params"]
    return event["method"] == "lifecycle" and not params["namespace"] and params["data"]["event"] in ("completed", "failed")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_cancel_mid_run_ends_the_iterators(client, transport):
    async with client.threads.stream(assistant_id="v3_agent", transport=transport) as thread:
        run = await thread.run.start(input=HI, config={"configurable": {"token_delay": 0.1, "tokens": 200}})
        steps = []
        async for progress in thread.extensions["progress"]:  # ends with the run
            steps.append(progress["phase"])
            await client.runs.cancel(thread.thread_id, run["run_id"])
        with pytest.raises(RuntimeError, match="cancelled"):
            await thread.output
    assert steps == ["start"]  # cancelled while the answer was streaming
    assert (await client.runs.get(thread.thread_id, run["run_id"]))["status"] == "interrupted"


async def test_a_run_cancelled_before_it_starts_ends_on_the_stream(client, server):
    async with client.threads.stream(assistant_id="v3_agent") as thread:
        slow = await thread.run.start(input=HI, config={"configurable": {"token_delay": 0.2, "tokens": 100}})
        queued = await thread.run.start(input=HI)  # enqueued behind the slow one
        assert (await client.runs.get(thread.thread_id, queued["run_id"]))["status"] == "pending"
        await client.runs.cancel(thread.thread_id, queued["run_id"])
        async with httpx.AsyncClient(base_url=server.url) as http:
            transport = ProtocolSseTransport(client=http, thread_id=thread.thread_id)
            events = await _read(transport, {"channels": ["lifecycle"]}, until_root_end=True)
            await transport.close()
        assert events[-1]["params"]["data"] == {"event": "failed", "error": "Run cancelled"}
        assert (await client.runs.get(thread.thread_id, slow["run_id"]))["status"] == "running"
        await client.runs.cancel(thread.thread_id, slow["run_id"], wait=True)


async def test_update_state_while_paused(client):
    async with client.threads.stream(assistant_id="v3_agent") as thread:
        await thread.run.start(input=HI, config=PACED)
        [_ async for _ in thread.values]
        assert thread.interrupted
        await client.threads.update_state(thread.thread_id, {"note": "edited"}, as_node="speak")
        state = await client.threads.get_state(thread.thread_id)
        assert state["values"]["note"] == "edited" and state["next"] == ["ask_human"]
    async with client.threads.stream(thread.thread_id, assistant_id="v3_agent") as thread:
        await thread.run.start(input="after the edit")  # input for a paused thread answers the interrupt
        output = await thread.output
    assert "Human said: after the edit" in _texts_of_output(output)


async def test_agent_get_tree(client):
    async with client.threads.stream(assistant_id="v3_agent") as thread:
        with pytest.raises(RuntimeError, match="no_such_run"):
            await thread._send_command("agent.getTree", {})
        await thread.run.start(input=HI, config=STRAIGHT_THROUGH)
        await thread.output
        result = await thread._send_command("agent.getTree", {})
    assert result["tree"] == {"namespace": [], "status": "completed", "graph_name": "v3_agent"}


async def test_remote_graph_v3_happy_path_interrupt_resume(server):
    remote = RemoteGraph("v3_agent", url=server.url)
    config = {"configurable": {"thread_id": str(uuid.uuid4()), "token_delay": 0.05}}
    async with await remote.astream_events(HI, config, version="v3") as run:
        snapshots = [s async for s in run.values]  # until the pause
        assert snapshots and await run.interrupted()
        assert [i["value"] for i in await run.interrupts()] == ["Are we good?"]
    async with await remote.astream_events(Command(resume="sure"), config, version="v3") as run:
        output = await run.output()
    assert output["note"] == "ran" and "Human said: sure" in _texts_of_output(output)


async def test_remote_graph_v3_abort(server, client):
    remote = RemoteGraph("v3_agent", url=server.url)
    thread_id = str(uuid.uuid4())
    config = {"configurable": {"thread_id": thread_id, "token_delay": 0.2, "tokens": 200}}
    async with await remote.astream_events(HI, config, version="v3") as run:
        async for _ in run.extensions["progress"]:  # the answer has started streaming
            break
        await run.abort()
    async with asyncio.timeout(20):
        while (runs := await client.runs.list(thread_id)) and runs[0]["status"] in ("pending", "running"):
            await asyncio.sleep(0.1)
    assert runs[0]["status"] == "interrupted"


# -- bad input: the protocol's errors, never a 500 --------------------------------------------


async def _command(http: httpx.AsyncClient, thread_id: str, body) -> httpx.Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return await http.post(f"/threads/{thread_id}/commands", content=content, headers={"content-type": "application/json"})


async def test_bad_commands_get_the_protocols_errors(server):
    thread_id = str(uuid.uuid4())
    async with httpx.AsyncClient(base_url=server.url) as http:
        unknown = await _command(http, thread_id, {"id": 1, "method": "run.fly", "params": {}})
        assert unknown.status_code == 200 and unknown.json() == {
            "type": "error", "id": 1, "error": "unknown_command", "message": "unknown method 'run.fly'"
        }
        missing_id = await _command(http, thread_id, {"method": "run.start", "params": {}})
        assert missing_id.status_code == 400 and missing_id.json()["id"] is None
        assert missing_id.json()["error"] == "invalid_argument"
        not_json = await _command(http, thread_id, b"{nope")
        assert not_json.status_code == 400 and "detail" in not_json.json()
        no_assistant = await _command(http, thread_id, {"id": 2, "method": "run.start", "params": {}})
        assert no_assistant.json()["error"] == "invalid_argument"
        bad_assistant = await _command(http, thread_id, {"id": 3, "method": "run.start", "params": {"assistant_id": "nope"}})
        assert bad_assistant.json()["error"] == "invalid_argument"
        nothing_paused = await _command(http, thread_id, {"id": 4, "method": "input.respond", "params": {"interrupt_id": "x", "response": 1}})
        assert nothing_paused.json()["error"] == "no_such_run"
        for body, problem in (
            ({"channels": ["values", "nope"]}, "unknown channel"),
            ({"channels": []}, "non-empty"),
            ({"channels": ["values"], "since": -1}, "since"),
            ({"channels": ["values"], "depth": -2}, "depth"),
        ):
            response = await http.post(f"/threads/{thread_id}/stream/events", json=body)
            assert response.status_code == 400 and problem in response.json()["detail"]


async def test_an_unknown_interrupt_id(client, server):
    async with client.threads.stream(assistant_id="v3_agent") as thread:
        await thread.run.start(input=HI, config=PACED)
        [_ async for _ in thread.values]
        with pytest.raises(RuntimeError, match="no_such_interrupt"):
            await thread._send_command("input.respond", {"interrupt_id": "not-one", "response": "x"})
        await thread.run.respond("ok")
        await thread.output
        with pytest.raises(RuntimeError, match="no_such_run"):  # consumed: nothing is paused any more
            await thread._send_command("input.respond", {"interrupt_id": thread.thread_id, "response": "x"})


async def test_a_websocket_sent_garbage_closes_cleanly(server):
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    url = server.url.replace("http", "ws") + f"/threads/{uuid.uuid4()}/stream/events"
    async with connect(url) as socket:
        await socket.send(orjson.dumps({"id": 7, "method": "subscription.unsubscribe", "params": {"subscription_id": "x"}}).decode())
        reply = orjson.loads(await socket.recv())
        assert reply == {"type": "error", "id": 7, "error": "no_such_subscription", "message": "no subscription 'x'"}
        await socket.send(orjson.dumps({"id": 8, "method": "subscription.subscribe", "params": {"channels": ["bogus"]}}).decode())
        assert orjson.loads(await socket.recv())["error"] == "invalid_argument"
        await socket.send("this is not json")
        assert orjson.loads(await socket.recv())["error"] == "invalid_argument"
        with pytest.raises(ConnectionClosed) as closed:
            await socket.recv()
    assert closed.value.rcvd.code == 4400


async def test_a_websocket_delivers_each_event_once_across_subscriptions(client, server):
    from websockets.asyncio.client import connect

    async with client.threads.stream(assistant_id="v3_agent") as thread:
        await thread.run.start(input=HI, config=STRAIGHT_THROUGH)
        await thread.output
    url = server.url.replace("http", "ws") + f"/threads/{thread.thread_id}/stream/events"
    async with connect(url) as socket:
        for command_id, channels in ((1, ["values", "lifecycle"]), (2, ["values", "custom"])):
            await socket.send(orjson.dumps({"id": command_id, "method": "subscription.subscribe", "params": {"channels": channels}}).decode())
        frames = []
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1.5):
                while True:
                    frames.append(orjson.loads(await socket.recv()))
    replies = [f for f in frames if f["type"] == "success"]
    events = [f for f in frames if f["type"] == "event"]
    assert [r["id"] for r in replies] == [1, 2]
    assert len({e["seq"] for e in events}) == len(events)
    assert {e["method"] for e in events} == {"values", "lifecycle", "custom"}
    assert replies[0]["result"]["replayed_events"] + replies[1]["result"]["replayed_events"] == len(events)


# -- runs of the protocol are ordinary runs, and the other way round -------------------------


async def test_double_texting_with_the_js_clients_multitask_strategy(client, server):
    async with client.threads.stream(assistant_id="v3_agent") as thread:
        first = await thread.run.start(input=HI, config={"configurable": {"token_delay": 0.1, "tokens": 100}})
        with pytest.raises(RuntimeError, match="invalid_argument"):
            await thread._send_command("run.start", {"assistant_id": "v3_agent", "input": HI, "multitaskStrategy": "reject"})
        second = await thread._send_command(
            "run.start", {"assistant_id": "v3_agent", "input": HI, "config": STRAIGHT_THROUGH, "multitaskStrategy": "interrupt"}
        )
        async with asyncio.timeout(30):
            while (await client.runs.get(thread.thread_id, second["run_id"]))["status"] != "success":
                await asyncio.sleep(0.1)
    statuses = {r["run_id"]: r["status"] for r in await client.runs.list(thread.thread_id)}
    assert statuses == {first["run_id"]: "interrupted", second["run_id"]: "success"}


async def test_a_classic_run_is_seen_on_the_thread_stream(client, server):
    thread = await client.threads.create()
    await client.runs.wait(thread["thread_id"], "v3_agent", input=HI, config=STRAIGHT_THROUGH)
    async with httpx.AsyncClient(base_url=server.url) as http:
        transport = ProtocolSseTransport(client=http, thread_id=thread["thread_id"])
        events = await _read(transport, {"channels": ["lifecycle", "values", "messages"]}, until_root_end=True)
        await transport.close()
    # Its events stream to its SSE response; the thread stream has its lifecycle.
    assert [e["params"]["data"]["event"] for e in events] == ["running", "completed"]
    async with client.threads.stream(thread["thread_id"], assistant_id="v3_agent") as stream:
        assert (await stream.output)["note"] == "ran"


async def test_a_failing_graph_ends_the_stream_with_failed(client):
    async with client.threads.stream(assistant_id="failing") as thread:
        await thread.run.start(input=HI)
        with pytest.raises(RuntimeError, match="Run errored"):
            await thread.output
        run = (await client.runs.list(thread.thread_id))[0]
    assert run["status"] == "error"
