"""The gateway's connection to the broker and its resources (:mod:`services.gateway.domain`)."""

from __future__ import annotations

from nats.aio.client import Client as NATS

from services.gateway.domain.assistants import Assistants
from services.gateway.domain.runs import Runs
from services.gateway.domain.threads import Threads
from services.gateway.run_watch import RunWatch
from threadbus import broker
from threadbus.checkpointer import JetStreamSaver
from threadbus.graphs import GraphRegistry
from threadbus.read_model.database import Database
from threadbus.read_model.reads import Reads
from threadbus.settings import Settings
from threadbus.store import open_store
from threadbus.threadlog import ThreadLog


class Backend:
    def __init__(self, nc: NATS, settings: Settings, graphs: GraphRegistry):
        self.nc = nc
        self.settings = settings
        self.graphs = graphs
        self.log = ThreadLog(nc)
        self.js = nc.jetstream()
        self.saver = JetStreamSaver(self.log)

    async def start(self) -> None:
        if not self.settings.database_url:
            raise RuntimeError("THREADBUS_DATABASE_URL is not set: the gateway answers reads from the read model's PostgreSQL")
        self.db = Database(self.settings.database_url)
        await self.db.open()
        await broker.bootstrap(self.nc, self.settings)
        self.assistants = Assistants(
            self.graphs, await self.js.key_value(broker.ASSISTANTS_BUCKET), await self.js.key_value(broker.ASSISTANT_VERSIONS_BUCKET)
        )
        await self.assistants.start()
        self.reads = Reads(self.db, self.log, catch_up_timeout_s=self.settings.decision_timeout_s)
        self.store = await open_store(self.js, self.db, self.graphs)
        threads_kv = await self.js.key_value(broker.THREADS_BUCKET)
        self.threads = Threads(self.log, self.saver, self.graphs, threads_kv, self.reads, store=self.store)
        self.run_watch = RunWatch(self.log)
        await self.run_watch.start()
        self.runs = Runs(self.log, self.settings, self.assistants, self.threads, self.reads, self.run_watch)
        await self.assistants.register_graphs()

    async def stop(self) -> None:
        await self.run_watch.stop()
        await self.assistants.stop()
        await self.store.close()
        await self.db.close()
