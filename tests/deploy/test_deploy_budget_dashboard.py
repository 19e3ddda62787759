"""The dashboard's "Remaining budget" panel, answered by a real Prometheus scraping a real rate-limit service."""

from __future__ import annotations

import time

import httpx
import pytest
import yaml

from tests.harness.deploy_observe import concrete, panel_queries, prometheus_binary, query, start_prometheus
from tests.harness.procs import Proc, free_port, python_cmd

pytestmark = pytest.mark.skipif(prometheus_binary() is None, reason="prometheus not installed")

PANEL = "Remaining budget"
CONFIG = """
domain: budgets
descriptors:
  - key: user_id
    detailed_metric: true
    rate_limit: {unit: day, requests_per_unit: 1000}
  - key: team
    rate_limit: {unit: day, requests_per_unit: 0}
"""


@pytest.fixture(scope="module")
def prometheus(redis_url, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("budget-panel")
    (workdir / "config").mkdir()
    (workdir / "config" / "budgets.yaml").write_text(CONFIG)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config = {"global": {"scrape_interval": "1s"},
              "scrape_configs": [{"job_name": "ratelimit", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}]}
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    # Prometheus first: it takes up its scrape targets only some seconds after it starts.
    prometheus, url = start_prometheus(workdir, workdir / "prometheus.yml")
    service = Proc("ratelimit", python_cmd(
        "ratelimit_service", "--config-dir", str(workdir / "config"), "--redis-url", redis_url,
        "--port", str(port), "--host", "127.0.0.1")).start()
    try:
        service.wait_http(f"{base}/healthcheck")
        for i, (entries, hits) in enumerate([([("user_id", "mike")], 250), ([("user_id", "ann")], 1),
                                             ([("team", "ml")], 0)]):
            body = {"domain": "budgets", "id": f"dashboard-{i}", "descriptors": [
                {"entries": [{"key": k, "value": v} for k, v in entries], "hits_addend": hits}]}
            assert httpx.post(f"{base}/v1/reserve", json=body, timeout=5).status_code in (200, 429)
        yield url
    finally:
        service.stop()
        prometheus.stop()


def panel_results(url: str, timeout: float = 15.0) -> list[dict[str, float]]:
    """Each of the panel's queries: descriptor -> value, once Prometheus has scraped."""
    exprs = [concrete(expr) for title, expr in panel_queries() if title == PANEL]
    assert len(exprs) == 2, exprs
    deadline = time.monotonic() + timeout
    while True:
        results = [{r["metric"]["descriptor"]: float(r["value"][1]) for r in query(url, e)} for e in exprs]
        if all(results) or time.monotonic() > deadline:
            return results
        time.sleep(0.3)


def test_remaining_budget_per_descriptor_and_as_a_percentage_of_the_limit(prometheus):
    left, percent = panel_results(prometheus)
    assert left == {"user_id_mike": 750, "user_id_ann": 999, "team": 0}
    # A limit of 0 has no percentage rather than a division by zero.
    assert percent == {"user_id_mike": 75.0, "user_id_ann": 99.9}
