"""The published contracts: schema files are current, events round-trip, subject tokens are safe."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

import contracts
from contracts import export, subjects


def test_schema_files_are_current():
    assert export.main(["--check"]) == 0, "contracts/schema is stale: run `python -m contracts.export`"


def test_every_event_has_a_schema_and_a_subject():
    names = {t.__name__ for t in export.event_types()}
    assert {f"{n}.json" for n in names} == {p.name for p in export.SCHEMA_DIR.glob("*.json")}
    control = names - {"CheckpointSaved", "WritesSaved", "StreamChunk", "ThreadStreamEvent"}
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
