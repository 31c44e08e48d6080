"""Who is calling, and what they own.

Off unless configured. With ``THREADBUS_API_KEYS`` (``key=identity`` pairs, comma-separated)
every endpoint but ``/ok`` and ``/ready`` needs one of the keys, as ``x-api-key`` or
``Authorization: Bearer <key>``. With ``auth.path`` in ``langgraph.json`` (LangGraph Platform's
shape: a ``langgraph_sdk.Auth`` object), its ``@auth.authenticate`` handler decides instead.

Ownership follows the identity: a thread records its creator in ``metadata.owner``, and a
caller sees and touches only its own threads and their runs; store namespaces must start
with the caller's identity. Someone else's thread is a 404, as a missing one is, so ids
cannot be probed.

``@auth.on`` handlers of the ``auth.path`` object apply on top, for threads (``create``: may
add metadata; ``read`` — any use of an existing thread, its runs and state —, ``search``:
may return metadata filters; ``delete``), assistants and crons (``create``: may add metadata;
``read``, ``update``, ``delete``, ``search``: may return metadata filters) and the store (every
action: may rewrite ``value["namespace"]``). A handler returning False refuses with 403;
filters a record does not match make it a 404 and leave it out of searches and counts.
"""

from __future__ import annotations

import contextvars
import inspect
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException, Request
from langgraph_sdk.auth import exceptions as sdk_exceptions
from langgraph_sdk.auth.types import AuthContext

# The identity of the request being served; None when auth is off.
current_identity: contextvars.ContextVar[str | None] = contextvars.ContextVar("current_identity", default=None)
# The caller as @auth.on handlers see it, and the Auth object whose handlers apply.
_current_user: contextvars.ContextVar[User | None] = contextvars.ContextVar("current_user", default=None)
_current_custom: contextvars.ContextVar[Any] = contextvars.ContextVar("current_custom", default=None)


@dataclass(frozen=True)
class User:
    """What ``ctx.user`` is to ``@auth.on`` handlers (LangGraph's ``BaseUser``)."""

    identity: str
    permissions: tuple[str, ...] = ()
    is_authenticated: bool = True

    @property
    def display_name(self) -> str:
        return self.identity

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)


class Authenticator:
    def __init__(self, api_keys: str | None, custom: Any = None):
        self.keys = dict(_pair(entry) for entry in (api_keys or "").split(",") if entry.strip())
        self.custom = custom

    @property
    def enabled(self) -> bool:
        return bool(self.keys) or self.custom is not None

    async def __call__(self, request: Request) -> None:
        """A FastAPI dependency: resolves the caller's identity for the rest of the request."""
        if not self.enabled:
            return
        user = await (self._custom(request) if self.custom is not None else self._api_key(request))
        current_identity.set(user.identity)
        _current_user.set(user)
        _current_custom.set(self.custom)

    async def _api_key(self, request: Request) -> User:
        key = request.headers.get("x-api-key")
        authorization = request.headers.get("authorization", "")
        if key is None and authorization.lower().startswith("bearer "):
            key = authorization[7:].strip()
        if key is None or key not in self.keys:
            raise HTTPException(401, "Missing or unknown API key (x-api-key or Authorization: Bearer)")
        return User(self.keys[key])

    async def _custom(self, request: Request) -> User:
        handler = self.custom._authenticate_handler
        if handler is None:
            raise HTTPException(500, "auth.path names an Auth object without an @auth.authenticate handler")
        available = {
            "request": request,
            "path": request.url.path,
            "method": getattr(request, "method", "GET"),  # a WebSocket upgrade is a GET
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
        if isinstance(user, str):
            user = {"identity": user}
        elif not isinstance(user, dict):
            user = {"identity": getattr(user, "identity", None), "permissions": getattr(user, "permissions", ())}
        if not user.get("identity"):
            raise HTTPException(401, "The authenticate handler returned no identity")
        return User(str(user["identity"]), tuple(user.get("permissions") or ()))


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


async def authorize(resource: str, action: str, value: dict[str, Any]) -> dict[str, Any] | None:
    """Runs the ``@auth.on`` handler for ``resource``/``action``, if any: returns its metadata
    filters (None: no filter); raises 403 when it refuses. ``value`` may be changed by it."""
    custom, user = _current_custom.get(), _current_user.get()
    if custom is None or user is None:
        return None
    handler = _handler(custom, resource, action)
    if handler is None:
        return None
    ctx = AuthContext(permissions=list(user.permissions), user=user, resource=resource, action=action)
    result = await handler(ctx=ctx, value=value)
    if result is False:
        raise HTTPException(403, f"Not allowed to {action} {resource}")
    return result if isinstance(result, dict) else None


def _handler(custom: Any, resource: str, action: str):
    for key in ((resource, action), (resource, "*"), ("*", action), ("*", "*")):
        if handlers := custom._handlers.get(key):
            return handlers[-1]
    return custom._global_handlers[-1] if custom._global_handlers else None


def visible_or_404(metadata: dict[str, Any] | None, filters: dict[str, Any] | None, what: str) -> None:
    """A record an ``@auth.on`` handler's filters exclude answers 404, exactly as a missing one."""
    if not satisfies(metadata, filters):
        raise HTTPException(404, f"{what} not found")


def satisfies(metadata: dict[str, Any] | None, filters: dict[str, Any] | None) -> bool:
    """Whether metadata meets an ``@auth.on`` handler's filters (values, ``$eq``, ``$contains``)."""
    metadata = metadata or {}
    for key, wanted in (filters or {}).items():
        found = metadata.get(key)
        if isinstance(wanted, dict) and "$contains" in wanted:
            if not isinstance(found, list) or wanted["$contains"] not in found:
                return False
        elif (wanted.get("$eq") if isinstance(wanted, dict) else wanted) != found:
            return False
    return True


def metadata_conditions(filters: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Ownership and an ``@auth.on`` handler's filters as metadata containments, for a query:
    the same conditions as :func:`owns` and :func:`satisfies`."""
    identity = current_identity.get()
    conditions = [] if identity is None else [{"owner": identity}]
    for key, wanted in (filters or {}).items():
        if isinstance(wanted, dict) and "$contains" in wanted:
            conditions.append({key: [wanted["$contains"]]})
        else:
            conditions.append({key: wanted.get("$eq") if isinstance(wanted, dict) else wanted})
    return conditions
