"""Running threadbus as real processes in tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import hashlib

import nats
import psycopg

from threadbus import verify
from threadbus.embedded import free_port

ROOT = Path(__file__).resolve().parent.parent
TEST_GRAPHS = ROOT / "tests" / "graphs" / "langgraph.json"


def database_for(nats_url: str) -> str:
    """A database of the session's Postgres for the threadbus processes on one nats-server: they
    share a read model, and processes on another nats-server (another log) have another."""
    admin = os.environ["THREADBUS_TEST_POSTGRES_URL"]
    name = "tb_" + hashlib.sha1(nats_url.encode()).hexdigest()[:16]
    with psycopg.connect(admin, autocommit=True) as conn:
        if conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone() is None:
            conn.execute(f'create database "{name}"')
    return admin.rsplit("/", 1)[0] + "/" + name


def _nats_url_of(args: list[str], env: dict[str, str]) -> str | None:
    if "--nats-url" in args:
        return args[args.index("--nats-url") + 1]
    return env.get("NATS_URL") or env.get("THREADBUS_NATS_URL")


class ThreadbusProcess:
    """``threadbus dev`` (or one service) as a child process, logs in a file."""

    def __init__(self, args: list[str], *, log_path: Path, env: dict[str, str] | None = None, port: int | None = None):
        self.port = port or free_port()
        self.args = args
        self.log_path = log_path
        self.env = {**os.environ, "THREADBUS_PORT": str(self.port), "THREADBUS_LOG_FORMAT": "json", **(env or {})}
        nats_url = _nats_url_of(args, self.env)
        if "THREADBUS_DATABASE_URL" not in self.env and nats_url and "THREADBUS_TEST_POSTGRES_URL" in self.env:
            self.env["THREADBUS_DATABASE_URL"] = database_for(nats_url)
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0, wait_http: bool = True) -> "ThreadbusProcess":
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "threadbus.cli", *self.args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=ROOT,
            start_new_session=True,
        )
        log.close()
        if wait_http:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"threadbus exited with {self.process.returncode}:\n{self.log_path.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/ok", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"threadbus not ready after {timeout}s:\n{self.log_path.read_text()[-4000:]}")

    def stop(self, timeout: float = 30.0) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise RuntimeError(f"threadbus did not stop on SIGTERM within {timeout}s")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


async def assert_all_succeeded(client, runs: list[tuple[str, str]], timeout: float = 120.0) -> None:
    """Each (thread, run) ends, with status success."""
    import asyncio

    async with asyncio.timeout(timeout):
        for tid, run_id in runs:
            await client.runs.join(tid, run_id)
    statuses = {(await client.runs.get(tid, run_id))["status"] for tid, run_id in runs}
    assert statuses == {"success"}, statuses


async def assert_verified(servers, threads: list[str]) -> None:
    """The threads' logs pass ``threadbus verify``, with no run left in flight."""
    nc = await nats.connect(servers)
    try:
        report = await verify.verify(nc, threads)
    finally:
        await nc.close()
    assert report.ok and not report.in_flight(), report.format()
