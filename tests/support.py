"""Running threadbus as real processes in tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nats

from threadbus import verify
from threadbus.embedded import free_port

ROOT = Path(__file__).resolve().parent.parent
TEST_GRAPHS = ROOT / "tests" / "graphs" / "langgraph.json"


class ThreadbusProcess:
    """``threadbus dev`` (or one service) as a child process, logs in a file."""

    def __init__(self, args: list[str], *, log_path: Path, env: dict[str, str] | None = None, port: int | None = None):
        self.port = port or free_port()
        self.args = args
        self.log_path = log_path
        self.env = {**os.environ, "THREADBUS_PORT": str(self.port), "THREADBUS_LOG_FORMAT": "json", **(env or {})}
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


def monitoring(server, path: str) -> dict:
    """A nats-server monitoring endpoint (``/varz``, ``/subsz``, ``/jsz``, ...) as JSON."""
    import json

    with urllib.request.urlopen(f"http://127.0.0.1:{server.monitor_port}{path}", timeout=5) as resp:
        return json.load(resp)


def rss_bytes(pid: int) -> int:
    """Resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")
