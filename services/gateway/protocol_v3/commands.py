"""``POST /threads/{thread_id}/commands``: the v3 protocol's commands and their envelopes.

Every command answers HTTP 200 with ``{"type": "success", "id", "result", "meta"}`` or
``{"type": "error", "id", "error": <code>, "message"}``; HTTP 400 only for a body that is not
JSON (``{"detail"}``) or has no integer ``id`` / string ``method`` (an error envelope, ``id:
null``). ``meta.applied_through_seq`` is the thread's newest event before the command, so it never
covers the events of a run the command starts (the SDK folds it into its reconnect cursor).

Runs started here (``run.start``, ``input.respond``) are ordinary runs: the classic runs path
prepares them and appends ``RunRequested``, the orchestrator decides them (double texting
included), and they are listed and read like any other; they only stream to the thread stream
instead of an SSE response.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, Response

from services.gateway.models import CommandBody, RunCreate
from services.gateway.protocol_v3 import events
from threadbus import logs

log = logs.get("threadbus.gateway.protocol_v3")
router = APIRouter(tags=["thread protocol (v3)"])

# Run statuses as the protocol's agent statuses.
_AGENT_STATUS = {"pending": "started", "running": "running", "success": "completed", "error": "failed",
                 "timeout": "failed", "interrupted": "interrupted"}
# Subscriptions belong to a connection: a WebSocket has them, a stateless HTTP command cannot.
SUBSCRIPTION_METHODS = frozenset({"subscription.subscribe", "subscription.unsubscribe", "subscription.reconnect"})
# Commands of the protocol that threadbus does not serve yet (README, "Not built yet").
NOT_BUILT = frozenset({"input.inject", "state.get", "state.listCheckpoints", "state.fork"})


class CommandError(Exception):
    def __init__(self, code: str, message: str, **extra: Any):
        super().__init__(message)
        self.code = code
        self.message = message
        self.extra = extra


def success(command_id: int, result: dict[str, Any], applied_through_seq: int | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"type": "success", "id": command_id, "result": result}
    if applied_through_seq is not None:
        response["meta"] = {"applied_through_seq": applied_through_seq}
    return response


def error(command_id: int | None, code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"type": "error", "id": command_id, "error": code, "message": message, **extra}


def envelope(raw: Any) -> tuple[int, str, dict[str, Any]]:
    """(id, method, params) of a command; CommandError(invalid_argument) for a malformed envelope."""
    if not isinstance(raw, dict):
        raise CommandError("invalid_argument", "a command is a JSON object {id, method, params}")
    command_id, method = raw.get("id"), raw.get("method")
    if not isinstance(command_id, int) or isinstance(command_id, bool) or command_id < 0:
        raise CommandError("invalid_argument", "a command needs a non-negative integer id")
    if not isinstance(method, str):
        raise CommandError("invalid_argument", "a command needs a string method")
    return command_id, method, raw.get("params") if raw.get("params") is not None else {}


class Commands:
    """The commands that act on the thread (not on a connection's subscriptions)."""

    def __init__(self, backend):
        self.backend = backend

    async def execute(self, thread_id: str, command_id: int, method: str, params: Any) -> dict[str, Any]:
        handler = {"run.start": self.run_start, "input.respond": self.input_respond, "agent.getTree": self.get_tree}.get(method)
        if handler is None:
            if method in NOT_BUILT:
                return error(command_id, "not_supported", f"{method} is not built yet")
            if method in SUBSCRIPTION_METHODS:
                return error(command_id, "not_supported", f"{method} is a WebSocket command; over HTTP, open POST /threads/{{id}}/stream/events")
            return error(command_id, "unknown_command", f"unknown method {method!r}")
        if not isinstance(params, dict):
            return error(command_id, "invalid_argument", "params must be a JSON object")
        try:
            applied = await events.last_seq(self.backend.js, thread_id)
            result = await handler(thread_id, params)
        except CommandError as err:
            return error(command_id, err.code, err.message, **err.extra)
        except HTTPException as err:
            # What the classic path refuses (unknown assistant, a busy thread with "reject", a bad id).
            code = "unknown_error" if err.status_code >= 500 else "invalid_argument"
            return error(command_id, code, str(err.detail))
        except Exception as err:  # the envelope still answers; the log has the cause
            log.exception("command failed", thread_id=thread_id, method=method)
            return error(command_id, "unknown_error", f"{type(err).__name__}: {err}")
        return success(command_id, result, applied)

    async def run_start(self, thread_id: str, params: dict[str, Any]) -> dict[str, Any]:
        assistant_id = params.get("assistant_id")
        if not isinstance(assistant_id, str) or not assistant_id:
            raise CommandError("invalid_argument", "run.start needs an assistant_id")
        config = _object(params, "config")
        graph_input = params.get("input")
        command = None
        if graph_input is not None and await self._paused(thread_id):
            # Input for a thread paused in an interrupt answers the interrupt.
            command, graph_input = CommandBody(resume=graph_input), None
        body = self._body(
            params, assistant_id=assistant_id, input=graph_input, command=command, config=config or None,
            metadata=_object(params, "metadata") or None,
            checkpoint_id=((config or {}).get("configurable") or {}).get("checkpoint_id"),
        )
        return {"run_id": await self._submit(thread_id, body)}

    async def input_respond(self, thread_id: str, params: dict[str, Any]) -> dict[str, Any]:
        responses = params.get("responses")
        if responses is None:
            responses = [params]
        if not isinstance(responses, list) or not responses or not all(isinstance(r, dict) for r in responses):
            raise CommandError("invalid_argument", "responses must be a non-empty list of {interrupt_id, response}")
        for item in responses:
            if not isinstance(item.get("interrupt_id"), str):
                raise CommandError("invalid_argument", "input.respond needs an interrupt_id")
        try:
            record = await self.backend.threads.record(thread_id)
        except HTTPException:
            raise CommandError("no_such_run", f"thread {thread_id} has no run") from None
        if not await self._paused(thread_id):
            raise CommandError("no_such_run", "no run of this thread is waiting for input")
        state = await self.backend.threads.state(record)
        pending = {i.get("id") for task in state.get("tasks") or [] for i in task.get("interrupts") or []}
        for item in responses:
            if item["interrupt_id"] not in pending:
                raise CommandError("no_such_interrupt", f"no pending interrupt {item['interrupt_id']!r}")
        assistant_id = (record.get("metadata") or {}).get("assistant_id")
        resume = {item["interrupt_id"]: item.get("response") for item in responses}
        command = CommandBody(resume=resume, update=params.get("update"), goto=params.get("goto"))
        await self._submit(thread_id, self._body(params, assistant_id=assistant_id, command=command))
        return {}

    async def get_tree(self, thread_id: str, params: dict[str, Any]) -> dict[str, Any]:
        wanted = params.get("run_id")
        try:
            record = await self.backend.threads.record(thread_id)
        except HTTPException:
            record = None
        if wanted is not None:
            run = await self.backend.reads.run(thread_id, str(wanted)) if record else None
        else:
            newest = await self.backend.reads.runs(thread_id, limit=1) if record else []
            run = newest[0] if newest else None
        if run is None:
            raise CommandError("no_such_run", "the thread has no run yet" if wanted is None else f"no run {wanted!r}")
        status = _AGENT_STATUS.get(run.status, "failed")
        return {"tree": {"namespace": [], "status": status, "graph_name": (record.get("metadata") or {}).get("graph_id")}}

    async def _paused(self, thread_id: str) -> bool:
        view = await self.backend.reads.thread(thread_id)
        return view.row is not None and view.row.fold.paused

    def _body(self, params: dict[str, Any], **fields: Any) -> RunCreate:
        strategy = params.get("multitaskStrategy", params.get("multitask_strategy"))
        try:
            return RunCreate(if_not_exists="create", multitask_strategy=strategy, **fields)
        except ValueError as err:
            raise CommandError("invalid_argument", str(err)) from None

    async def _submit(self, thread_id: str, body: RunCreate) -> str:
        request = await self.backend.runs.prepare(thread_id, body)
        request.kwargs.thread_stream = True
        async with self.backend.runs.events(thread_id, request.run_id) as control:
            await self.backend.runs.submit(request, control)
        log.info("run started by thread protocol", thread_id=thread_id, run_id=request.run_id)
        return request.run_id


def _object(params: dict[str, Any], key: str) -> dict[str, Any] | None:
    value = params.get(key)
    if value is not None and not isinstance(value, dict):
        raise CommandError("invalid_argument", f"{key} must be a JSON object")
    return value


@router.post(
    "/threads/{thread_id}/commands",
    responses={400: {"description": "not JSON ({detail}), or no integer id / string method (an error envelope)"}},
)
async def commands(thread_id: str, request: Request) -> Response:
    try:
        raw = orjson.loads(await request.body())
    except orjson.JSONDecodeError as err:
        return JSONResponse({"detail": f"the body is not JSON: {err}"}, status_code=400)
    try:
        command_id, method, params = envelope(raw)
    except CommandError as err:
        return JSONResponse(error(None, err.code, err.message), status_code=400)
    return JSONResponse(await Commands(request.app.state.backend).execute(thread_id, command_id, method, params))
