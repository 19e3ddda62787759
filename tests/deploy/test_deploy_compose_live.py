"""docker-compose.yml's services as local processes behind the real nginx.

redis-server, tollgate-ratelimit, tollgate-mock-llm and three gateway replicas run
their compose commands and environment (deploy_stack.py says exactly what is mapped);
nginx runs deploy/nginx/nginx.conf in front of the replicas, and the README
walkthrough runs against nginx. A real Prometheus (when installed) scrapes the
replicas and answers every Grafana panel's query.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from dataclasses import dataclass

import httpx
import pytest

from tests.harness.deploy_observe import (
    concrete, exported_names, metric_names, panel_queries, prometheus_binary, query, render_prometheus,
    start_prometheus, variable_queries,
)
from tests.harness.deploy_stack import ComposeStack, Local, missing_scripts
from tests.harness.deploy_walkthrough import KEYS, chat, run_walkthrough, wait_for_status

pytestmark = pytest.mark.skipif(
    bool(missing_scripts()), reason=f"console scripts not implemented yet: {', '.join(missing_scripts())}")


@dataclass
class Running:
    stack: ComposeStack
    url: str  # nginx
    ratelimit: Local
    gateways: list[Local]
    prometheus: str | None
    walkthrough: dict | None = None


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    stack = ComposeStack(tmp_path_factory.mktemp("compose"))
    try:
        stack.start_redis()
        ratelimit, mock = stack.start_service("ratelimit"), stack.start_service("mock-llm")
        stack.wait_healthy([ratelimit, mock])
        gateways = stack.start_gateways()
        prometheus = start_scraping(stack, gateways, ratelimit) if prometheus_binary() else None
        stack.wait_healthy(gateways)
        _, url = stack.start_nginx(gateways)
        if prometheus:
            wait_for_targets(prometheus, len(gateways) + 1)
        yield Running(stack, url, ratelimit, gateways, prometheus)
    except Exception:
        print(stack.logs())
        raise
    finally:
        stack.stop()


def start_scraping(stack: ComposeStack, gateways: list[Local], ratelimit: Local) -> str:
    """Prometheus with the repo's config, started while the gateways boot (it applies
    discovered targets only every 5 s) so it scrapes before the walkthrough's traffic."""
    admins = [f"127.0.0.1:{g.ports[15000]}" for g in gateways]
    config = render_prometheus(stack.workdir, admins, stack.localize)
    proc, url = start_prometheus(stack.workdir, config)
    stack.running.append(Local("prometheus", proc, {}))
    return url


def wait_for_targets(prometheus: str, count: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        targets = query(prometheus, "up")
        if len(targets) == count and all(t["value"][1] == "1" for t in targets):
            return
        assert time.monotonic() < deadline, f"Prometheus targets not up: {targets}"
        time.sleep(0.2)


def test_readme_walkthrough_through_nginx(running):
    domain_file = running.ratelimit.mounts["/etc/tollgate/ratelimit"] / "config.yaml"
    with running.stack.logs_on_failure():
        running.walkthrough = run_walkthrough(running.url, domain_file)


def test_the_budget_plane_answers_only_the_gateways_token(running):
    """The gateways were served above, so they send the token compose gives both."""
    settle = running.ratelimit.url(8080, "/v1/settle")
    refund = {"domain": "token-budgets", "id": "r-stranger", "hits": 0}
    for headers in ({}, {"Authorization": "Bearer guessed"}):
        response = httpx.post(settle, json=refund, headers=headers, timeout=5)
        assert response.status_code == 401, response.text


def test_adding_a_person_is_one_key_file_and_gets_the_default_budgets(running):
    """README's recipe: `tollgate keys generate --keys-dir`, nothing else edited."""
    keys_dirs = [g.mounts["/etc/tollgate"] / "keys" for g in running.gateways]
    made = subprocess.run([sys.executable, "-m", "gateway", "keys", "generate", "--metadata", "user_id=carol",
                           "--metadata", "team=research", "--keys-dir", str(keys_dirs[0])],
                          capture_output=True, text=True, timeout=30, check=True)
    key = made.stdout.strip()
    for other in keys_dirs[1:]:  # compose bind-mounts one directory into every replica
        shutil.copy2(keys_dirs[0] / "carol", other / "carol")
    first = None
    for gateway in running.gateways:  # each replica watches its own copy here
        response, seconds = wait_for_status(lambda: chat(gateway.url(4000), key), 200, timeout=5)
        assert response.status_code == 200 and seconds <= 2.5, (response.text, seconds)
        first = first or response
    assert first.headers["x-ratelimit-remaining-usd"] == "50.000000"  # nothing spent before it
    view = httpx.get(f"{running.url}/v1/budget", headers={"Authorization": f"Bearer {key}"}, timeout=5).json()
    limits = {b["descriptor"]: b["limit"] for b in view["budgets"]}
    assert limits == {"user_id=carol": 1_000_000, "user_usd=carol": "50.000000", "team_usd=research": "500.000000"}


def requests_served(gateway: Local) -> float:
    scrape = httpx.get(gateway.url(15000, "/metrics"), timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in scrape.splitlines()
               if line.startswith("tollgate_requests_total{"))


def test_nginx_spreads_requests_over_every_replica(running):
    before = [requests_served(g) for g in running.gateways]
    for _ in range(9):
        assert chat(running.url, KEYS["alice"]).status_code == 200
    served = [requests_served(g) - b for g, b in zip(running.gateways, before)]
    assert sum(served) == 9 and all(n >= 1 for n in served), served


def test_dashboard_metric_names_are_exported_by_the_live_services(running):
    exported: dict[str, set[frozenset[str]]] = {}
    for target in [*(g.url(15000, "/metrics") for g in running.gateways), running.ratelimit.url(8080, "/metrics")]:
        for name, label_sets in exported_names(httpx.get(target, timeout=5).text).items():
            exported.setdefault(name, set()).update(label_sets)
    for title, expr in panel_queries():
        for name in metric_names(expr):
            assert name in exported, f"panel {title!r} queries {name}, which no service exports"
    token_labels = set().union(*exported["tollgate_gen_ai_client_token_usage_sum"])
    assert {"user_id", "gen_ai_token_type", "gen_ai_request_model", "gen_ai_system"} <= token_labels


@pytest.mark.skipif(prometheus_binary() is None, reason="prometheus not installed (apt-get install prometheus)")
def test_every_dashboard_query_returns_data_in_prometheus(running):
    assert running.walkthrough, "runs after the walkthrough, which produces the data"
    # increase() cannot see a series' first value: once Prometheus holds alice's spend
    # series, one more request per replica (nginx round-robin) gives it a second value,
    # however fast the earlier traffic went by.
    deadline = time.monotonic() + 10
    while not query(running.prometheus, 'tollgate_gen_ai_client_cost_usd_total{user_id="alice"}'):
        assert time.monotonic() < deadline, "Prometheus never scraped alice's spend"
        time.sleep(0.2)
    for _ in running.gateways:
        assert chat(running.url, KEYS["alice"]).status_code == 200
    time.sleep(2.5)  # a few 1 s scrapes after the last request
    results: dict[str, list[dict]] = {}
    empty = []
    for title, expr in panel_queries():
        result = query(running.prometheus, concrete(expr))
        results.setdefault(title, []).extend(result)
        empty += [f"{title}: {expr}"] if not result else []
    empty += [expr for expr in variable_queries() if not query(running.prometheus, expr)]
    assert not empty, f"no data for: {empty}"

    def by(title: str, label: str) -> dict[str, float]:
        return {r["metric"].get(label, ""): float(r["value"][1]) for r in results[title]}

    # increase() cannot see a series' first value, so only keys with repeated traffic
    # on one replica show spend; every key that made a request has a series.
    spend = by("Spend per key in range (USD)", "user_id")
    assert spend.keys() >= {"alice", "bob", "mike"} and spend["alice"] > 0, spend
    assert "user_id_mike" in by("429s by descriptor", "descriptor")
    assert "user_id_mike" in by("Budget spent, last 24 h (remaining = daily limit - this)", "descriptor")
