"""The store's search index: a projection of the ``tb_store`` KV bucket into PostgreSQL.

The bucket stays the truth (:mod:`threadbus.store`); this index answers search and namespace
listing with SQL, so their cost follows the page asked for (and the items under the prefix for
a ranked search), not the size of the store. Embeddings are computed by the writer and stored
in the item's record, so the index is rebuilt from the bucket alone.

Every process that opens a store runs a projector: an ordered consumer of the bucket's stream
from the position the index has applied. A batch of messages is applied in one transaction
that also moves the position, under a row lock on it; a batch at or below the position is
skipped, so any number of projectors keep one index without applying anything twice.

Exact reads: :meth:`StoreIndex.caught_up` asks the broker for the bucket's last sequence and
waits until the index has applied it (this process's projector says so, or, while it lags, the
index's stored position), so a search sees every write acknowledged before it (one broker
request per search, whatever the store holds).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import orjson
from nats.js.api import ConsumerConfig, DeliverPolicy
from psycopg.types.json import Jsonb

from threadbus import logs, metrics
from threadbus.read_model.database import Database, DatabaseUnavailable, UnstorableValue

log = logs.get("threadbus.store_index")

_BATCH = 1000
# The namespaces starting with ("a", "b") are exactly the range ["a", "b"] .. ["a", "b\x01"):
# arrays compare label by label, a label cannot hold NUL, so nothing sorts between "b" and
# "b\x01" but "b" itself. An index on the namespace column scans it as a range.
_AFTER = "\x01"
_COMPARISONS = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}


class InvalidFilter(ValueError):
    """A search filter the store cannot apply (an unknown operator, a non-number to order by)."""


class StoreIndexBehind(DatabaseUnavailable):
    """The index did not apply the bucket's latest writes in time (503, like a database away)."""


class StoreIndex:
    def __init__(self, js, db: Database, bucket: str, *, sweep_interval_s: float | None = None):
        self.js = js
        self.db = db
        self.bucket = bucket
        self.stream = f"KV_{bucket}"
        self.sweep_interval_s = sweep_interval_s
        self.applied = 0  # the index's position as this process last saw it
        self._progress = asyncio.Condition()
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._project(), name="store-index-projector"))
        if self.sweep_interval_s:
            self._tasks.append(asyncio.create_task(self._sweep(), name="store-ttl-sweeper"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    # -- projection ---------------------------------------------------------------------------
    async def _project(self) -> None:
        while True:
            sub = None
            try:
                position = await self._position_or_rebuild()
                await self._advance(position)
                queue: asyncio.Queue = asyncio.Queue()
                sub = await self.js.subscribe(
                    f"$KV.{self.bucket}.>",
                    stream=self.stream,
                    ordered_consumer=True,
                    cb=queue.put,
                    config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=position + 1),
                )
                while True:
                    batch = [await queue.get()]
                    while not queue.empty() and len(batch) < _BATCH:
                        batch.append(queue.get_nowait())
                    await self._advance(await self._apply_or_skip(batch))
            except asyncio.CancelledError:
                raise
            except DatabaseUnavailable as err:
                log.warning("store index cannot reach its database; retrying", error=str(err))
            except Exception:
                log.exception("store index projector failed; restarting from the applied position")
            finally:
                if sub is not None:
                    await asyncio.shield(sub.unsubscribe())
            await asyncio.sleep(1.0)

    async def _position_or_rebuild(self) -> int:
        """The applied position; an index ahead of the bucket indexes another bucket (a broker
        started afresh next to a kept database) and is emptied to be rebuilt."""
        last = (await self.js.stream_info(self.stream)).state.last_seq
        async with self.db.connection() as conn, conn.transaction():
            position = (await (await conn.execute("select position from store_index_position for update")).fetchone())["position"]
            if position > last:
                await conn.execute("delete from store_items")
                await conn.execute("delete from store_namespaces")
                await conn.execute("update store_index_position set position = 0")
                log.info("store index rebuilt: it was ahead of the bucket", position=position, bucket_last=last)
                position = 0
        return position

    async def _advance(self, position: int) -> None:
        async with self._progress:
            if position > self.applied:
                self.applied = position
                self._progress.notify_all()

    async def _apply_or_skip(self, batch: list) -> int:
        """Applies a batch; one message the database refuses (a value it cannot hold, written
        before puts checked for it) is skipped, alone, rather than stopping the index."""
        try:
            return await self._apply(batch)
        except UnstorableValue as err:
            if len(batch) > 1:
                for msg in batch:
                    position = await self._apply_or_skip([msg])
                return position
            msg = batch[0]
            log.error("store item cannot be indexed; skipped", kv_key=msg.subject, seq=msg.metadata.sequence.stream, error=str(err))
            async with self.db.connection() as conn:
                await conn.execute(
                    "update store_index_position set position = greatest(position, %s)", (msg.metadata.sequence.stream,)
                )
            return msg.metadata.sequence.stream

    async def _apply(self, batch: list) -> int:
        """Applies the messages the index has not applied yet; returns the index's position."""
        last = batch[-1].metadata.sequence.stream
        latest = {msg.subject[len(self.bucket) + 5 :]: msg for msg in batch}  # "$KV.<bucket>." prefix off
        async with self.db.connection() as conn, conn.transaction():
            position = (await (await conn.execute("select position from store_index_position for update")).fetchone())["position"]
            if position >= last:
                return position
            fresh = {k: m for k, m in latest.items() if m.metadata.sequence.stream > position}
            deleted = [k for k, m in fresh.items() if (m.headers or {}).get("KV-Operation") in ("DEL", "PURGE")]
            written = {k: (m, orjson.loads(m.data)) for k, m in fresh.items() if k not in deleted}
            existing = {
                row["kv_key"]: row["namespace"]
                for row in await (
                    await conn.execute("select kv_key, namespace from store_items where kv_key = any(%s)", (list(fresh),))
                ).fetchall()
            }
            counts: dict[tuple[str, ...], int] = {}
            for key in deleted:
                if key in existing:
                    ns = tuple(existing[key])
                    counts[ns] = counts.get(ns, 0) - 1
            for key, (_, record) in written.items():
                if key not in existing:
                    ns = tuple(record["namespace"])
                    counts[ns] = counts.get(ns, 0) + 1
            async with conn.cursor() as cur:
                if deleted:
                    await cur.execute("delete from store_items where kv_key = any(%s)", (deleted,))
                if written:
                    await cur.executemany(
                        "insert into store_items (kv_key, namespace, key, value, created_at, updated_at, expires_at, seq)"
                        " values (%s, %s, %s, %s, %s, %s, %s, %s) on conflict (kv_key) do update set"
                        " value = excluded.value, created_at = excluded.created_at, updated_at = excluded.updated_at,"
                        " expires_at = excluded.expires_at, seq = excluded.seq",
                        [
                            (
                                key,
                                record["namespace"],
                                record["key"],
                                Jsonb(record["value"]),
                                record["created_at"],
                                record["updated_at"],
                                record.get("expires_at"),
                                msg.metadata.sequence.stream,
                            )
                            for key, (msg, record) in written.items()
                        ],
                    )
                    await cur.execute("delete from store_vectors where kv_key = any(%s)", (list(written),))
                    vectors = [
                        (key, field, orjson.dumps(vector).decode())
                        for key, (_, record) in written.items()
                        for field, vector in (record.get("vectors") or {}).items()
                    ]
                    if vectors:
                        await cur.executemany(
                            "insert into store_vectors (kv_key, field, embedding) values (%s, %s, %s::vector)", vectors
                        )
                if counts:
                    await cur.executemany(
                        "insert into store_namespaces (namespace, items) values (%s, %s)"
                        " on conflict (namespace) do update set items = store_namespaces.items + excluded.items",
                        [(list(ns), n) for ns, n in counts.items() if n],
                    )
                    await cur.execute("delete from store_namespaces where items <= 0")
            await conn.execute("update store_index_position set position = %s", (last,))
        return last

    async def _sweep(self) -> None:
        """Deletes expired items from the bucket (the projection then drops them from the index),
        as LangGraph's ``sweep_interval_minutes`` does. A delete carries the revision the index
        saw: an item rewritten since is left alone."""
        kv = await self.js.key_value(self.bucket)
        while True:
            await asyncio.sleep(self.sweep_interval_s)
            try:
                async with self.db.connection() as conn:
                    rows = await (
                        await conn.execute("select kv_key, seq from store_items where expires_at <= now() limit 1000")
                    ).fetchall()
                for row in rows:
                    try:
                        await kv.delete(row["kv_key"], last=row["seq"])
                    except Exception:  # rewritten meanwhile, or already deleted: nothing expired to delete
                        pass
                if rows:
                    log.info("store items expired", count=len(rows))
            except DatabaseUnavailable as err:
                log.warning("store TTL sweep skipped: database away", error=str(err))

    # -- reads --------------------------------------------------------------------------------
    async def caught_up(self, timeout: float = 10.0) -> None:
        """Returns once the index holds every write the bucket had acknowledged when called."""
        last = (await self.js.stream_info(self.stream)).state.last_seq
        if self.applied >= last:
            return
        try:
            async with asyncio.timeout(timeout):
                while self.applied < last:
                    # Another process's projector may have applied it while this one lags: the
                    # index's own position says so.
                    async with self._progress:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._progress.wait_for(lambda: self.applied >= last), 0.1)
                    if self.applied < last:
                        async with self.db.connection() as conn:
                            row = await (await conn.execute("select position from store_index_position")).fetchone()
                        await self._advance(row["position"])
        except TimeoutError:
            log.warning("store index behind the bucket", applied=self.applied, bucket_last=last)
            raise StoreIndexBehind(f"the store index has applied {self.applied} of {last} bucket messages") from None

    async def search(self, prefix: Sequence[str], **page: Any) -> list[dict[str, Any]]:
        """The page of live items under ``prefix``: see :func:`search_sql`."""
        return await self._query("search", *search_sql(prefix, **page))

    async def namespaces(self, **page: Any) -> list[tuple[str, ...]]:
        """Namespaces holding items: see :func:`namespaces_sql`."""
        return [tuple(row["namespace"]) for row in await self._query("namespaces", *namespaces_sql(**page))]

    async def _query(self, name: str, sql: str, params: list[Any]) -> list[dict[str, Any]]:
        metrics.STORE_INDEX_QUERIES.labels(name).inc()
        async with self.db.connection() as conn:
            return await (await conn.execute(sql, params)).fetchall()


def search_sql(
    prefix: Sequence[str],
    *,
    query_vector: list[float] | None,
    filter: dict[str, Any] | None,
    limit: int,
    offset: int,
) -> tuple[str, list[Any]]:
    """One statement for a page of live items under ``prefix`` matching ``filter``: ranked by
    cosine similarity to ``query_vector`` (best of the item's fields; items without embeddings
    follow, unscored, as in LangGraph's in-memory store), else newest first."""
    _text_only(prefix, filter)
    # The prefix's items first, as a materialized set: left to itself, the planner may walk the
    # newest-first index of the whole store and filter on the way (seen: 19,810 rows read for a
    # page of a namespace of 100 items among 20,000).
    under, under_params = _under("namespace", prefix)
    source = (
        f"(with under as materialized (select * from store_items where {' and '.join(under)}) select * from under)"
        if under
        else "store_items"
    )
    where, params = [], []
    for key, wanted in (filter or {}).items():
        condition, values = _matches(["i.value", key], wanted, top=True)
        where.append(condition)
        params.extend(values)
    where.append("(i.expires_at is null or i.expires_at > now())")
    score_params: list[Any] = []
    if query_vector is None:
        score, order = "null::float8", "i.updated_at desc"
    else:
        # Embeddings of another dimension (written before `dims` changed) cannot be compared: unscored.
        score = (
            "(select max(1 - (v.embedding <=> %s::vector)) from store_vectors v"
            " where v.kv_key = i.kv_key and vector_dims(v.embedding) = %s)"
        )
        score_params = [orjson.dumps(query_vector).decode(), len(query_vector)]
        order = "score desc nulls last, i.updated_at desc"
    params = [*score_params, *under_params, *params]
    sql = (
        f"select i.namespace, i.key, i.value, i.created_at, i.updated_at, i.expires_at, {score} as score"
        f" from {source} i where {' and '.join(where)} order by {order} limit %s offset %s"
    )
    return sql, [*params, limit, offset]


def namespaces_sql(
    *,
    prefix: Sequence[str] | None,
    suffix: Sequence[str] | None,
    max_depth: int | None,
    limit: int,
    offset: int,
) -> tuple[str, list[Any]]:
    """One statement for a page of namespaces holding items, in LangGraph's order; ``*`` in a
    prefix or suffix matches any label."""
    _text_only(prefix, suffix)
    literal = []
    for label in prefix or ():
        if label == "*":
            break
        literal.append(label)
    where, params = _under("namespace", literal)
    for i, label in enumerate(prefix or ()):
        if i >= len(literal) and label != "*":
            where.append(f"namespace[{i + 1}] = %s")
            params.append(label)
    for i, label in enumerate(suffix or ()):
        if label != "*":
            where.append(f"namespace[cardinality(namespace) - {len(suffix) - 1 - i}] = %s")
            params.append(label)
    depth = max(len(prefix or ()), len(suffix or ()))
    if depth > len(literal):
        where.append(f"cardinality(namespace) >= {depth}")
    condition = " and ".join(where) or "true"
    if max_depth is None:
        sql = f"select namespace from store_namespaces where {condition} order by namespace limit %s offset %s"
    else:
        sql = (
            f"select distinct namespace[1:{int(max_depth)}] as namespace from store_namespaces"
            f" where {condition} order by 1 limit %s offset %s"
        )
    return sql, [*params, limit, offset]


def _text_only(*values: Any) -> None:
    """PostgreSQL text and jsonb cannot hold NUL: a search for one matches nothing it could store."""
    if b"\\u0000" in orjson.dumps(values):
        raise InvalidFilter("Search labels and filters cannot contain the NUL character")


def _under(column: str, prefix: Sequence[str]) -> tuple[list[str], list[Any]]:
    """Conditions selecting the namespaces that start with ``prefix``, as an index range."""
    if not prefix:
        return [], []
    prefix = list(prefix)
    return [f"{column} >= %s", f"{column} < %s"], [prefix, [*prefix[:-1], prefix[-1] + _AFTER]]


def _matches(path: list[str], wanted: Any, *, top: bool = False) -> tuple[str, list[Any]]:
    """A SQL condition with LangGraph's filter semantics (``langgraph.store.memory``'s
    ``_compare_values``) for the value at ``path``: nested objects match field by field, lists
    and scalars by equality, ``$eq``/``$ne``/``$gt``/``$gte``/``$lt``/``$lte`` as operators
    (the ordering ones on numbers, compared exactly). A field the item lacks does not match."""
    column, keys = path[0], path[1:]
    at = f"({column} #> %s)"
    params: list[Any] = []
    conditions: list[str] = []
    if top:
        conditions.append(f"{column} ? %s")
        params.append(keys[0])
    if isinstance(wanted, dict) and any(k.startswith("$") for k in wanted):
        for op, operand in wanted.items():
            if op == "$eq":
                conditions.append(f"{at} = %s")
                params += [keys, Jsonb(operand)]
            elif op == "$ne":
                conditions.append(f"{at} <> %s")
                params += [keys, Jsonb(operand)]
            elif op in _COMPARISONS:
                if isinstance(operand, bool) or not isinstance(operand, (int, float)):
                    raise InvalidFilter(f"Filter operator {op} compares numbers, not {operand!r}")
                # numeric, not float8: any JSON number compares, however large.
                conditions.append(
                    f"(case when jsonb_typeof({at}) = 'number' then ({column} #> %s)::numeric {_COMPARISONS[op]} %s::numeric end)"
                )
                params += [keys, keys, operand]
            else:
                raise InvalidFilter(f"Unsupported filter operator: {op}")
    elif isinstance(wanted, dict):
        conditions.append(f"jsonb_typeof({at}) = 'object'")
        params.append(keys)
        for sub, value in wanted.items():
            condition, values = _matches([column, *keys, sub], value)
            conditions.append(condition)
            params += values
    else:
        conditions.append(f"{at} = %s")
        params += [keys, Jsonb(wanted)]
    return "(" + " and ".join(conditions) + ")", params
