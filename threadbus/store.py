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

TTL: expired items read as absent and are deleted when met, or by the sweep
(``store.ttl.sweep_interval_minutes``); ``refresh_ttl`` on a read moves the expiry.

Search and namespace listing are answered by the search index
(:mod:`threadbus.read_model.store_index`), a projection of the bucket in PostgreSQL that a
search first lets catch up with the bucket. With ``store.index`` configured
(:mod:`threadbus.store_embeddings`), every put embeds the item's fields once, in the writer,
and stores the embeddings in the record, and a search with ``query`` ranks by similarity;
without one, ``query`` is ignored, as LangGraph's own stores do.
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
from threadbus.read_model.database import Database
from threadbus.read_model.store_index import StoreIndex
from threadbus.store_embeddings import Embedder, load_embedder

_PLAIN = re.compile(r"[A-Za-z0-9_-]+")


class StoreConflict(RuntimeError):
    """An item this run read was changed by someone else before this run wrote it."""


class InvalidItem(ValueError):
    """An item the search index could not hold (PostgreSQL text and jsonb have no NUL)."""


def part(label: str) -> str:
    """One namespace label or key as a KV key token: as is when plain, else ``=`` + base64url."""
    if _PLAIN.fullmatch(label):  # not match: "$" also matches before a final newline
        return label
    return "=" + base64.urlsafe_b64encode(label.encode()).decode().rstrip("=")


def kv_key(namespace: tuple[str, ...], key: str) -> str:
    return ".".join([*(part(n) for n in namespace), part(key)])


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _item(record: dict[str, Any]) -> Item:
    return Item(
        namespace=tuple(record["namespace"]),
        key=record["key"],
        value=record["value"],
        created_at=datetime.fromisoformat(record["created_at"]),
        updated_at=datetime.fromisoformat(record["updated_at"]),
    )


class JetStreamStore(BaseStore):
    supports_ttl = True

    def __init__(self, kv, search_index: StoreIndex, *, embedder: Embedder | None = None, ttl: dict | None = None):
        self.kv = kv
        self.search_index = search_index
        self.embedder = embedder
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
        store = JetStreamStore(self.kv, self.search_index, embedder=self.embedder, ttl=self.ttl_config)
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
            record = self._new_record(op, current)
            if self.embedder is not None and (vectors := await self.embedder.embed(op.value, op.index)):
                record["vectors"] = vectors
            payload = orjson.dumps(record)
            if b"\\u0000" in payload:
                raise InvalidItem(f"Store item {op.namespace}/{op.key}: labels, keys and values cannot contain NUL")
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

    async def _search(self, op: SearchOp) -> list[SearchItem]:
        query_vector = await self.embedder.embed_query(op.query) if op.query and self.embedder else None
        await self.search_index.caught_up()
        rows = await self.search_index.search(
            op.namespace_prefix, query_vector=query_vector, filter=op.filter, limit=op.limit, offset=op.offset
        )
        if op.refresh_ttl:
            for row in rows:
                if row["expires_at"] is not None:
                    await self._get(GetOp(tuple(row["namespace"]), row["key"], refresh_ttl=True))
        return [
            SearchItem(
                namespace=tuple(row["namespace"]),
                key=row["key"],
                value=row["value"],
                created_at=row["created_at"],
                updated_at=row["updated_at"],
                score=row["score"],
            )
            for row in rows
        ]

    async def _list_namespaces(self, op: ListNamespacesOp) -> list[tuple[str, ...]]:
        prefix = suffix = None
        for condition in op.match_conditions or ():
            if condition.match_type == "prefix":
                prefix = tuple(condition.path)
            else:
                suffix = tuple(condition.path)
        await self.search_index.caught_up()
        return await self.search_index.namespaces(
            prefix=prefix, suffix=suffix, max_depth=op.max_depth, limit=op.limit, offset=op.offset
        )

    async def close(self) -> None:
        await self.search_index.stop()


async def open_store(js, db: Database, graphs) -> JetStreamStore:
    """The store as ``langgraph.json``'s ``store`` section configures it (``index``, ``ttl``), with
    its search index projecting in this process. ``graphs`` resolves an ``embed`` function path."""
    config = graphs.raw.get("store") or {}
    ttl = config.get("ttl")
    sweep = (ttl or {}).get("sweep_interval_minutes")
    embedder = load_embedder(config.get("index"), graphs.resolve)
    search_index = StoreIndex(js, db, broker.STORE_BUCKET, sweep_interval_s=sweep * 60 if sweep else None)
    await search_index.start()
    return JetStreamStore(await js.key_value(broker.STORE_BUCKET), search_index, embedder=embedder, ttl=ttl)
