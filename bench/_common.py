"""What the benchmarks share: a ``threadbus dev`` of their own, an SDK client, percentiles.

The server under test is started exactly as a user would start it: an embedded nats-server
(``threadbus.embedded.EmbeddedNats``, data in a temporary directory) and ``threadbus dev
--nats-url ... --config examples/langgraph.json`` as a child process on a free port, logging
JSON lines to a file the benchmarks may read. Everything else talks HTTP through the official
``langgraph_sdk`` async client only.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
from langgraph_sdk import get_client

from threadbus.embedded import EmbeddedNats, free_port

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "langgraph.json"


@dataclass
class Server:
    url: str
    name: str
    log_path: Path | None = None  # threadbus's JSON log, when this process started it
    pids: tuple[int, ...] = ()  # the server's processes (each with its children), when started here
    broker: EmbeddedNats | None = None  # its nats-server, when started here


@dataclass(frozen=True)
class Usage:
    """What a server has spent so far: CPU seconds of its processes (threadbus, its children such
    as the embedded Postgres, and nats-server, from /proc) and broker messages (``/varz``)."""

    cpu_s: float
    messages: int

    @staticmethod
    def of(server: Server) -> Usage | None:
        if not server.pids:
            return None
        varz = json.load(urllib.request.urlopen(f"http://127.0.0.1:{server.broker.monitor_port}/varz", timeout=5))
        return Usage(cpu_s=sum(_cpu_s(pid) for pid in _with_descendants(server.pids)), messages=varz["in_msgs"] + varz["out_msgs"])

    @staticmethod
    def per_run(before: Usage | None, after: Usage | None, runs: int) -> dict:
        """CPU and broker messages per run between two readings (None for a server not started here)."""
        if before is None or after is None:
            return {"cpu_ms_per_run": None, "broker_msgs_per_run": None}
        return {
            "cpu_ms_per_run": round((after.cpu_s - before.cpu_s) * 1000 / runs, 2),
            "broker_msgs_per_run": round((after.messages - before.messages) / runs, 1),
        }


def _cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:  # gone meanwhile
        return 0.0
    # utime and stime (fields 14 and 15 of the line, counted after the command's closing paren)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _with_descendants(roots: Sequence[int]) -> set[int]:
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            continue
    found = set(roots)
    while True:
        more = {pid for pid, parent in parents.items() if parent in found} - found
        if not more:
            return found
        found |= more


def wait_ok(url: str, timeout: float = 90.0, process: subprocess.Popen | None = None, log_path: Path | None = None) -> None:
    """Poll ``GET /ok`` until it answers 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            tail = log_path.read_text()[-4000:] if log_path else ""
            raise RuntimeError(f"server exited with {process.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(f"{url}/ok", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url}/ok did not answer 200 within {timeout}s")


@contextlib.contextmanager
def threadbus_server(config: Path = EXAMPLES, *, log_level: str = "info", keep: bool = False) -> Iterator[Server]:
    """An embedded nats-server plus ``threadbus dev`` on a free port; both stopped on exit."""
    tmp = Path(tempfile.mkdtemp(prefix="threadbus-bench-"))
    nats = EmbeddedNats(tmp / "nats")
    nats.start()
    port = free_port()
    log_path = tmp / "threadbus.log"
    env = {**os.environ, "THREADBUS_LOG_FORMAT": "json", "THREADBUS_LOG_LEVEL": log_level}
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "threadbus.cli", "dev", "--nats-url", nats.url, "--config", str(config),
             "--port", str(port), "--data-dir", str(tmp / "dev")],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ok(url, process=process, log_path=log_path)
        yield Server(url=url, name="threadbus", log_path=log_path, pids=(process.pid, nats.process.pid), broker=nats)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        nats.stop()
        if keep:
            print(f"# server files kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def server_for(url: str | None, *, name: str = "threadbus", log_level: str = "info", keep: bool = False) -> Iterator[Server]:
    """The server at ``url`` if one is given, else a fresh threadbus of our own."""
    if url:
        wait_ok(url.rstrip("/"), timeout=30)
        yield Server(url=url.rstrip("/"), name=name)
    else:
        with threadbus_server(log_level=log_level, keep=keep) as server:
            yield server


def client(url: str):
    # No pool timeout: a burst may queue more requests than there are connections.
    timeout = httpx.Timeout(connect=10, read=300, write=300, pool=None)
    return get_client(url=url, api_key=None, timeout=timeout)


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100): a value that was actually measured."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)
