"""Queries answered from the read model, exact for the caller's own writes.

The guarantee: a read sees every event the thread log held when the read began.

- Reads of one thread (a thread, a run, a thread's runs) read its row and the projector's
  position in one statement: the row holds every event of the thread up to that position, so
  only the thread's control events after it are folded, read from the log with one direct get.
  The cost is that of the events the projector has not applied yet: O(new events), not
  O(history).
- Searches over many threads (search, count) first wait until the projector has applied what the
  log held at the start of the request (a stream-info request; while it is behind, a direct get
  or two to learn whether anything it projects lies between its position and that end), then
  query the indexes.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec

from contracts import subjects
from threadbus import logs
from threadbus.read_model import projection, rows
from threadbus.read_model.database import Database
from threadbus.read_model.projection import RunRow, ThreadRow
from threadbus.read_model.projector import PROJECTION, projected_subjects
from threadbus.threadlog import ThreadLog

log = logs.get("threadbus.read_model")

_CATCH_UP_POLL_S = 0.005


@dataclass
class ThreadView:
    """A thread's row brought up to date with the log, and what the newer events did to its runs."""

    row: ThreadRow | None
    changes: list[projection.Change] = field(default_factory=list)
    # Outcomes came after the row was written: its values may be older than the thread's state.
    values_stale: bool = False


_THREAD_COLUMNS_OF_T = ", ".join(f"t.{c.strip()}" for c in rows.THREAD_COLUMNS.split(","))
THREAD_SORT_COLUMNS = {"thread_id", "status", "created_at", "updated_at", "state_updated_at"}


class Reads:
    def __init__(self, db: Database, log: ThreadLog, catch_up_timeout_s: float = 10.0):
        self.db = db
        self.log = log
        self.catch_up_timeout_s = catch_up_timeout_s

    # -- one thread ---------------------------------------------------------------------------
    async def thread(self, thread_id: str) -> ThreadView:
        async with self.db.connection() as conn:
            found = await (
                await conn.execute(
                    f"select p.position, {_THREAD_COLUMNS_OF_T} from (select %s as projection) wanted"
                    " left join projection_positions p using (projection)"
                    " left join threads t on t.thread_id = %s",
                    (PROJECTION, thread_id),
                )
            ).fetchone()
        row = rows.thread_from(found) if found["thread_id"] is not None else None
        current_through = max(row.log_seq if row else 0, found["position"] or 0)
        return self._fold_tail(row, thread_id, await self.log.read(subjects.thread_control(thread_id), after=current_through))

    def _fold_tail(self, row: ThreadRow | None, thread_id: str, entries) -> ThreadView:
        view = ThreadView(row=row)
        for entry in entries:
            try:
                event = entry.event()
            except msgspec.DecodeError:
                continue
            if event.thread_id != thread_id:
                continue
            view.row, changes = projection.project(view.row, event, entry.seq)
            view.changes.extend(changes)
            view.values_stale = view.values_stale or isinstance(event, _ENDINGS)
        return view

    async def run(self, thread_id: str, run_id: str) -> RunRow | None:
        view = await self.thread(thread_id)
        async with self.db.connection() as conn:
            found = await (
                await conn.execute(f"select {rows.RUN_COLUMNS} from runs where run_id = %s and thread_id = %s", (run_id, thread_id))
            ).fetchone()
        runs = {run_id: rows.run_from(found)} if found else {}
        projection.apply_to_runs(runs, view.changes)
        return runs.get(run_id)

    async def runs(
        self, thread_id: str, *, limit: int = 10, offset: int = 0, status: str | None = None, view: ThreadView | None = None
    ) -> list[RunRow]:
        """The thread's runs, newest first. Runs the tail changed are read whatever their stored
        status, and filtered once the tail is applied."""
        view = view or await self.thread(thread_id)
        changed = sorted({c.run_id for c in view.changes if isinstance(c, (projection.RunChanged, projection.RunRemoved))})
        query = f"select {rows.RUN_COLUMNS} from runs where thread_id = %s"
        params: list[Any] = [thread_id]
        if status is not None:
            query += " and (status = %s or run_id = any(%s))"
            params += [status, changed]
        query += " order by created_at desc, run_id desc limit %s"
        params.append(offset + limit + len(changed) + len(view.changes))
        async with self.db.connection() as conn:
            found = await (await conn.execute(query, params)).fetchall()
        runs = {r["run_id"]: rows.run_from(r) for r in found}
        projection.apply_to_runs(runs, view.changes)
        ordered = sorted(runs.values(), key=lambda r: (r.created_at, r.run_id), reverse=True)
        if status is not None:
            ordered = [r for r in ordered if r.status == status]
        return ordered[offset : offset + limit]

    async def in_flight(self, thread_id: str) -> list[str]:
        view = await self.thread(thread_id)
        if view.row is None:
            return []
        fold = view.row.fold
        return ([fold.running] if fold.running is not None else []) + list(fold.queue)

    # -- many threads -------------------------------------------------------------------------
    async def caught_up(self) -> None:
        """Returns once the projection has applied everything it projects that the log holds now."""
        newest = await self.log.last_seq()
        deadline = time.monotonic() + self.catch_up_timeout_s
        while True:
            async with self.db.connection() as conn:
                found = await (
                    await conn.execute("select position from projection_positions where projection = %s", (PROJECTION,))
                ).fetchone()
            position = found["position"] if found else 0
            if position >= newest:
                return
            # The newest messages may be ones it does not project (pending writes).
            unapplied = await asyncio.gather(*(self.log.next_seq(f, position) for f in projected_subjects()))
            if all(seq is None or seq > newest for seq in unapplied):
                return
            if time.monotonic() > deadline:
                log.warning("read model behind the log; answering from what it has", position=position, log_end=newest)
                return
            await asyncio.sleep(_CATCH_UP_POLL_S)

    async def search_threads(
        self,
        *,
        metadata: dict | None = None,
        values: dict | None = None,
        status: str | None = None,
        ids: list[str] | None = None,
        required: list[dict] | None = None,
        limit: int | None = 10,
        offset: int = 0,
        sort_by: str | None = None,
        sort_order: str | None = None,
    ) -> list[ThreadRow]:
        """``required``: further metadata filters, each a containment or ``{"$or": [...]}``
        alternatives (what auth handlers ask for)."""
        where, params = _thread_filters(metadata, values, status, ids, required)
        column = sort_by if sort_by in THREAD_SORT_COLUMNS else "updated_at"
        direction = "asc" if sort_order == "asc" else "desc"
        query = f"select {rows.THREAD_COLUMNS} from threads t where {where} order by {column} {direction}, thread_id {direction}"
        if limit is not None:
            query += " limit %s offset %s"
            params += [limit, offset]
        await self.caught_up()
        async with self.db.connection() as conn:
            return [rows.thread_from(r) for r in await (await conn.execute(query, params)).fetchall()]

    async def count_threads(self, **filters) -> int:
        where, params = _thread_filters(
            filters.get("metadata"), filters.get("values"), filters.get("status"), filters.get("ids"), filters.get("required")
        )
        await self.caught_up()
        async with self.db.connection() as conn:
            found = await (await conn.execute(f"select count(*) as n from threads t where {where}", params)).fetchone()
        return found["n"]


_ENDINGS = (
    projection.contracts.RunSucceeded,
    projection.contracts.RunInterrupted,
    projection.contracts.RunFailed,
    projection.contracts.RunStopped,
    projection.contracts.RunRolledBack,
)


def _thread_filters(metadata, values, status, ids, required) -> tuple[str, list[Any]]:
    from psycopg.types.json import Jsonb

    clauses, params = ["true"], []
    if metadata:
        clauses.append("metadata @> %s")
        params.append(Jsonb(metadata))
    if values:
        clauses.append('"values" @> %s')
        params.append(Jsonb(values))
    if status:
        clauses.append("status = %s")
        params.append(status)
    if ids is not None:
        clauses.append("thread_id = any(%s)")
        params.append(list(ids))
    for condition in required or []:
        alternatives = condition.get("$or") if set(condition) == {"$or"} else [condition]
        clauses.append("(" + " or ".join("metadata @> %s" for _ in alternatives) + ")")
        params += [Jsonb(a) for a in alternatives]
    return " and ".join(clauses), params
