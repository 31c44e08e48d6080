"""The read model's projection, as a pure fold, against the decider's own view of a thread.

Random logs come from the decider's simulation (every strategy, cancels, outcomes racing
cancels, rollbacks), with deletions of finished runs and of the whole thread added. Two things
must hold for any of them:

- the projection applied event by event, as the projector sees them live, agrees with the
  decider: every run's status, the thread's status;
- the projection rebuilt from the log as the broker keeps it after compactions and deletions
  equals the live one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

import contracts
from threadbus.read_model import projection
from threadbus.read_model.projection import RunRow, ThreadRow
from tests.test_decider import SCENARIO, TID, Simulation


@dataclass
class Tables:
    """The read model's tables, in memory."""

    threads: dict[str, ThreadRow] = field(default_factory=dict)
    runs: dict[str, RunRow] = field(default_factory=dict)

    def apply(self, seq: int, event) -> None:
        row, changes = projection.project(self.threads.get(event.thread_id), event, seq)
        projection.apply_to_runs(self.runs, changes)
        if row is None:
            self.threads.pop(event.thread_id, None)
        else:
            self.threads[event.thread_id] = row

    def snapshot(self) -> tuple:
        return ({k: vars(v) for k, v in self.threads.items()}, {k: vars(v) for k, v in self.runs.items()})


def differences(a: tuple, b: tuple) -> list:
    out = []
    for table_a, table_b in zip(a, b):
        for key in set(table_a) | set(table_b):
            row_a, row_b = table_a.get(key), table_b.get(key)
            if row_a is None or row_b is None:
                out.append((key, row_a, row_b))
            else:
                out += [(key, col, row_a[col], row_b[col]) for col in row_a if row_a[col] != row_b[col]]
    return out


def as_kept(log: list) -> list[tuple[int, object]]:
    """The log as the broker keeps it: a rolled-back run's events before its tombstone are purged,
    and everything before a ``ThreadDeleted``."""
    kept: list[tuple[int, object]] = []
    for seq, event in enumerate(log, 1):
        if isinstance(event, contracts.RunRolledBack):
            kept = [(s, e) for s, e in kept if getattr(e, "run_id", None) != event.run_id]
        elif isinstance(event, contracts.ThreadDeleted):
            kept = []
        kept.append((seq, event))
    return kept


ENDING = st.sampled_from(["keep", "delete_runs", "delete_thread"])
# Where a lagging projector reads the log, as fractions of its length: it sees what the broker
# keeps at that moment, after the position it has reached.
READS = st.lists(st.floats(min_value=0, max_value=1), max_size=6)


@settings(max_examples=300, deadline=None)
@given(SCENARIO, ENDING, READS)
def test_the_live_projection_agrees_with_the_decider_and_a_rebuild_equals_it(scenario, ending, reads):
    paused_policy, batches = scenario
    sim = Simulation(paused_policy)
    sim.thread.append(contracts.ThreadCreated(thread_id=TID, metadata={"owner": "a"}))
    for batch in batches:
        sim.step(batch)
    sim.drain()
    if ending == "delete_runs":
        for run_id, status in list(sim.thread.statuses.items())[::2]:
            if status not in ("pending", "running"):
                sim.thread.append(contracts.RunDeleted(thread_id=TID, run_id=run_id))
    elif ending == "delete_thread":
        sim.thread.append(contracts.ThreadDeleted(thread_id=TID))

    live = Tables()
    for seq, event in enumerate(sim.thread.log, 1):
        live.apply(seq, event)

    if ending == "delete_thread":
        assert live.threads == {} and live.runs == {}
    else:
        deleted = {e.run_id for e in sim.thread.log if isinstance(e, contracts.RunDeleted)}
        expected = {rid: s for rid, s in sim.thread.statuses.items() if rid not in deleted}
        assert {rid: run.status for rid, run in live.runs.items()} == expected
        assert live.threads[TID].status == sim.thread.status
        assert live.threads[TID].fold == projection.fold_from_json(projection.fold_to_json(sim.thread.state))

    rebuilt = Tables()
    for seq, event in as_kept(sim.thread.log):
        rebuilt.apply(seq, event)
    assert rebuilt.snapshot() == live.snapshot(), differences(rebuilt.snapshot(), live.snapshot())

    # A projector behind the log reads part of it, then more once compactions removed some of
    # what it had not read yet, and so on: it ends where the others do.
    lagging, position = Tables(), 0
    for cut in [*sorted(int(f * len(sim.thread.log)) for f in reads), len(sim.thread.log)]:
        for seq, event in as_kept(sim.thread.log[:cut]):
            if seq > position:
                lagging.apply(seq, event)
                position = seq
    assert lagging.snapshot() == live.snapshot(), differences(lagging.snapshot(), live.snapshot())


def test_a_redelivered_event_changes_nothing():
    created = contracts.ThreadCreated(thread_id=TID)
    row, _ = projection.project(None, created, 1)
    request = contracts.RunRequested(thread_id=TID, run_id="r", assistant_id="a", graph_id="g")
    row, _ = projection.project(row, request, 2)
    again, changes = projection.project(row, request, 2)
    assert changes == [] and again.fold == row.fold and again.log_seq == 2
