"""The read model's rows in SQL: reading and writing :mod:`threadbus.read_model.projection`'s
rows, and turning them into the API's objects."""

from __future__ import annotations

from typing import Any

from psycopg.types.json import Jsonb

from threadbus.read_model.projection import (
    RunRow,
    ThreadRow,
    fold_from_json,
    fold_to_json,
)

THREAD_COLUMNS = (
    "thread_id, created_at, updated_at, state_updated_at, metadata, status, \"values\", interrupts, error, fold, log_seq"
)
# What the projector reads of a row: never a thread's values (its whole state), which a projection
# only replaces from a checkpoint.
_THREAD_COLUMNS_BUT_VALUES = ", ".join(
    'null as "values"' if c.strip() == '"values"' else c.strip() for c in THREAD_COLUMNS.split(",")
)
RUN_COLUMNS = "run_id, thread_id, assistant_id, created_at, updated_at, status, metadata, multitask_strategy, kwargs"


def thread_from(record: dict[str, Any]) -> ThreadRow:
    return ThreadRow(
        thread_id=record["thread_id"],
        created_at=record["created_at"],
        updated_at=record["updated_at"],
        state_updated_at=record["state_updated_at"],
        metadata=record["metadata"],
        fold=fold_from_json(record["fold"]),
        log_seq=record["log_seq"],
        status=record["status"],
        values=record["values"],
        interrupts=record["interrupts"],
        error=record["error"],
    )


def run_from(record: dict[str, Any]) -> RunRow:
    return RunRow(**{k: record[k] for k in RunRow.__dataclass_fields__})


async def load_threads(conn, thread_ids: set[str]) -> dict[str, ThreadRow]:
    """The threads' rows, without their values (None)."""
    cur = await conn.execute(f"select {_THREAD_COLUMNS_BUT_VALUES} from threads where thread_id = any(%s)", (list(thread_ids),))
    return {r["thread_id"]: thread_from(r) for r in await cur.fetchall()}


Statement = tuple[str, tuple[Any, ...]]

_THREAD_UPSERT = (
    f"insert into threads ({THREAD_COLUMNS}) values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
    " on conflict (thread_id) do update set updated_at = excluded.updated_at,"
    " state_updated_at = excluded.state_updated_at, metadata = excluded.metadata, status = excluded.status,"
    " interrupts = excluded.interrupts, error = excluded.error, fold = excluded.fold, log_seq = excluded.log_seq"
)


def thread_upsert(row: ThreadRow, *, values_changed: bool) -> Statement:
    """The statement that stores ``row``. Its values, the thread's whole state, are written only
    when they changed: most events change a thread's status, not its state. (A row inserted
    with its values unchanged has none yet.)"""
    sql = _THREAD_UPSERT + (', "values" = excluded."values"' if values_changed else "")
    values = Jsonb(row.values) if values_changed and row.values is not None else None
    return sql, (
        row.thread_id,
        row.created_at,
        row.updated_at,
        row.state_updated_at,
        Jsonb(row.metadata),
        row.status,
        values,
        Jsonb(row.interrupts),
        Jsonb(row.error) if row.error is not None else None,
        Jsonb(fold_to_json(row.fold)),
        row.log_seq,
    )


def run_upsert(run: RunRow) -> Statement:
    return (
        (
            f"insert into runs ({RUN_COLUMNS}) values (%s, %s, %s, %s, %s, %s, %s, %s, %s) on conflict (run_id) do update"
            " set status = excluded.status, updated_at = excluded.updated_at"
        ),
        (
            run.run_id,
            run.thread_id,
            run.assistant_id,
            run.created_at,
            run.updated_at,
            run.status,
            Jsonb(run.metadata),
            run.multitask_strategy,
            Jsonb(run.kwargs),
        ),
    )


def thread_object(row: ThreadRow) -> dict[str, Any]:
    """A thread as LangGraph Platform shows it."""
    return {
        "thread_id": row.thread_id,
        "created_at": row.created_at.isoformat(),
        "updated_at": row.updated_at.isoformat(),
        "state_updated_at": row.state_updated_at.isoformat(),
        "metadata": row.metadata,
        "status": row.status,
        "config": {},
        "values": row.values,
        "interrupts": row.interrupts,
        "error": row.error if row.status == "error" else None,
    }


def run_object(run: RunRow) -> dict[str, Any]:
    """A run as LangGraph Platform shows it."""
    return {
        "run_id": run.run_id,
        "thread_id": run.thread_id,
        "assistant_id": run.assistant_id,
        "created_at": run.created_at.isoformat(),
        "updated_at": run.updated_at.isoformat(),
        "status": run.status,
        "metadata": run.metadata,
        "multitask_strategy": run.multitask_strategy,
        "kwargs": run.kwargs,
    }
