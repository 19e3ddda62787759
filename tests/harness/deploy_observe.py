"""The Grafana dashboard's queries, and a real Prometheus for the local stack."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.harness.deploy_files import DEPLOY
from tests.harness.procs import Proc, free_port

DASHBOARD = DEPLOY / "grafana" / "dashboards" / "tollgate.json"
PROMETHEUS_CONF = DEPLOY / "prometheus" / "prometheus.yml"

# Grafana's built-in variables, as Grafana would expand them for a short look-back.
GRAFANA_VARIABLES = {"$__rate_interval": "15s", "$__interval": "5s", "$__range": "10m"}
PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool",
                   "and", "or", "unless", "offset", "inf", "nan"}


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panel_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every panel target."""
    return [(p["title"], t["expr"]) for p in dashboard()["panels"] for t in p.get("targets", [])]


def variable_queries() -> list[str]:
    """The PromQL inside template variables' `label_values(metric, label)`."""
    out = []
    for var in dashboard()["templating"]["list"]:
        m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", var["definition"])
        if m:
            out.append(f"count by ({m[2]}) ({m[1]})")
    return out


def concrete(expr: str, builtins: dict[str, str] = GRAFANA_VARIABLES) -> str:
    """A panel query with Grafana's variables expanded: built-ins as given (default as
    above), the dashboard's own template variables as their `allValue` (all series)."""
    for name, value in builtins.items():
        expr = expr.replace(name, value)
    for var in dashboard()["templating"]["list"]:
        expr = expr.replace(f"${var['name']}", var.get("allValue", ".*"))
    return expr


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (enough PromQL for our dashboard:
    strings, matchers, ranges and grouping lists are dropped, function calls skipped)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for m in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)(\s*\()?", text):
        if not m[2] and m[1] not in PROMQL_KEYWORDS:
            names.add(m[1])
    return names


def exported_names(scrape: str) -> dict[str, set[frozenset[str]]]:
    """Series names in a Prometheus text exposition -> the label-name sets seen."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, set[frozenset[str]]] = {}
    for family in text_string_to_metric_families(scrape):
        for sample in family.samples:
            out.setdefault(sample.name, set()).add(frozenset(sample.labels))
    return out


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


def render_prometheus(workdir: Path, gateway_admins: list[str], localize) -> Path:
    """deploy/prometheus/prometheus.yml for local processes: Docker-DNS discovery of
    the replicas becomes their loopback admin addresses, other targets are localized,
    and the scrape interval drops to 1 s so a short test sees several samples."""
    config = yaml.safe_load(PROMETHEUS_CONF.read_text())
    config["global"]["scrape_interval"] = "1s"
    for job in config["scrape_configs"]:
        if job.pop("dns_sd_configs", None) is not None:
            job["static_configs"] = [{"targets": gateway_admins}]
        for static in job.get("static_configs", []):
            static["targets"] = [localize(t) for t in static["targets"]]
    path = workdir / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def start_prometheus(workdir: Path, config: Path) -> tuple[Proc, str]:
    port = free_port()
    data = workdir / "prometheus-data"
    data.mkdir()
    proc = Proc("prometheus", [prometheus_binary(), f"--config.file={config}", f"--storage.tsdb.path={data}",
                               f"--web.listen-address=127.0.0.1:{port}"]).start()
    url = f"http://127.0.0.1:{port}"
    proc.wait_http(f"{url}/-/ready", timeout=30)
    return proc, url


def query(url: str, expr: str) -> list[dict]:
    reply = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10).json()
    if reply.get("status") != "success":
        raise AssertionError(f"{expr}: {reply}")
    return reply["data"]["result"]
