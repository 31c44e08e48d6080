"""What every gateway resource shares: records in KV buckets (read, created, updated with a
revision check), ids, errors and the small pure helpers on records."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

import nats.js.errors
import orjson
from fastapi import HTTPException

from services.gateway import auth
from threadbus import broker

def iso_now() -> str:
    return datetime.now(timezone.utc).isoformat()


def not_found(what: str) -> HTTPException:
    return HTTPException(404, f"{what} not found")


def check_uuid(value: str, what: str) -> str:
    try:
        uuid.UUID(value)
    except ValueError:
        raise HTTPException(422, f"Invalid {what} ID: must be a UUID") from None
    return value


def matches(record: dict[str, Any], wanted: dict[str, Any] | None) -> bool:
    return not wanted or all(record.get(k) == v for k, v in wanted.items())


def owned(metadata: dict[str, Any]) -> dict[str, Any]:
    identity = auth.current_identity.get()
    return metadata if identity is None else {**metadata, "owner": identity}


def _version_key(assistant_id: str, version: int) -> str:
    return f"{assistant_id}.{version}"


async def get(kv, key: str) -> tuple[dict[str, Any], int] | None:
    try:
        entry = await kv.get(key)
    except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
        return None
    if not entry.value:
        return None
    return orjson.loads(entry.value), entry.revision

async def put_new(kv, key: str, record: dict[str, Any]) -> bool:
    try:
        await kv.create(key, orjson.dumps(record))
        return True
    except nats.js.errors.KeyWrongLastSequenceError:
        return False

async def update(kv, key: str, change, current: tuple[dict[str, Any], int] | None = None) -> dict[str, Any] | None:
    """Read-modify-write with a revision check, retried on a concurrent update.

    ``change`` returns None when the record already says what it would write, so writers that
    race to set the same value stop at the first re-read instead of exhausting the retries.
    ``current``: the record and its revision as just read, which saves the first read.
    """
    for _ in range(10):
        if current is None:
            current = await get(kv, key)
        if current is None:
            return None
        record, revision = current
        updated = change(dict(record))
        if updated is None:
            return record
        try:
            await kv.update(key, orjson.dumps(updated), last=revision)
            return updated
        except nats.js.errors.KeyWrongLastSequenceError:
            current = None
            continue
    raise HTTPException(409, f"{key} is being updated concurrently; try again")

async def all_records(kv) -> list[dict[str, Any]]:
    return [orjson.loads(entry.value) for entry in await broker.kv_scan(kv) if entry.value]
