"""Who may follow a thread's stream before the thread exists."""

from __future__ import annotations

from fastapi import HTTPException

from services.gateway.domain import records


async def check_readable(backend, thread_id: str) -> None:
    """404 for a thread the caller may not read. A thread that does not exist yet may be
    followed: the SDK opens its stream before ``run.start`` creates the thread."""
    try:
        await backend.threads.record(thread_id)
    except HTTPException as err:
        if err.status_code != 404 or await records.get(backend.threads.kv, thread_id) is not None:
            raise
