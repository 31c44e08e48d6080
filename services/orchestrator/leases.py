"""Which orchestrator decides for which partition: leases in a JetStream KV bucket.

Threads are spread over ``subjects.PARTITIONS`` partitions by the thread stream's subject
transform. Each partition is held by one orchestrator through a lease, the key
``partition.<k>`` in the ``tb_leases`` bucket: taken with a create (only if nobody holds it) and
renewed with a revision-checked update. The bucket's TTL expires a lease that is not renewed, so a
dead orchestrator's partitions become free after ``THREADBUS_ORCHESTRATOR_LEASE_S`` and a live one
takes them. Every orchestrator also keeps a ``member.<name>`` key alive, so that each can tell how
many share the work and hold only its fair share; the surplus is handed back for a newcomer.

A lease decides who consumes a partition's events, not who may write: every decision is still
appended with an expected-sequence check on the thread's log, so an orchestrator that lost its
lease while paused (and does not know it yet) cannot append a stale decision. It does decide who
may acknowledge the partition's events (:mod:`services.orchestrator.acks`): only a holder whose
lease was confirmed by the broker less than a lease ago, measured from when it asked.
"""

from __future__ import annotations

import math
import time
import zlib

import nats.js.errors

from contracts import subjects
from threadbus import broker

_MEMBER = "member."


def _lease_key(partition: int) -> str:
    return f"partition.{partition}"


class Leases:
    def __init__(self, kv, name: str, partitions: int = subjects.PARTITIONS):
        self.kv = kv
        self.name = name
        self.partitions = partitions
        self.held: dict[int, int] = {}  # partition -> revision of our lease
        # partition -> when (monotonic) the create or update that the broker last confirmed was sent
        self.confirmed: dict[int, float] = {}
        # Each orchestrator tries the partitions from a different place, so that they rarely contend.
        first = zlib.crc32(name.encode()) % partitions
        self.preference = [(first + i) % partitions for i in range(partitions)]

    async def renew(self) -> list[int]:
        """Renews every lease held; returns the partitions whose lease was lost meanwhile."""
        lost = []
        for partition, revision in list(self.held.items()):
            asked = time.monotonic()
            try:
                self.held[partition] = await self.kv.update(_lease_key(partition), self.name.encode(), last=revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                # Expired and maybe taken: whoever holds it now decides for its threads.
                del self.held[partition]
                self.confirmed.pop(partition, None)
                lost.append(partition)
                continue
            self.confirmed[partition] = asked
        return lost

    def confirmed_within(self, partition: int, seconds: float) -> bool:
        """Whether the partition's lease was confirmed by a request sent less than ``seconds``
        ago: with ``seconds`` below the lease's TTL, nobody else can hold it now (a process that
        was paused longer than that finds it false until its next renewal)."""
        asked = self.confirmed.get(partition)
        return asked is not None and time.monotonic() - asked < seconds

    async def fair_share(self) -> int:
        await self.kv.put(_MEMBER + self.name, b"")
        members = len(await broker.kv_scan(self.kv, _MEMBER + ">", meta_only=True))
        return math.ceil(self.partitions / max(members, 1))

    async def acquire(self, wanted: int) -> list[int]:
        """Takes free partitions until ``wanted`` are held; returns those taken."""
        taken = []
        for partition in self.preference:
            if len(self.held) >= wanted:
                break
            if partition in self.held:
                continue
            asked = time.monotonic()
            try:
                self.held[partition] = await self.kv.create(_lease_key(partition), self.name.encode())
            except nats.js.errors.KeyWrongLastSequenceError:
                continue  # held by another orchestrator
            self.confirmed[partition] = asked
            taken.append(partition)
        return taken

    def surplus(self, wanted: int) -> list[int]:
        """The partitions held beyond ``wanted``, to hand back once no longer consumed."""
        return sorted(self.held, key=self.preference.index, reverse=True)[: max(len(self.held) - wanted, 0)]

    async def release(self, partition: int) -> None:
        revision = self.held.pop(partition, None)
        self.confirmed.pop(partition, None)
        if revision is None:
            return
        try:
            await self.kv.delete(_lease_key(partition), last=revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            pass  # already expired and taken

    async def leave(self) -> None:
        """Hands every partition back, for another orchestrator to take at once."""
        for partition in list(self.held):
            await self.release(partition)
        await self.kv.delete(_MEMBER + self.name)
