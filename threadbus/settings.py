"""Settings of every threadbus process, read from the environment with the prefix ``THREADBUS_``.

``NATS_URL`` is also accepted without the prefix, as NATS tooling uses it.
"""

from __future__ import annotations

import sys
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="THREADBUS_", extra="ignore")

    nats_url: str = Field(
        default="nats://127.0.0.1:4222",
        validation_alias=AliasChoices("THREADBUS_NATS_URL", "NATS_URL"),
        description="NATS server(s), comma-separated.",
    )
    nats_creds: str | None = Field(default=None, description="NATS credentials file (JWT + nkey seed), as issued by nsc.")
    nats_user: str | None = Field(default=None, description="NATS user name (with nats_password).")
    nats_password: str | None = Field(default=None, description="NATS password.")
    nats_token: str | None = Field(default=None, description="NATS authentication token.")
    nats_tls_ca: str | None = Field(default=None, description="CA bundle that signed the NATS servers' certificates.")
    nats_tls_cert: str | None = Field(default=None, description="Client certificate for NATS mutual TLS (with nats_tls_key).")
    nats_tls_key: str | None = Field(default=None, description="Client key for NATS mutual TLS.")
    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("THREADBUS_DATABASE_URL", "POSTGRES_URI", "DATABASE_URI"),
        description=(
            "PostgreSQL of the read model (threads, runs, checkpoint index). `threadbus dev` starts an embedded"
            " one under its data dir when unset; the gateway and the orchestrator need it."
        ),
    )
    config: str = Field(default="langgraph.json", description="Path of the langgraph.json that declares the graphs.")
    host: str = Field(default="127.0.0.1", description="Gateway listen address.")
    port: int = Field(default=8123, description="Gateway listen port.")
    api_keys: str | None = Field(
        default=None,
        description="Turns auth on: 'key=identity' pairs, comma-separated; callers send x-api-key or a Bearer token.",
    )
    metrics_port: int | None = Field(
        default=None, description="Orchestrator and executor: serve /metrics, /ok and /ready on this port (the gateway does on its own)."
    )
    replicas: int = Field(default=1, description="Replicas of every stream and bucket (3 on a cluster).")
    sync_interval: str | None = Field(
        default=None, description="Embedded nats-server fsync policy: a duration such as '2m', or 'always'."
    )
    duplicate_window_s: float = Field(default=120.0, description="JetStream dedup window of the thread log.")
    max_payload_mb: int = Field(default=8, description="Largest event (checkpoint) the embedded server accepts.")
    stream_max_age_s: float = Field(default=3600.0, description="How long a run's SSE events stay joinable.")
    max_body_mb: int = Field(default=8, description="Largest HTTP request body the gateway accepts (413 above).")
    deadletter_max_age_s: float = Field(default=7 * 86400.0, description="How long invalid messages are kept for inspection.")
    stream_heartbeat_s: float = Field(default=5.0, description="Idle SSE connections get a heartbeat comment this often.")
    run_timeout_s: float | None = Field(
        default=None, description="A run still executing after this long is stopped and ends with status 'timeout'."
    )
    executor_concurrency: int = Field(default=10, description="Runs one executor process executes at once.")
    executor_shutdown_grace_s: float = Field(
        default=20.0, description="On SIGTERM, runs in progress get this long to finish; the rest are handed back at once."
    )
    executor_ack_wait_s: float = Field(default=30.0, description="A run is redelivered after this long without a heartbeat.")
    executor_max_deliver: int = Field(default=5, description="Deliveries of one run before it ends in error.")
    cron_tick_s: float = Field(default=1.0, description="How often each gateway looks for crons that are due.")
    webhook_attempts: int = Field(default=5, description="Calls of a run's webhook before giving up (with growing delays).")
    paused_thread_input: Literal["restart", "reject"] = Field(
        default="restart",
        description=(
            "New input for a thread paused in a human-in-the-loop interrupt: 'restart' runs the graph"
            " from its entry and drops the pause (LangGraph Platform), 'reject' answers 409."
        ),
    )
    orchestrator_lease_s: float = Field(
        default=6.0,
        description="An orchestrator that stops renewing its partitions' leases loses them after this long; another takes them over.",
    )
    projector_batch_wait_s: float = Field(
        default=0.02,
        description="While events come one after another, the projector waits this long for more before it applies them, so that they cost one transaction instead of one each; reads of a thread stay exact, and a search waits at most this much longer (0: apply each event as it comes).",
    )
    orchestrator_snapshot_every: int = Field(
        default=64,
        description="A thread's state is snapshotted after this many events, so a cold start folds a tail of at most about this many (one batched read).",
    )
    decision_timeout_s: float = Field(default=10.0, description="How long the gateway waits for the orchestrator's decision.")
    log_level: str = Field(default="info", description="debug, info, warning or error.")
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto", description="Log lines as JSON, or for a terminal; auto: JSON unless stdout is a terminal."
    )


@lru_cache
def get_settings() -> Settings:
    return Settings()


ALIASES = {
    "nats_url": "NATS_URL or THREADBUS_NATS_URL",
    "database_url": "THREADBUS_DATABASE_URL, POSTGRES_URI or DATABASE_URI",
}

SETTINGS_DOC = Path(__file__).resolve().parent.parent / "docs" / "settings.md"


def table() -> str:
    """docs/settings.md: every setting, its variable, default and meaning."""
    rows = [
        "# Settings",
        "",
        "Every service reads these environment variables (generated from `threadbus/settings.py`:",
        "`python -m threadbus.settings`; the test suite checks this page is current).",
        "",
        "| variable | default | meaning |",
        "|---|---|---|",
    ]
    for name, field in Settings.model_fields.items():
        variable = ALIASES.get(name, f"THREADBUS_{name.upper()}")
        default = "" if field.default is None else f"`{field.default}`"
        rows.append(f"| `{variable}` | {default} | {field.description or ''} |")
    return "\n".join(rows) + "\n"


def environment_names() -> set[str]:
    return {"NATS_URL", "POSTGRES_URI", "DATABASE_URI"} | {f"THREADBUS_{name.upper()}" for name in Settings.model_fields}


if __name__ == "__main__":
    if "--check" in sys.argv:
        sys.exit(0 if SETTINGS_DOC.exists() and SETTINGS_DOC.read_text() == table() else 1)
    SETTINGS_DOC.write_text(table())
