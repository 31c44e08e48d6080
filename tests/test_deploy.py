"""The deploy files parse, have the promised shape, and set only settings that exist; the
settings page is current; services authenticate to a NATS server that requires it."""

from __future__ import annotations

import nats
import nats.errors
import pytest
import yaml

from threadbus import broker
from threadbus.embedded import EmbeddedNats
from threadbus.settings import SETTINGS_DOC, Settings, environment_names, table
from tests.support import ROOT

DEPLOY = ROOT / "deploy"


def test_the_settings_page_is_current():
    assert SETTINGS_DOC.read_text() == table(), "docs/settings.md is stale: run `python -m threadbus.settings`"


def test_compose_has_a_three_node_cluster_a_database_and_two_of_each_service():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    nats_nodes = [name for name in services if name.startswith("nats-")]
    assert len(nats_nodes) == 3
    for name in nats_nodes:
        command = services[name]["command"]
        assert "-js" in command and "--routes" in command and "healthcheck" in services[name]
    for role in ("gateway", "orchestrator", "executor"):
        assert [n for n in services if n.startswith(f"{role}-")] == [f"{role}-1", f"{role}-2"]
        for n in (f"{role}-1", f"{role}-2"):
            assert services[n]["command"] == [role]
            assert services[n]["environment"]["THREADBUS_REPLICAS"] == "3"
            assert services[n]["environment"]["THREADBUS_DATABASE_URL"].startswith("postgresql://")
            assert "/ready" in " ".join(services[n]["healthcheck"]["test"])


def _environment_variables() -> set[str]:
    names: set[str] = set()
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    for name, service in compose["services"].items():
        if name != "postgres":  # the database's own image, not threadbus
            names |= set(service.get("environment") or {})
    for doc in yaml.safe_load_all((DEPLOY / "k8s" / "threadbus.yaml").read_text()):
        if doc["kind"] == "ConfigMap":
            names |= set(doc["data"])
        elif doc["kind"] == "Secret":
            names |= set(doc["stringData"])
        elif doc["kind"] == "Deployment":
            for container in doc["spec"]["template"]["spec"]["containers"]:
                names |= {e["name"] for e in container.get("env", [])}
    return names


def test_deploy_files_set_only_settings_that_exist():
    names = _environment_variables()
    assert "NATS_URL" in names
    assert names <= environment_names(), f"unknown settings: {names - environment_names()}"


def test_kubernetes_manifests_probe_every_service():
    docs = list(yaml.safe_load_all((DEPLOY / "k8s" / "threadbus.yaml").read_text()))
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["ConfigMap", "Deployment", "Deployment", "Deployment", "Secret", "Service"]
    for deployment in (d for d in docs if d["kind"] == "Deployment"):
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
        assert container["livenessProbe"]["httpGet"]["path"] == "/ok"
        assert deployment["spec"]["replicas"] == 2


async def test_services_authenticate_with_the_configured_credentials(tmp_path):
    server = EmbeddedNats(tmp_path, user="threadbus", password="s3cret")
    server.start()
    try:
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nats.connect(server.url, allow_reconnect=False, connect_timeout=2)
        nc = await broker.connect(Settings(nats_url=server.url, nats_user="threadbus", nats_password="s3cret"), "test")
        try:
            await broker.bootstrap(nc, Settings())
            assert (await nc.jetstream().stream_info("TB_THREADS")).config.name == "TB_THREADS"
        finally:
            await nc.close()
    finally:
        server.stop()
