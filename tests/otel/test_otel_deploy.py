"""otel/deploy parses and hangs together: compose services, ports, mounts, datasource uids,
and every series and label the Grafana dashboard queries is one the gateway exports."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from bench.fakes import FakeProvider, Fault, serve_in_thread
from routegate.middleware.config import TelemetryConfig
from routegate.otel.attributes import METRICS, prometheus_name
from tests.conftest import pool_config
from tests.otel.otel_harness import traced_gateway

DEPLOY = Path(__file__).resolve().parents[2] / "otel" / "deploy"
SERVICES = {"otel-collector", "jaeger", "tempo", "prometheus", "grafana"}


def load(relative: str) -> Any:
    return yaml.safe_load((DEPLOY / relative).read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    services: dict[str, Any] = load("docker-compose.yml")["services"]
    return services


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path -> host path (relative to otel/deploy) or volume name."""
    out = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        out[target] = source
    return out


def host_file(service: dict[str, Any], container_path: str) -> Path:
    source = mounts(service)[container_path]
    assert source.startswith("./"), f"{container_path} is not a bind mount"
    path = DEPLOY / source
    assert path.exists(), path
    return path


def published(service: dict[str, Any]) -> set[int]:
    return {int(str(port).split(":")[-1].split("/")[0]) for port in service.get("ports", [])}


def host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url if "//" in url else "//" + url)
    assert parts.hostname is not None and parts.port is not None, url
    return parts.hostname, parts.port


def flag(command: list[str], name: str) -> str:
    [value] = [c.split("=", 1)[1] for c in command if c.startswith(name + "=")]
    return value


def test_compose_services_and_mounted_files(compose: dict[str, Any]) -> None:
    assert set(compose) == SERVICES
    for service in compose.values():
        for target, source in mounts(service).items():
            if source.startswith("./"):
                assert (DEPLOY / source).exists(), (source, target)
    collector = compose["otel-collector"]
    assert host_file(collector, flag(collector["command"], "--config")).name == "otel-collector.yaml"
    assert host_file(compose["tempo"], flag(compose["tempo"]["command"], "-config.file")).name \
        == "tempo.yaml"
    assert host_file(compose["prometheus"], flag(compose["prometheus"]["command"],
                                                  "--config.file")).name == "prometheus.yml"
    # routegate's default exporter ports are published to the host.
    assert {4317, 4318} <= published(collector)
    assert 16686 in published(compose["jaeger"]) and 3000 in published(compose["grafana"])


def test_collector_pipelines_reach_the_backends(compose: dict[str, Any]) -> None:
    collector = load("otel-collector.yaml")
    protocols = collector["receivers"]["otlp"]["protocols"]
    assert host_port(protocols["grpc"]["endpoint"])[1] == 4317
    assert host_port(protocols["http"]["endpoint"])[1] == 4318
    service = collector["service"]
    assert set(service["extensions"]) <= set(collector["extensions"])
    for pipeline in service["pipelines"].values():
        assert set(pipeline["receivers"]) <= set(collector["receivers"])
        assert set(pipeline["processors"]) <= set(collector["processors"])
        assert set(pipeline["exporters"]) <= set(collector["exporters"])
    tempo = load("tempo.yaml")
    tempo_grpc = host_port(tempo["distributor"]["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"])
    expected = {"jaeger": 4317, "tempo": tempo_grpc[1]}  # Jaeger's built-in OTLP/gRPC port
    trace_exporters = service["pipelines"]["traces"]["exporters"]
    assert {host_port(collector["exporters"][e]["endpoint"]) for e in trace_exporters} == \
        set(expected.items())
    assert compose["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"
    # Tempo writes under its volume.
    assert mounts(compose["tempo"])["/var/tempo"] == "tempo-data"
    for path in (tempo["storage"]["trace"]["wal"]["path"], tempo["storage"]["trace"]["local"]["path"]):
        assert path.startswith("/var/tempo/")
    # Prometheus scrapes the collector's prometheus exporter.
    [metrics_exporter] = service["pipelines"]["metrics"]["exporters"]
    assert metrics_exporter == "prometheus"
    exporter_port = host_port(collector["exporters"]["prometheus"]["endpoint"])[1]
    [job] = load("prometheus.yml")["scrape_configs"]
    [target] = job["static_configs"][0]["targets"]
    assert host_port(target) == ("otel-collector", exporter_port)


def datasources() -> dict[str, dict[str, Any]]:
    return {d["uid"]: d for d in load("grafana/provisioning/datasources/datasources.yaml")
            ["datasources"]}


def test_grafana_provisioning(compose: dict[str, Any]) -> None:
    grafana = compose["grafana"]
    provisioning = host_file(grafana, "/etc/grafana/provisioning")
    assert (provisioning / "datasources" / "datasources.yaml").exists()
    sources = datasources()
    assert {d["type"] for d in sources.values()} == {"prometheus", "tempo", "jaeger"}
    ports = {"prometheus": 9090, "tempo": load("tempo.yaml")["server"]["http_listen_port"],
             "jaeger": 16686}
    for source in sources.values():
        host, port = host_port(source["url"])
        assert host in compose and port == ports[host], source
    for source in sources.values():
        for link in source.get("jsonData", {}).get("exemplarTraceIdDestinations", []):
            assert link["datasourceUid"] in sources
    [provider] = load("grafana/provisioning/dashboards/dashboards.yaml")["providers"]
    dashboards_dir = host_file(grafana, provider["options"]["path"])
    assert (dashboards_dir / "routegate.json").exists()
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == provider["options"]["path"] + "/routegate.json"


def dashboard_panels() -> list[dict[str, Any]]:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "routegate.json").read_text())
    panels: list[dict[str, Any]] = dashboard["panels"]
    return [p for p in panels if p["type"] != "row"]


def test_dashboard_datasources_exist() -> None:
    sources = datasources()
    for panel in dashboard_panels():
        for ref in [panel["datasource"], *(t["datasource"] for t in panel["targets"])]:
            assert ref["uid"] in sources and sources[ref["uid"]]["type"] == ref["type"], panel
    traceql = [t["query"] for p in dashboard_panels() for t in p["targets"] if "query" in t]
    assert traceql and all(f'"{TelemetryConfig().service_name}"' in q for q in traceql)


@pytest.fixture(scope="module")
def exported_labels() -> Iterator[dict[str, set[str]]]:
    """Prometheus series name -> label names, from the metrics of real requests (auto,
    streamed, fallback) through a real gateway."""
    first, second = FakeProvider(kind="openai"), FakeProvider(kind="openai")
    first.inject(Fault.status(500), times=2)  # and its same-model retry: a fallback
    with serve_in_thread(first) as url_a, serve_in_thread(second) as url_b, \
            traced_gateway(pool_config({"a": url_a, "b": url_b})) as tg:
        for body in ({"model": "cheap"}, {"model": "auto", "stream": True}):
            response = httpx.post(tg.url + "/v1/chat/completions", timeout=15.0, json={
                **body, "messages": [{"role": "user", "content": "Hello there"}]})
            assert response.status_code == 200
        tg.wait_requests(2)
        points = tg.metric_points()
    labels: dict[str, set[str]] = {}
    for name, spec in METRICS.items():
        assert name in points, f"{name} was not recorded by these requests"
        keys = {key.replace(".", "_") for p in points[name] for key in (p.attributes or {})}
        base = prometheus_name(spec.name, spec.unit, spec.kind)
        if spec.kind == "histogram":
            for suffix in ("_count", "_sum"):
                labels[base + suffix] = keys
            labels[base + "_bucket"] = keys | {"le"}
        else:
            labels[base] = keys
    yield labels


_SERIES = re.compile(r"\b(?:gen_ai|routegate)_[a-z0-9_]+\b")
_BY = re.compile(r"\bby\s*\(([^)]*)\)")
_MATCHERS = re.compile(r"\{([^}]*)\}")
_MATCHER_LABEL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")


def test_dashboard_queries_what_the_gateway_exports(exported_labels: dict[str, set[str]]) -> None:
    exprs = [t["expr"] for p in dashboard_panels() for t in p["targets"] if "expr" in t]
    assert len(exprs) >= 15
    queried: set[str] = set()
    for expr in exprs:
        series = set(_SERIES.findall(_BY.sub("", _MATCHERS.sub("", expr))))  # names, not labels
        assert series, expr
        unknown = series - set(exported_labels)
        assert not unknown, f"{expr}: not exported: {unknown}"
        queried |= series
        used = {label.strip() for group in _BY.findall(expr) for label in group.split(",")}
        used |= {m for block in _MATCHERS.findall(expr) for m in _MATCHER_LABEL.findall(block)}
        used.discard("")
        for name in series:
            assert used <= exported_labels[name], f"{expr}: {name} lacks {used - exported_labels[name]}"
    # Every metric the gateway exports is on the dashboard.
    bases = {name.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count")
             for name in queried}
    assert {prometheus_name(s.name, s.unit, s.kind) for s in METRICS.values()} <= bases
