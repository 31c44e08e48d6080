"""The ack floor of a partition subscription, without a broker: which message acknowledges what."""

from __future__ import annotations

from dataclasses import dataclass

from services.orchestrator.acks import AckFloor


@dataclass
class _Seq:
    stream: int


@dataclass
class _Meta:
    sequence: _Seq


class Msg:
    def __init__(self, seq: int):
        self.metadata = _Meta(_Seq(seq))

    def __repr__(self) -> str:
        return f"Msg({self.metadata.sequence.stream})"


def seq(msg) -> int | None:
    return None if msg is None else msg.metadata.sequence.stream


def delivered(floor: AckFloor, *seqs: int) -> dict[int, Msg]:
    msgs = {s: Msg(s) for s in seqs}
    for msg in msgs.values():
        floor.delivered(msg)
    return msgs


def test_the_floor_is_the_newest_handled_event_below_every_unhandled_one():
    floor = AckFloor(partition=3)
    msgs = delivered(floor, 10, 11, 12, 13)
    assert floor.take() is None  # nothing handled
    floor.handled([msgs[11], msgs[13]])  # another thread's events, handled first
    assert floor.take() is None, "10 is not handled: acking 11 would acknowledge it"
    floor.handled([msgs[10]])
    assert seq(floor.take()) == 11  # 12 still pending
    assert floor.take() is None, "each handled message is acked once"
    floor.handled([msgs[12]])
    assert seq(floor.take()) == 13
    assert floor.waiting == 0


def test_a_redelivered_event_holds_the_floor_until_each_copy_is_handled():
    floor = AckFloor(partition=0)
    first = delivered(floor, 5, 6)
    again = delivered(floor, 5)  # the broker's redelivery while the first copy is being retried
    floor.handled([first[5], first[6]])
    assert seq(floor.take()) is None
    floor.handled([again[5]])
    assert seq(floor.take()) == 6


def test_a_retired_floor_never_acks():
    # Its subscription ended: the next consumer, maybe another holder's under the same name,
    # would take its ack for its own events.
    floor = AckFloor(partition=0)
    msgs = delivered(floor, 1, 2)
    floor.handled(list(msgs.values()))
    floor.retired = True
    assert floor.take() is None
