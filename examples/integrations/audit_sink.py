"""Audit sink: every event of every thread, appended to a JSON-lines file.

    .venv/bin/python examples/integrations/audit_sink.py audit.jsonl    # with `make dev` running

One line per control event, in log order:
``{"seq": <stream sequence>, "subject": ..., "event": <the event as stored>}``. It reads from the
durable consumer ``audit-sink``, so a sink that stops (or is killed) carries on where it stopped;
an event it wrote but had not acknowledged yet comes again and is recognised by its sequence, so
every event is in the file exactly once. Checkpoints are not audit material and are left out.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

import orjson
from faststream import FastStream
from faststream.nats.annotations import NatsMessage
from nats.js.api import ConsumerConfig

from threadbus import logs
from threadbus.integrations import AnyThreadEvent, ThreadEvents, connect
from threadbus.settings import Settings

DURABLE = "audit-sink"
log = logs.get("audit_sink")


class AuditFile:
    """An append-only JSON-lines file that knows the last sequence it holds."""

    def __init__(self, path: Path):
        self.path = path
        self.last_seq = self._recover()
        self.file = open(path, "ab")

    def _recover(self) -> int:
        if not self.path.exists():
            return 0
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            # Killed halfway through a line: drop it; its event is delivered again.
            data = data[: data.rfind(b"\n") + 1]
            self.path.write_bytes(data)
        lines = data.splitlines()
        return orjson.loads(lines[-1])["seq"] if lines else 0

    def append(self, seq: int, subject: str, event: bytes) -> bool:
        """Writes the event unless the file holds it already; True when written."""
        if seq <= self.last_seq:
            return False
        self.file.write(orjson.dumps({"seq": seq, "subject": subject, "event": orjson.Fragment(event)}) + b"\n")
        self.file.flush()
        os.fsync(self.file.fileno())  # on disk before the broker hears it was handled
        self.last_seq = seq
        return True


def router(audit: AuditFile) -> ThreadEvents:
    events = ThreadEvents()

    # One event in flight at a time: the file is in log order even when one is redelivered.
    @events.on(durable=DURABLE, config=ConsumerConfig(max_ack_pending=1))
    async def record(event: AnyThreadEvent, message: NatsMessage) -> None:
        raw = message.raw_message
        if audit.append(raw.metadata.sequence.stream, raw.subject, raw.data):
            log.debug("audited", thread_id=event.thread_id, type=type(event).__name__, seq=raw.metadata.sequence.stream)

    return events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", type=Path, help="the JSON-lines file to append to")
    args = parser.parse_args()
    settings = Settings()
    logs.configure(settings.log_level, settings.log_format)
    audit = AuditFile(args.path)
    broker = connect(settings)
    broker.include_router(router(audit))
    log.info("audit sink writing", path=str(args.path), after_seq=audit.last_seq, nats_url=settings.nats_url)
    asyncio.run(FastStream(broker, logger=None).run())


if __name__ == "__main__":
    main()
