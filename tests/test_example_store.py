"""`make dev`'s config end to end: the example graphs' store embeds with WordLlama, offline, and
task mAIstro's memories are found by meaning."""

from __future__ import annotations

import uuid

from langgraph_sdk import get_client

from tests.support import ROOT, ThreadbusProcess

EXAMPLES = ROOT / "examples" / "langgraph.json"


async def test_task_maistro_memories_are_searchable_with_the_offline_embedder(tmp_path):
    proc = ThreadbusProcess(
        ["dev", "--data-dir", str(tmp_path / "data"), "--config", str(EXAMPLES)],
        log_path=tmp_path / "threadbus.log",
        env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},  # any download attempt fails
    ).start()
    try:
        client = get_client(url=proc.url)
        user = uuid.uuid4().hex
        config = {"configurable": {"user_id": user, "model_delay": 0.01}}
        thread = (await client.threads.create())["thread_id"]
        for task in ("Buy groceries: milk, eggs and bread", "Fix the flat tire on my bicycle", "Call the dentist to book a checkup"):
            await client.runs.wait(thread, "task_maistro", input={"messages": [{"role": "human", "content": task}]}, config=config)
        namespace = ["todo", "general", user]
        assert len((await client.store.search_items(namespace))["items"]) == 3

        found = (await client.store.search_items(namespace, query="food shopping at the supermarket", limit=3))["items"]
        assert found[0]["value"]["task"].startswith("Buy groceries"), [i["value"]["task"] for i in found]
        assert found[0]["score"] > found[1]["score"]
        found = (await client.store.search_items(namespace, query="repair my bike wheel", limit=1))["items"]
        assert found[0]["value"]["task"].startswith("Fix the flat tire")

        # Items put over HTTP are embedded by the same model.
        await client.store.put_item(namespace, "extra", {"task": "Walk the dog in the park", "status": "not started"})
        found = (await client.store.search_items(namespace, query="take my puppy outside", limit=1))["items"]
        assert found[0]["key"] == "extra"
    finally:
        proc.stop()
    assert "Downloading" not in (tmp_path / "threadbus.log").read_text()
