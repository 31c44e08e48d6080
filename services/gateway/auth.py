"""Who is calling, and what they own.

Off unless configured. With ``THREADBUS_API_KEYS`` (``key=identity`` pairs, comma-separated)
every endpoint but ``/ok`` and ``/ready`` needs one of the keys, as ``x-api-key`` or
``Authorization: Bearer <key>``. With ``auth.path`` in ``langgraph.json`` (LangGraph Platform's
shape: a ``langgraph_sdk.Auth`` object), its ``@auth.authenticate`` handler decides instead.

Ownership follows the identity: a thread records its creator in ``metadata.owner``, and a
caller sees and touches only its own threads and their runs; store namespaces must start
with the caller's identity. Someone else's thread is a 404, as a missing one is, so ids
cannot be probed. ``@auth.on`` authorization handlers are not applied yet (a warning at start).
"""

from __future__ import annotations

import contextvars
import inspect
from typing import Any

from fastapi import HTTPException, Request
from langgraph_sdk.auth import exceptions as sdk_exceptions

from threadbus import logs

log = logs.get("threadbus.gateway.auth")

# The identity of the request being served; None when auth is off.
current_identity: contextvars.ContextVar[str | None] = contextvars.ContextVar("current_identity", default=None)


class Authenticator:
    def __init__(self, api_keys: str | None, custom: Any = None):
        self.keys = dict(_pair(entry) for entry in (api_keys or "").split(",") if entry.strip())
        self.custom = custom
        if custom is not None and (getattr(custom, "_handlers", None) or getattr(custom, "_global_handlers", None)):
            log.warning("auth.on handlers are not applied by threadbus yet; ownership is by identity only")

    @property
    def enabled(self) -> bool:
        return bool(self.keys) or self.custom is not None

    async def __call__(self, request: Request) -> None:
        """A FastAPI dependency: resolves the caller's identity for the rest of the request."""
        if not self.enabled:
            return
        identity = await (self._custom(request) if self.custom is not None else self._api_key(request))
        current_identity.set(identity)

    async def _api_key(self, request: Request) -> str:
        key = request.headers.get("x-api-key")
        authorization = request.headers.get("authorization", "")
        if key is None and authorization.lower().startswith("bearer "):
            key = authorization[7:].strip()
        if key is None or key not in self.keys:
            raise HTTPException(401, "Missing or unknown API key (x-api-key or Authorization: Bearer)")
        return self.keys[key]

    async def _custom(self, request: Request) -> str:
        handler = self.custom._authenticate_handler
        if handler is None:
            raise HTTPException(500, "auth.path names an Auth object without an @auth.authenticate handler")
        available = {
            "request": request,
            "path": request.url.path,
            "method": request.method,
            "path_params": dict(request.path_params),
            "query_params": dict(request.query_params),
            "headers": {k.encode(): v.encode() for k, v in request.headers.items()},
            "authorization": request.headers.get("authorization"),
        }
        wanted = inspect.signature(handler).parameters
        try:
            user = await handler(**{name: available[name] for name in wanted if name in available})
        except sdk_exceptions.HTTPException as err:
            raise HTTPException(err.status_code, err.detail, headers=err.headers) from None
        identity = user if isinstance(user, str) else user.get("identity") if isinstance(user, dict) else getattr(user, "identity", None)
        if not identity:
            raise HTTPException(401, "The authenticate handler returned no identity")
        return str(identity)


def _pair(entry: str) -> tuple[str, str]:
    key, _, identity = entry.strip().partition("=")
    return key, identity or key


def owns(metadata: dict[str, Any] | None) -> bool:
    identity = current_identity.get()
    return identity is None or (metadata or {}).get("owner") == identity


def own_namespace(namespace: tuple[str, ...]) -> None:
    identity = current_identity.get()
    if identity is not None and (not namespace or namespace[0] != identity):
        raise HTTPException(404, f"Namespace {list(namespace)} not found: store namespaces start with your identity")
