"""Approval bot: answers every human-in-the-loop question with a configured answer, over the bus.

    .venv/bin/python examples/integrations/approval_bot.py --answer yes   # with `make dev` running

On each ``RunInterrupted`` that asks something (an ``interrupt()`` in the graph), it resumes the
thread with ``Command(resume=<answer>)``: an ordinary ``RunRequested``, decided by the
orchestrator like one from the HTTP API. The resume's run id is derived from the paused run, so a
pause seen twice (a redelivery, two bots) is resumed once. It starts with the pauses that happen
after its first start (its durable consumer ``approval-bot`` then resumes where it stopped).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from fast_depends import Depends
from faststream import FastStream
from nats.js.api import DeliverPolicy

import contracts
from threadbus import logs
from threadbus.integrations import (
    Requester,
    RunRefused,
    ThreadEvents,
    UnknownThread,
    bus_requester,
    connect,
    resume_run_id,
)
from threadbus.settings import Settings

DURABLE = "approval-bot"
log = logs.get("approval_bot")


def router(answer: Any) -> ThreadEvents:
    events = ThreadEvents()

    @events.on(contracts.RunInterrupted, durable=DURABLE, deliver_policy=DeliverPolicy.NEW)
    async def approve(event: contracts.RunInterrupted, requester: Requester = Depends(bus_requester)) -> None:
        if not event.interrupts:
            return  # paused by interrupt_before/after: nothing was asked
        try:
            resume = await requester.resume(event.thread_id, answer, run_id=resume_run_id(event))
        except (RunRefused, UnknownThread) as err:  # resumed by someone else, or gone
            log.info("pause not resumed", thread_id=event.thread_id, run_id=event.run_id, reason=str(err))
            return
        log.info("pause resumed", thread_id=event.thread_id, paused_run=event.run_id, run_id=resume.run_id)

    return events


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--answer", default="approved", help="the resume value: JSON, or else a string (default: approved)")
    args = parser.parse_args()
    settings = Settings()
    logs.configure(settings.log_level, settings.log_format)
    broker = connect(settings)
    broker.include_router(router(_value(args.answer)))
    log.info("approval bot answering", answer=args.answer, nats_url=settings.nats_url)
    asyncio.run(FastStream(broker, logger=None).run())


if __name__ == "__main__":
    main()
