"""Prometheus and Grafana provisioning, checked offline.

PromQL syntax is checked by promtool (Debian's `prometheus` package); metric names
against what the gateway declares (tests/deploy/test_deploy_compose_live.py checks
them against a live scrape).
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from tests.harness.deploy_files import DEPLOY, load_yaml, published_ports, service, service_volumes
from tests.harness.deploy_observe import (
    DASHBOARD, PROMETHEUS_CONF, concrete, dashboard, metric_names, panel_queries, variable_queries,
)

PROVISIONING = DEPLOY / "grafana" / "provisioning"
needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None,
                                    reason="promtool not installed (apt-get install prometheus)")


def gateway_metric_names() -> set[str]:
    from gateway import metrics

    histograms = {metrics.TOKEN_USAGE, metrics.DURATION}
    names = {metrics.COST, metrics.REQUESTS}
    return names | {f"{h}{suffix}" for h in histograms for suffix in ("_bucket", "_sum", "_count")}


def test_metric_name_extraction():
    expr = ('histogram_quantile(0.99, sum by (le, user_id) (rate(a_b_bucket{x="y{z}"}[5m])))'
            ' / on (user_id) group_left sum without (k) (c:rule) or vector(0)')
    assert metric_names(expr) == {"a_b_bucket", "c:rule"}


def test_dashboard_panels_cover_spend_429s_budgets_and_latency():
    titles = " | ".join(p["title"] for p in dashboard()["panels"]).lower()
    for needed in ("tokens per key", "spend per key", "429s by descriptor", "budget spent", "remaining budget", "p50 / p99"):
        assert needed in titles
    ids = [p["id"] for p in dashboard()["panels"]]
    assert len(ids) == len(set(ids))


def test_dashboard_uses_the_provisioned_datasource():
    (source,) = load_yaml(PROVISIONING / "datasources" / "prometheus.yml")["datasources"]
    for panel in dashboard()["panels"]:
        assert panel["datasource"]["uid"] == source["uid"]
        assert all(t["datasource"]["uid"] == source["uid"] for t in panel["targets"])
    assert source["url"] == "http://prometheus:9090" and [p[2] for p in published_ports("prometheus")] == [9090]


def test_grafana_loads_the_dashboard_from_the_mounted_directory():
    (provider,) = load_yaml(PROVISIONING / "dashboards" / "tollgate.yml")["providers"]
    mounts = {target: host for host, target, _ in service_volumes("grafana")}
    assert mounts[provider["options"]["path"]] == DASHBOARD.parent
    assert mounts["/etc/grafana/provisioning"] == PROVISIONING


def test_dashboard_queries_only_name_metrics_the_services_export():
    ratelimit_prefix = "tollgate_ratelimit_"
    declared = gateway_metric_names()
    for title, expr in panel_queries():
        names = metric_names(expr)
        assert names, f"{title}: no metric in {expr}"
        for name in names:
            assert name in declared or name.startswith(ratelimit_prefix), f"{title}: {name}"


def test_per_key_panels_group_by_the_configured_user_label():
    config = load_yaml(DEPLOY / "gateway" / "config.yaml")
    label = next(iter(config["config"]["metrics"]["fields"]["add"]))
    per_key = [expr for title, expr in panel_queries() if "per key" in title.lower()]
    assert per_key and all(f"by ({label}" in expr for expr in per_key)


def test_prometheus_scrapes_every_gateway_replica_and_the_ratelimit_service():
    config = yaml.safe_load(PROMETHEUS_CONF.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    gateway_config = load_yaml(DEPLOY / "gateway" / "config.yaml")
    admin_port = int(gateway_config["config"]["adminAddr"].rsplit(":", 1)[1])
    (sd,) = jobs["tollgate-gateway"]["dns_sd_configs"]
    assert sd["names"] == ["gateway"] and sd["type"] == "A" and sd["port"] == admin_port
    (static,) = jobs["tollgate-ratelimit"]["static_configs"]
    host, port = static["targets"][0].split(":")
    assert port in service(host)["expose"]


@needs_promtool
def test_promtool_accepts_the_prometheus_config():
    result = subprocess.run(["promtool", "check", "config", "--syntax-only", str(PROMETHEUS_CONF)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_parses_every_dashboard_query(tmp_path):
    exprs = [concrete(expr) for _, expr in panel_queries()] + variable_queries()
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": expr} for i, expr in enumerate(exprs)]}]}
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(exprs)} rules found" in result.stdout
