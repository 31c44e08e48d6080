"""The long-term memory store: LangGraph's ``BaseStore`` on a JetStream key-value bucket.

One bucket (``tb_store``) serves both the graphs (every run gets a store) and the HTTP API
(``/store/*``), so what a run writes is what the API reads and the other way round.

Keys: an item of namespace ``(a, b)`` and key ``k`` is stored under ``a.b.k``, each part
encoded by :func:`part` so that any label (dots, spaces, unicode) fits the bucket's key
alphabet. The key is always the last token, so the KV filter ``a.>`` selects exactly the items
whose namespace starts with ``a``. Values are JSON with the namespace, key, value, timestamps
and, with a TTL, the expiry.

Lost updates: a store belongs to one run. When that run read an item and then puts it, the put
carries the revision it read; if another run wrote the item in between, the put raises
:class:`StoreConflict` (the run fails with that reason) instead of silently overwriting.
Puts of items the run did not read, and puts through the HTTP API, are plain writes.

TTL: expired items read as absent and are deleted when met; ``refresh_ttl`` on a read moves
the expiry. Semantic search (``index``) is not built: a search with ``query`` on a store
configured with an index raises :class:`SemanticSearchNotBuilt`; without an index, ``query`` is
ignored as LangGraph's own stores do.

Search and namespace listing read every key under the prefix: fine for the per-user memories
the Store is for, not for millions of items under one prefix.
"""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from typing import Any

import nats.js.errors
import orjson
from langgraph.store.base import (
    BaseStore,
    GetOp,
    Item,
    ListNamespacesOp,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
)

from threadbus import broker

# The matching rules of LangGraph's reference store, so that filters and namespace conditions
# behave exactly as they do in-process.
from langgraph.store.memory import _compare_values, _does_match

_PLAIN = re.compile(r"[A-Za-z0-9_-]+")


class StoreConflict(RuntimeError):
    """An item this run read was changed by someone else before this run wrote it."""


class SemanticSearchNotBuilt(NotImplementedError):
    pass


def part(label: str) -> str:
    """One namespace label or key as a KV key token: as is when plain, else ``=`` + base64url."""
    if _PLAIN.fullmatch(label):  # not match: "$" also matches before a final newline
        return label
    return "=" + base64.urlsafe_b64encode(label.encode()).decode().rstrip("=")


def kv_key(namespace: tuple[str, ...], key: str) -> str:
    return ".".join([*(part(n) for n in namespace), part(key)])


def _matches(value: dict[str, Any], conditions: dict[str, Any]) -> bool:
    """LangGraph's filter rules, except that an item without the field, or with a value the
    operator cannot compare, does not match (the reference store raises on those)."""
    try:
        return all(k in value and _compare_values(value[k], v) for k, v in conditions.items())
    except (TypeError, ValueError):
        return False


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _item(record: dict[str, Any], cls=Item, **extra) -> Item:
    return cls(
        namespace=tuple(record["namespace"]),
        key=record["key"],
        value=record["value"],
        created_at=datetime.fromisoformat(record["created_at"]),
        updated_at=datetime.fromisoformat(record["updated_at"]),
        **extra,
    )


class JetStreamStore(BaseStore):
    supports_ttl = True

    def __init__(self, kv, *, index: dict | None = None, ttl: dict | None = None):
        self.kv = kv
        self.index = index
        # LangGraph's TTLConfig: `default_ttl` (minutes) and `refresh_on_read` (BaseStore reads it).
        self.ttl_config = ttl
        self.default_ttl_minutes = (ttl or {}).get("default_ttl")
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        # key -> revision this store read; None: a shared store (the HTTP API's), whose puts are plain writes.
        self._read: dict[str, int] | None = None

    def for_run(self) -> JetStreamStore:
        """A store for one run: the revisions it reads guard its writes."""
        store = JetStreamStore(self.kv, index=self.index, ttl=self.ttl_config)
        store._read = {}
        return store

    # -- BaseStore ----------------------------------------------------------------------------
    def batch(self, ops: Iterable[Op]) -> list[Result]:
        # Sync nodes (``store.search(...)`` in a plain ``def``) run in LangGraph's worker threads
        # while the event loop that owns the NATS connection runs on: hand the work to it.
        if self._loop is None or not self._loop.is_running():
            raise RuntimeError("JetStreamStore's sync methods need its event loop running in another thread")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            raise RuntimeError("Sync store methods would block the event loop here: use the a* methods in async code")
        return asyncio.run_coroutine_threadsafe(self.abatch(ops), self._loop).result()

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        results: list[Result] = []
        for op in ops:
            # In order: a put followed by a get of the same item in one batch sees the put.
            if isinstance(op, GetOp):
                results.append(await self._get(op))
            elif isinstance(op, PutOp):
                results.append(await self._put(op))
            elif isinstance(op, SearchOp):
                results.append(await self._search(op))
            elif isinstance(op, ListNamespacesOp):
                results.append(await self._list_namespaces(op))
            else:
                raise ValueError(f"Unknown store operation {op!r}")
        return results

    # -- operations ---------------------------------------------------------------------------
    async def _record(self, key: str) -> tuple[dict[str, Any] | None, int]:
        """The item's record (None when absent or expired) and the revision that says so (0: never written)."""
        try:
            entry = await self.kv.get(key)
        except nats.js.errors.KeyDeletedError as gone:
            return None, gone.entry.revision if gone.entry else 0
        except nats.js.errors.KeyNotFoundError:
            return None, 0
        record = orjson.loads(entry.value)
        if (expires := record.get("expires_at")) and datetime.fromisoformat(expires) <= _now():
            await self._expire(key, entry.revision)
            return None, entry.revision
        return record, entry.revision

    async def _expire(self, key: str, revision: int) -> None:
        try:
            await self.kv.delete(key, last=revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            pass  # rewritten meanwhile: no longer expired

    async def _get(self, op: GetOp) -> Item | None:
        key = kv_key(op.namespace, op.key)
        record, revision = await self._record(key)
        if self._read is not None:
            self._read[key] = revision
        if record is None:
            return None
        if op.refresh_ttl and record.get("ttl"):
            record["expires_at"] = (_now() + timedelta(minutes=record["ttl"])).isoformat()
            try:
                revision = await self.kv.update(key, orjson.dumps(record), last=revision)
                if self._read is not None:
                    self._read[key] = revision
            except nats.js.errors.KeyWrongLastSequenceError:
                pass  # someone wrote it: their write set its own expiry, and this run's put will conflict
        return _item(record)

    async def _put(self, op: PutOp) -> None:
        key = kv_key(op.namespace, op.key)
        read = self._read.pop(key, None) if self._read is not None else None
        try:
            if op.value is None:
                await self.kv.delete(key, last=read or None)
                return
            current, _ = await self._record(key)
            payload = orjson.dumps(self._new_record(op, current))
            if read is None:
                await self.kv.put(key, payload)
            else:
                # `last=0` is "still absent", a tombstone's revision "still deleted".
                self._read[key] = await self.kv.update(key, payload, last=read)  # type: ignore[index]
        except nats.js.errors.KeyWrongLastSequenceError:
            raise StoreConflict(
                f"Store item {op.namespace}/{op.key} changed since this run read it; not overwritten"
            ) from None

    def _new_record(self, op: PutOp, current: dict[str, Any] | None) -> dict[str, Any]:
        now = _now()
        ttl = op.ttl if op.ttl is not None else self.default_ttl_minutes
        record = {
            "namespace": list(op.namespace),
            "key": op.key,
            "value": op.value,
            "created_at": current["created_at"] if current else now.isoformat(),
            "updated_at": now.isoformat(),
        }
        if ttl:
            record["ttl"] = ttl
            record["expires_at"] = (now + timedelta(minutes=ttl)).isoformat()
        return record

    async def _records(self, prefix: tuple[str, ...]) -> list[dict[str, Any]]:
        """Every live item under the namespace prefix, read in one pass of a KV watcher."""
        records = []
        for entry in await broker.kv_scan(self.kv, ".".join([*(part(n) for n in prefix), ">"])):
            record = orjson.loads(entry.value)
            if (expires := record.get("expires_at")) and datetime.fromisoformat(expires) <= _now():
                await self._expire(entry.key, entry.revision)
                continue
            records.append(record)
        return records

    async def _search(self, op: SearchOp) -> list[SearchItem]:
        if op.query and self.index:
            raise SemanticSearchNotBuilt("Semantic search (store.index) is not built yet; search without `query`")
        records = await self._records(op.namespace_prefix)
        if op.filter:
            records = [r for r in records if _matches(r["value"], op.filter)]
        records.sort(key=lambda r: r["updated_at"], reverse=True)
        page = records[op.offset : op.offset + op.limit]
        if op.refresh_ttl:
            for r in page:
                if r.get("ttl"):
                    await self._get(GetOp(tuple(r["namespace"]), r["key"], refresh_ttl=True))
        return [_item(r, SearchItem, score=None) for r in page]

    async def _list_namespaces(self, op: ListNamespacesOp) -> list[tuple[str, ...]]:
        prefix: tuple[str, ...] = ()
        for condition in op.match_conditions or ():
            if condition.match_type == "prefix" and "*" not in condition.path:
                prefix = tuple(condition.path)
        namespaces = {tuple(r["namespace"]) for r in await self._records(prefix)}
        if op.match_conditions:
            namespaces = {ns for ns in namespaces if all(_does_match(c, ns) for c in op.match_conditions)}
        if op.max_depth is not None:
            namespaces = {ns[: op.max_depth] for ns in namespaces}
        return sorted(namespaces)[op.offset : op.offset + op.limit]


async def open_store(js, langgraph_json: dict[str, Any]) -> JetStreamStore:
    """The store as ``langgraph.json``'s ``store`` section configures it (``index``, ``ttl``)."""
    config = langgraph_json.get("store") or {}
    return JetStreamStore(await js.key_value(broker.STORE_BUCKET), index=config.get("index"), ttl=config.get("ttl"))
