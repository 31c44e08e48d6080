"""The read model's PostgreSQL: a connection pool, the versioned schema, and one error for
"the database is away".

Migrations are the numbered ``migrations/NNNN_*.sql`` files, applied in order, each once, under an
advisory lock so that services starting together do not race; ``read_model_schema`` records which
have been applied.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from importlib import resources

import psycopg
import psycopg_pool
from psycopg.rows import dict_row

from threadbus import logs

log = logs.get("threadbus.read_model")

_MIGRATION_LOCK = 0x7462_0001  # any constant unique to threadbus


class DatabaseUnavailable(Exception):
    """The read model's database cannot be reached (or did not answer in time)."""


class UnstorableValue(ValueError):
    """A query value PostgreSQL cannot hold (a NUL character, half of a surrogate pair)."""


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every migration, in order."""
    found = []
    for entry in resources.files("threadbus.read_model").joinpath("migrations").iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append((version, entry.name, entry.read_text()))
    return sorted(found)


async def migrate(conn: psycopg.AsyncConnection) -> list[str]:
    """Applies the migrations this database lacks; returns their names."""
    applied: list[str] = []
    async with conn.transaction():
        await conn.execute("select pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        await conn.execute("create table if not exists read_model_schema (version integer primary key, name text not null)")
        done = {row["version"] for row in await (await conn.execute("select version from read_model_schema")).fetchall()}
        for version, name, sql in migrations():
            if version in done:
                continue
            await conn.execute(sql)
            await conn.execute("insert into read_model_schema (version, name) values (%s, %s)", (version, name))
            applied.append(name)
    return applied


class Database:
    """A pool of connections to the read model. Connections hand out rows as dicts."""

    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 20, timeout: float = 2.0):
        self.url = url
        self.timeout = timeout
        self.pool = psycopg_pool.AsyncConnectionPool(
            url,
            min_size=min_size,
            max_size=max_size,
            timeout=timeout,
            kwargs={"row_factory": dict_row, "autocommit": True},
            # A connection that died with its server is found out before it is handed out.
            check=psycopg_pool.AsyncConnectionPool.check_connection,
            open=False,
        )

    async def open(self, *, migrate_schema: bool = True) -> None:
        # Not waiting for the first connection: a service starts, and answers 503, while its
        # database is away.
        await self.pool.open(wait=False)
        if migrate_schema:
            async with self.connection() as conn:
                for name in await migrate(conn):
                    log.info("read model migrated", migration=name)

    async def close(self) -> None:
        await self.pool.close()

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection]:
        async with self.translated_errors(), self.pool.connection() as conn:
            yield conn

    async def connect(self) -> psycopg.AsyncConnection:
        """A connection outside the pool, configured as the pool's are, for a caller that keeps
        it (and closes it)."""
        async with self.translated_errors():
            # Keepalives: a connection held for hours must notice a peer that vanished without a word.
            return await psycopg.AsyncConnection.connect(
                self.url,
                row_factory=dict_row,
                autocommit=True,
                connect_timeout=max(1, round(self.timeout)),
                keepalives=1,
                keepalives_idle=30,
                keepalives_interval=10,
                keepalives_count=3,
            )

    @contextlib.asynccontextmanager
    async def translated_errors(self) -> AsyncIterator[None]:
        """psycopg's errors for "the database is away" and "PostgreSQL cannot store this value"
        as this module's."""
        try:
            yield
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as err:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # psycopg turns a cancelled query into QueryCanceled; the task was cancelled, and
                # taken for a database outage it would be retried instead of ending.
                raise asyncio.CancelledError from err
            raise DatabaseUnavailable(str(err).strip() or type(err).__name__) from err
        except (psycopg.DataError, UnicodeEncodeError) as err:
            raise UnstorableValue(str(err).strip().splitlines()[0]) from err
