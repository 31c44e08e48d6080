"""The gateway's FastAPI application."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from langgraph.store.base import InvalidNamespaceError

import threadbus
from services.gateway import assistants, crons, protocol_v3, runs, store, threads
from services.gateway.crons import Crons
from services.gateway.models import ERROR_RESPONSES
from services.gateway.auth import Authenticator
from services.gateway.backend import Backend
from services.gateway.webhooks import WebhookSender
from threadbus import broker, logs, metrics
from threadbus.graphs import GraphRegistry
from threadbus.read_model.database import DatabaseUnavailable, UnstorableValue
from threadbus.settings import Settings

log = logs.get("threadbus.gateway")

def create_app(settings: Settings, graphs: GraphRegistry) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        nc = await broker.connect(settings, "gateway")
        backend = Backend(nc, settings, graphs)
        await backend.start()
        app.state.backend = backend
        app.state.crons = Crons(backend, await backend.js.key_value(broker.CRONS_BUCKET))
        await app.state.crons.start()
        stopping = asyncio.Event()
        background = [
            asyncio.create_task(WebhookSender(backend).run(stopping), name="webhooks"),
            asyncio.create_task(app.state.crons.run(settings.cron_tick_s, stopping), name="crons"),
        ]
        log.info("gateway ready", graphs=graphs.ids())
        try:
            yield
        finally:
            stopping.set()
            await asyncio.gather(*background, return_exceptions=True)
            await app.state.crons.stop()
            await backend.stop()
            await broker.close(nc)

    app = FastAPI(title="threadbus", version=threadbus.__version__, lifespan=lifespan, responses=ERROR_RESPONSES)
    app.add_middleware(BodyLimit, limit=settings.max_body_mb * 1024 * 1024)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        return JSONResponse({"detail": _jsonable_errors(exc.errors())}, status_code=422)

    @app.exception_handler(InvalidNamespaceError)
    async def invalid_namespace(request: Request, exc: InvalidNamespaceError):
        return JSONResponse({"detail": _error_list(str(exc), ["body", "namespace"])}, status_code=422)

    @app.exception_handler(DatabaseUnavailable)
    async def database_away(request: Request, exc: DatabaseUnavailable):
        log.warning("read model database unavailable", path=request.url.path, error=str(exc)[:200])
        return JSONResponse({"detail": f"The read model's database is unavailable; try again shortly ({exc})"}, status_code=503)

    @app.exception_handler(UnstorableValue)
    async def unstorable(request: Request, exc: UnstorableValue):
        return JSONResponse({"detail": _error_list(f"A value cannot be searched for: {exc}", ["body"])}, status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        detail = exc.detail
        if exc.status_code == 422 and isinstance(detail, str):
            detail = _error_list(detail)
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)

    def connected() -> bool:
        backend = getattr(app.state, "backend", None)
        return backend is not None and backend.nc.is_connected

    authenticator = Authenticator(settings.api_keys, _custom_auth(graphs))
    app.state.authenticator = authenticator  # the v3 protocol's WebSocket authenticates itself
    # Set when the gateway is told to stop: thread streams, which never end on their own, end then.
    app.state.closing = asyncio.Event()
    metrics.add_routes(app, connected, guard=authenticator)

    @app.get("/info", dependencies=[Depends(authenticator)])
    async def info():
        return {
            "version": threadbus.__version__,
            "langgraph_py_version": _version("langgraph"),
            "flags": {"assistants": True, "crons": True, "langsmith": False},
            "host": {"kind": "threadbus"},
        }

    guard = [Depends(authenticator)]
    # Runs first: routes are matched in order, and a run's requests are most of the traffic. No
    # path of one router is also a path of another, so the order changes nothing else.
    for router in (runs.router, threads.router, assistants.router, store.router, crons.router):
        app.include_router(router, dependencies=guard)
    app.include_router(protocol_v3.commands.router, dependencies=guard)
    app.include_router(protocol_v3.sse.router, dependencies=guard)
    app.include_router(protocol_v3.websocket.router)
    return app


def _custom_auth(graphs: GraphRegistry):
    """The ``langgraph_sdk.Auth`` object that ``auth.path`` in langgraph.json names, if any."""
    path = (graphs.raw.get("auth") or {}).get("path")
    return graphs.resolve(path) if path else None


def _error_list(message: str, loc: list[str] | None = None) -> list[dict]:
    """One error in the shape the API document promises for every 422, whoever raised it."""
    return [{"loc": loc or [], "msg": message, "type": "value_error"}]


def _jsonable_errors(errors):
    out = []
    for err in errors:
        err = dict(err)
        err.pop("ctx", None)
        err.pop("url", None)
        if "input" in err and not isinstance(err["input"], (str, int, float, bool, type(None), list, dict)):
            err["input"] = str(err["input"])
        out.append(err)
    return out


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


class BodyLimit:
    """Refuses request bodies over ``limit`` bytes with 413, before they are read into memory:
    by their Content-Length, or while a chunked body streams in."""

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            response = JSONResponse({"detail": self._detail()}, status_code=413)
            return await response(scope, receive, send)
        received = 0

        async def limited():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise HTTPException(413, self._detail())
            return message

        await self.app(scope, limited, send)

    def _detail(self) -> str:
        return f"Request body larger than {self.limit // (1024 * 1024)} MB (THREADBUS_MAX_BODY_MB)"
