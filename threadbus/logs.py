"""structlog set-up: one event per line, JSON when stdout is not a terminal."""

from __future__ import annotations

import asyncio
import logging
import sys

import structlog


def configure(level: str = "info", fmt: str = "auto") -> None:
    as_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    # On a terminal the console renderer prints exceptions itself (and warns if they come formatted).
    tail = [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()] if as_json else [
        structlog.dev.ConsoleRenderer()
    ]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            *tail,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # uvicorn and nats log through the standard library; keep them on the same stream and level.
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")


def awaiting(task: asyncio.Task) -> list[str]:
    """The chain of coroutines a task is suspended in, outermost first."""
    chain, coro = [], task.get_coro()
    while coro is not None and getattr(coro, "cr_frame", None) is not None:
        chain.append(f"{coro.cr_code.co_name} ({coro.cr_code.co_filename.rsplit('/', 1)[-1]}:{coro.cr_frame.f_lineno})")
        coro = coro.cr_await
    return chain


def get(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)
