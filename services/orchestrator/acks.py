"""Acknowledging a partition consumer's events: one ack now and then, at the handled floor.

The partition consumers acknowledge with ``AckPolicy.ALL``: acking an event acknowledges every
event before it. Events are handled concurrently, one thread's in log order but threads in any
order, and a thread whose handling failed is tried again later, so the event to ack is the newest
handled one below which every delivered event is handled (the *floor*); a failed thread holds the
floor back, and everything after it stays unacknowledged with it. The floor is acked every
``ACK_EVERY_S`` (or at once when ``ACK_BATCH`` events wait), so a no-op run's five deliveries cost
a fraction of an ack instead of five.

What it keeps: a takeover resumes from the consumer's ack floor (invariant 3), which lags behind
the handled events by at most that interval: the next holder handles those again, and handling is
idempotent (events at or below a thread's folded sequence are skipped; decisions are
expected-sequence appends with deterministic ids). A crash between a decision and its ack is the
same case. A deposed holder must not ack at all: its successor recreates the durable under the
same name, so an ack of the old holder's would acknowledge, in the new consumer, events the
successor may not have handled yet. Acks are therefore only sent while the partition's lease was
confirmed recently (:meth:`services.orchestrator.leases.Leases.confirmed_within`), and a floor
whose subscription has ended is retired and never acks.
"""

from __future__ import annotations

# Each partition's floor is acked on its own, so acks cost up to a message per partition per
# interval whatever the load: at 1 s, sequential runs on a slow machine paid most of an ack each.
# A takeover hands its successor at most this much of the partition's events again.
ACK_EVERY_S = 5.0
ACK_BATCH = 256


class AckFloor:
    """The acknowledgement state of one subscription to a partition's consumer."""

    def __init__(self, partition: int):
        self.partition = partition
        self.retired = False
        self._unhandled: dict[int, int] = {}  # stream sequence -> copies delivered, not handled yet
        self._handled: dict[int, object] = {}  # stream sequence -> a handled message, not acked yet

    def delivered(self, msg) -> None:
        seq = msg.metadata.sequence.stream
        self._unhandled[seq] = self._unhandled.get(seq, 0) + 1

    def handled(self, msgs: list) -> None:
        for msg in msgs:
            seq = msg.metadata.sequence.stream
            copies = self._unhandled.get(seq, 0)
            if copies <= 1:
                self._unhandled.pop(seq, None)
            else:  # redelivered while its first copy was being handled
                self._unhandled[seq] = copies - 1
            self._handled[seq] = msg

    @property
    def waiting(self) -> int:
        """Handled events not acknowledged yet."""
        return len(self._handled)

    def take(self):
        """The message to ack now (the newest handled one below every unhandled one), or None;
        the handled messages it covers are forgotten."""
        if self.retired or not self._handled:
            return None
        floor = min(self._unhandled, default=None)
        covered = [seq for seq in self._handled if floor is None or seq < floor]
        if not covered:
            return None
        newest = max(covered)
        msg = self._handled[newest]
        for seq in covered:
            del self._handled[seq]
        return msg
