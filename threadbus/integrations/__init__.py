"""Services that react on the bus, written with FastStream: typed handlers for the thread log's
events and a typed way to ask for runs, without rebuilding subjects, decoding or the rules the
gateway applies. ``docs/integrations.md`` shows a whole service; ``examples/integrations/`` two.

    from threadbus.integrations import Requester, ThreadEvents, bus_requester, connect

    router = ThreadEvents()

    @router.on(contracts.RunInterrupted, durable="approval-bot")
    async def approve(event: contracts.RunInterrupted, requester: Requester = Depends(bus_requester)):
        await requester.resume(event.thread_id, "yes", run_id=resume_run_id(event))

    broker = connect(Settings())
    broker.include_router(router)
"""

from threadbus.integrations.events import AnyThreadEvent, ThreadEvents, connect, surface
from threadbus.integrations.requester import (
    Requester,
    RunRefused,
    UnknownAssistant,
    UnknownThread,
    bus_requester,
    resume_run_id,
)

__all__ = [
    "AnyThreadEvent",
    "Requester",
    "RunRefused",
    "ThreadEvents",
    "UnknownAssistant",
    "UnknownThread",
    "bus_requester",
    "connect",
    "resume_run_id",
    "surface",
]
