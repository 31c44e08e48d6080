"""The published contracts: schema files are current, events round-trip, subject tokens are safe."""

from __future__ import annotations

import json
from urllib.parse import unquote

from hypothesis import example, given
from hypothesis import strategies as st

import contracts
from contracts import export, subjects


def test_schema_files_are_current():
    assert export.main(["--check"]) == 0, "contracts/schema is stale: run `python -m contracts.export`"


def test_every_event_has_a_schema_and_a_subject():
    names = {t.__name__ for t in export.event_types()}
    assert {f"{n}.json" for n in names} == {p.name for p in export.SCHEMA_DIR.glob("*.json")}
    control = names - {"CheckpointSaved", "CheckpointPointer", "WritesSaved", "StreamChunk", "ThreadStreamEvent"}
    assert control == set(subjects.EVENT_TOKENS)


def test_events_round_trip():
    event = contracts.RunRequested(
        thread_id="t",
        run_id="r",
        assistant_id="a",
        graph_id="g",
        multitask_strategy="rollback",
        kwargs=contracts.RunKwargs(input={"x": [1, 2]}, command={"resume": "yes"}, interrupt_before="*"),
    )
    decoded = contracts.decode(contracts.encode(event))
    assert decoded == event and decoded.resumes


def test_a_foreign_producer_may_omit_defaults():
    raw = b'{"type":"RunRequested","thread_id":"t","run_id":"r","assistant_id":"a","graph_id":"g"}'
    event = contracts.decode(raw)
    assert event.multitask_strategy == "enqueue" and event.kwargs.stream_mode == ["values"] and event.v == 1


@given(st.text())
@example("0\n")  # a regex "$" matches before a final newline: found by this test once
def test_tokens_are_reversible_and_subject_safe(value):
    token = subjects.token(value)
    assert subjects.untoken(token) == value
    assert token and not any(c in token for c in ".*> \t\r\n")


@given(st.text(), st.text())
def test_tokens_are_injective(a, b):
    if a != b:
        assert subjects.token(a) != subjects.token(b)


def _resolve(document: dict, ref: str) -> dict:
    node = document
    for part in unquote(ref.removeprefix("#/")).split("/"):
        node = node[part]
    return node


def _matches(pattern: str, subject: str) -> bool:
    want, have = pattern.split("."), subject.split(".")
    return len(want) == len(have) and all(w in ("*", h) for w, h in zip(want, have))


def test_the_integration_asyncapi_document_says_what_the_contracts_say():
    # FastStream generates it (threadbus.integrations.surface); the schema files stay the source.
    document = json.loads(export.INTEGRATIONS_ASYNCAPI.read_text())
    channels = document["channels"]
    assert set(channels) == set(subjects.EVENT_TOKENS) | {"RequestRun"}
    for name, channel in channels.items():
        [message_ref] = [m["$ref"] for m in channel["messages"].values()]
        payload = _resolve(document, _resolve(document, message_ref)["payload"]["$ref"])
        event_type = getattr(contracts, "RunRequested" if name == "RequestRun" else name)
        contract = export.inline_schema(event_type)
        assert {k: v for k, v in payload.items() if k != "title"} == {k: v for k, v in contract.items() if k != "title"}, name
        thread, run = "5f0e8a3c-1b2d-4c5e-8f9a-0b1c2d3e4f50", "run-1"
        if name == "RequestRun":
            assert channel["address"].format(thread=thread, run=run) == subjects.control_event(thread, run, "RunRequested")
            continue
        published = subjects.control_event(thread, None if name.startswith("Thread") else run, name)
        stored = subjects.published_tokens(published)
        stored.insert(3, "7")  # the partition the stream inserts after the thread token
        assert _matches(channel["address"], ".".join(stored)), name
