"""A KV bucket's newest entries, mirrored in memory by one long-lived watch.

Reading a whole bucket with a watch per call creates an ordered consumer each time, which the
server keeps for its inactive threshold after the watcher is gone (nats-py's default: 5 minutes):
a gateway ticking crons every second piled up hundreds of consumers that way. A mirror holds one
watch for the life of the process instead, and answers from memory.

A cache, not the truth (DESIGN invariant 6): entries arrive a moment after they are written, so a
writer that must read its own write at once records it with :meth:`KVMirror.note`, or marks the
key with :meth:`KVMirror.invalidate` until the watch brings it; reads that must be exact (a
revision check before an update) still go to the bucket.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import orjson

from threadbus import broker

_DELETED = ("DEL", "PURGE")


class KVMirror:
    def __init__(self, kv, name: str):
        self.kv = kv
        self.name = name
        # key -> (revision, value); a value of None is a deletion, kept so that an older put
        # delivered late cannot bring the key back.
        self.entries: dict[str, tuple[int, bytes | None]] = {}
        # key -> the revision held when a write of ours began: not answered from memory until the
        # watch has delivered a newer one.
        self.stale: dict[str, int] = {}
        self.ready = asyncio.Event()
        self._watcher = None
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        """Watches the bucket and returns once the entries stored so far are mirrored."""
        self._watcher = await self.kv.watch(">")
        self._task = asyncio.create_task(self._follow(), name=f"kv-mirror-{self.name}")
        await self.ready.wait()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._watcher is not None:
            await broker.end_ordered(self.kv._js, self._watcher._sub, self.kv._stream)

    async def _follow(self) -> None:
        while True:
            entry = await self._watcher.updates(timeout=None)
            if entry is None:
                self.ready.set()
                continue
            self._apply(entry.key, entry.revision, None if entry.operation in _DELETED else entry.value)

    def _apply(self, key: str, revision: int, value: bytes | None) -> None:
        known = self.entries.get(key)
        if known is None or revision >= known[0]:
            self.entries[key] = (revision, value)
        if key in self.stale and revision > self.stale[key]:
            del self.stale[key]

    def invalidate(self, key: str) -> None:
        """Before a write of ours whose revision we will not learn: ``key`` is read from the
        bucket, not from memory, until the watch delivers the write (or any newer one)."""
        known = self.entries.get(key)
        self.stale[key] = known[0] if known else 0

    def note(self, key: str, revision: int, record: dict | None) -> None:
        """Our own write (``None``: a delete), visible here before the watch delivers it."""
        self._apply(key, revision, None if record is None else orjson.dumps(record))

    def get(self, key: str) -> tuple[dict, int] | None:
        """The record stored under ``key`` and its revision, decoded afresh (callers may change it)."""
        known = self.entries.get(key)
        if known is None or not known[1] or key in self.stale:
            return None
        return orjson.loads(known[1]), known[0]

    def items(self) -> Iterator[tuple[dict, int]]:
        for revision, value in list(self.entries.values()):
            if value:
                yield orjson.loads(value), revision
