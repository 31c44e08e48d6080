"""The ``threadbus`` command.

``threadbus dev`` runs everything in one process on an embedded nats-server; ``threadbus
gateway|orchestrator|executor`` run one service each against ``NATS_URL``, as in production.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
from pathlib import Path

import uvicorn

from threadbus import broker, logs
from threadbus.settings import Settings

log = logs.get("threadbus")


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: threadbus stops every component in order."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


def _graphs(settings: Settings):
    from threadbus.graphs import GraphRegistry

    return GraphRegistry(settings.config)


async def run_gateway(settings: Settings, stop: asyncio.Event, graphs=None) -> None:
    from services.gateway.app import create_app

    app = create_app(settings, graphs or _graphs(settings))
    server = _Server(uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None, access_log=False))
    serving = asyncio.create_task(server.serve())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
    app.state.closing.set()
    server.should_exit = True
    await serving


async def run_orchestrator(settings: Settings, stop: asyncio.Event) -> None:
    from services.orchestrator.service import Orchestrator

    nc = await broker.connect(settings, "orchestrator")
    try:
        await broker.bootstrap(nc, settings)
        await _with_health(settings, nc, stop, Orchestrator(nc, settings).run(stop))
    finally:
        await broker.close(nc)


async def run_executor(settings: Settings, stop: asyncio.Event, graphs=None) -> None:
    from services.executor.service import Executor

    nc = await broker.connect(settings, "executor")
    try:
        await broker.bootstrap(nc, settings)
        await _with_health(settings, nc, stop, Executor(nc, settings, graphs or _graphs(settings)).run(stop))
    finally:
        await broker.close(nc)


async def _with_health(settings: Settings, nc, stop: asyncio.Event, service) -> None:
    """Runs ``service``, and its /metrics, /ok and /ready on THREADBUS_METRICS_PORT when set."""
    if not settings.metrics_port:
        await service
        return
    from threadbus.metrics import health_app

    app = health_app(lambda: nc.is_connected)
    server = _Server(uvicorn.Config(app, host=settings.host, port=settings.metrics_port, log_config=None, access_log=False))
    serving = asyncio.create_task(server.serve())
    try:
        await service
    finally:
        server.should_exit = True
        await serving


def _stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, _log_tasks)


def _log_tasks() -> None:
    """On SIGUSR1: every task and where it waits, one line each, for a process that looks stuck."""
    for task in asyncio.all_tasks():
        log.info("task", name=task.get_name(), waiting_in=logs.awaiting(task))


async def _run_one(name: str, settings: Settings) -> None:
    stop = asyncio.Event()
    _stop_on_signals(stop)
    runner = {"gateway": run_gateway, "orchestrator": run_orchestrator, "executor": run_executor}[name]
    await runner(settings, stop)
    log.info("stopped", service=name)


async def _run_dev(settings: Settings, data_dir: Path, nats_url: str | None) -> None:
    from threadbus.embedded import EmbeddedNats, EmbeddedPostgres

    stop = asyncio.Event()
    _stop_on_signals(stop)
    server = database = None
    if nats_url is None:
        server = EmbeddedNats(
            data_dir / "nats",
            port=_port_if_free(settings.nats_url),  # where NATS_URL's default finds it: integrations run as they are
            sync_interval=settings.sync_interval,
            max_payload_mb=settings.max_payload_mb,
        )
        settings.nats_url = await asyncio.to_thread(server.start)
        log.info("embedded nats-server started", url=settings.nats_url, data_dir=str(data_dir / "nats"))
    if settings.database_url is None:
        try:
            database = EmbeddedPostgres(data_dir / "postgres" / "data")
            settings.database_url = await asyncio.to_thread(database.start)
        except BaseException:
            if server is not None:
                await asyncio.to_thread(server.stop)
            raise
        log.info("embedded postgres started", url=settings.database_url, data_dir=str(data_dir / "postgres"))
    try:
        graphs = _graphs(settings)
        # The broker's streams exist before any service subscribes.
        nc = await broker.connect(settings, "dev")
        await broker.bootstrap(nc, settings)
        await nc.close()
        services = [
            asyncio.create_task(run_orchestrator(settings, stop), name="orchestrator"),
            asyncio.create_task(run_executor(settings, stop, graphs), name="executor"),
            asyncio.create_task(run_gateway(settings, stop, graphs), name="gateway"),
        ]
        log.info("threadbus dev serving", url=f"http://{settings.host}:{settings.port}", graphs=graphs.ids(), nats_url=settings.nats_url)
        for command in _next_commands(settings):
            log.info("try", command=command)
        done, _ = await asyncio.wait(services, return_when=asyncio.FIRST_COMPLETED)
        stop.set()
        results = await asyncio.gather(*services, return_exceptions=True)
        for task, result in zip(services, results):
            if isinstance(result, BaseException):
                log.error("service failed", service=task.get_name(), error=repr(result))
    finally:
        if database is not None:
            await asyncio.to_thread(database.stop)
            log.info("embedded postgres stopped")
        if server is not None:
            await asyncio.to_thread(server.stop)
            log.info("embedded nats-server stopped")


def _port_if_free(nats_url: str) -> int | None:
    """The port of the (first) NATS URL if nothing listens there, else None (any free port)."""
    from urllib.parse import urlsplit

    port = urlsplit(nats_url.split(",")[0].strip()).port or 4222
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return None
    return port


def _next_commands(settings: Settings) -> list[str]:
    """What to run next, in a second terminal, against this server."""
    nats = "" if settings.nats_url == Settings.model_fields["nats_url"].default else f"NATS_URL={settings.nats_url} "
    lesson = ".venv/bin/python examples/double_texting.py"
    if settings.port != Settings.model_fields["port"].default:
        lesson += f" http://{settings.host}:{settings.port}"
    return [lesson, f"{nats}.venv/bin/python examples/integrations/audit_sink.py audit.jsonl"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="threadbus", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    dev = sub.add_parser("dev", help="run everything on one machine with an embedded nats-server and postgres")
    dev.add_argument("--config", help="langgraph.json (default: THREADBUS_CONFIG or ./langgraph.json)")
    dev.add_argument("--host")
    dev.add_argument("--port", type=int)
    dev.add_argument("--data-dir", default=os.environ.get("THREADBUS_DATA_DIR", ".threadbus"))
    dev.add_argument("--nats-url", help="use this NATS server instead of starting one")
    for name in ("gateway", "orchestrator", "executor"):
        p = sub.add_parser(name, help=f"run the {name} against NATS_URL")
        if name != "orchestrator":
            p.add_argument("--config", help="langgraph.json (default: THREADBUS_CONFIG or ./langgraph.json)")
    verify = sub.add_parser("verify", help="replay thread logs on NATS_URL and check the invariants; exit 1 on a violation")
    verify.add_argument("--thread", help="check only this thread (default: every thread)")
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    events = sub.add_parser("events", help="print a thread's log from NATS_URL as a timeline (the audit trail)")
    events.add_argument("thread_id")
    events.add_argument("--follow", action="store_true", help="keep printing events as they are appended")
    events.add_argument("--json", action="store_true", help="one JSON object per event")
    args = parser.parse_args(argv)

    settings = Settings()
    for field in ("config", "host", "port"):
        value = getattr(args, field, None)
        if value is not None:
            setattr(settings, field, value)
    logs.configure(settings.log_level, settings.log_format)
    try:
        if args.command == "dev":
            if args.nats_url:
                settings.nats_url = args.nats_url
            _run(_run_dev(settings, Path(args.data_dir), args.nats_url))
        elif args.command == "verify":
            from threadbus.verify import run_cli

            sys.exit(_run(run_cli(settings, args.thread, args.json)))
        elif args.command == "events":
            from threadbus import timeline

            sys.exit(_run(timeline.run_cli(settings, args.thread_id, args.follow, args.json)))
        else:
            _run(_run_one(args.command, settings))
    except KeyboardInterrupt:
        pass
    sys.exit(0)


def _run(main):
    """``asyncio.run``, on uvloop's event loop where it is installed (not on Windows): every
    service is socket I/O (HTTP, NATS, PostgreSQL), and a broker round trip costs 10-25% less
    Python CPU on it (measured); uvicorn's HTTP parser is httptools' for the same reason."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


if __name__ == "__main__":
    main()
