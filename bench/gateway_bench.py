"""Gateway throughput and latency against baselines measured in the same run.

    python -m bench.gateway_bench [--seconds 5] [--rounds 3] [--distributed]

Rows: the mock upstream called directly; a bare FastAPI passthrough (bench/passthrough.py)
to the same mock, the baseline of the ratios; a lean passthrough (plain ASGI with
Tollgate's own HTTP client), whose ratio isolates Tollgate's policy work from its
HTTP plumbing; Tollgate with key auth + a local token bucket + metrics; and with
--distributed, Tollgate whose every request also reserves and settles through the
rate-limit service and a real redis-server, for 100 users in turn (one budget each).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import httpx
import yaml

from bench import wrk
from tests.harness.procs import Proc, free_port, python_cmd, start_gateway, start_mock_llm, start_redis

USERS = 100
KEYS = [f"sk-bench-user-{i}" for i in range(USERS)]
BODY = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello!"}]})


def gateway_config(mock: str, port: int, admin_port: int, ratelimit: str | None) -> dict:
    policies = {
        "apiKey": {"keys": [{"key": k, "metadata": {"user_id": f"user{i}"}} for i, k in enumerate(KEYS)]},
        "localRateLimit": [{"maxTokens": 10**12, "tokensPerFill": 10**12, "fillInterval": "1s", "type": "tokens"}],
    }
    if ratelimit:
        policies["remoteRateLimit"] = {
            "host": ratelimit, "domain": "bench",
            "descriptors": [{"entries": [{"key": "user_id", "value": "apiKey.user_id"}], "type": "tokens"}],
        }
    return {
        "llm": {"port": port, "policies": policies,
                "models": [{"name": "*", "provider": "openAI", "params": {"apiKey": "k", "baseUrl": mock}}]},
        "config": {"adminAddr": f"127.0.0.1:{admin_port}",
                   "metrics": {"fields": {"add": {"user_id": "apiKey.user_id"}}}},
    }


def start_tollgate(workdir: Path, mock: str, ratelimit: str | None):
    port, admin_port = free_port(), free_port()
    path = workdir / f"gateway-{port}.yaml"
    path.write_text(yaml.safe_dump(gateway_config(mock, port, admin_port, ratelimit)))
    return start_gateway(path, port, admin_port)


def start_ratelimit(workdir: Path) -> tuple[list[Proc], str]:
    redis, redis_url = start_redis()
    conf = workdir / "ratelimit"
    conf.mkdir()
    (conf / "bench.yaml").write_text(yaml.safe_dump({
        "domain": "bench",
        "descriptors": [{"key": "user_id", "rate_limit": {"unit": "second", "requests_per_unit": 4_000_000_000}}],
    }))
    port = free_port()
    svc = Proc("ratelimit", python_cmd("ratelimit_service", "--config-dir", str(conf),
                                       "--redis-url", redis_url, "--port", str(port))).start()
    svc.wait_http(f"http://127.0.0.1:{port}/healthcheck")
    return [svc, redis], f"127.0.0.1:{port}"


def measure(targets: dict[str, str], headers: dict[str, str], conns: int, seconds: float,
            rounds: int) -> dict[str, list[wrk.Result]]:
    """Each round runs every target once, in rotated order, so drift hits them alike."""
    results: dict[str, list[wrk.Result]] = {name: [] for name in targets}
    names = list(targets)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            results[name].append(wrk.run(f"{targets[name]}/v1/chat/completions", BODY, headers, conns,
                                         seconds, bearer_keys=KEYS))
    return results


def report(conns: int, results: dict[str, list[wrk.Result]]) -> None:
    base = results["bare FastAPI passthrough"]
    print(f"\nconcurrency {conns}: median of {len(base)} rounds")
    for name, runs in results.items():
        print(wrk.median(runs).row(name))
    for name, runs in results.items():
        if not name.startswith("tollgate"):
            continue
        ratio = statistics.median(r.rps / b.rps for r, b in zip(runs, base))
        added = statistics.median(r.p50_ms - b.p50_ms for r, b in zip(runs, base))
        direct = statistics.median(r.rps / m.rps for r, m in zip(runs, results["mock direct"]))
        lean = statistics.median(r.rps / m.rps for r, m in zip(runs, results["lean passthrough"]))
        print(f"{name}: {ratio:.0%} of passthrough throughput, p50 {added:+.2f} ms vs passthrough, "
              f"{lean:.0%} of the lean passthrough, {direct:.0%} of the direct mock "
              "(medians of per-round ratios)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--distributed", action="store_true")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="tollgate-bench-"))
    procs = []
    try:
        mock, mock_url = start_mock_llm(None, "--no-record", "--completion-tokens", "20")
        procs.append(mock)
        pt_port = free_port()
        passthrough = Proc("passthrough", [sys.executable, "-m", "bench.passthrough",
                                           "--port", str(pt_port), "--upstream", mock_url]).start()
        procs.append(passthrough.wait_port(pt_port))
        lean_port = free_port()
        lean = Proc("lean-passthrough", [sys.executable, "-m", "bench.passthrough", "--lean",
                                         "--port", str(lean_port), "--upstream", mock_url]).start()
        procs.append(lean.wait_port(lean_port))
        gw = start_tollgate(workdir, mock_url, None)
        procs.append(gw.proc)
        targets = {
            "mock direct": mock_url,
            "bare FastAPI passthrough": f"http://127.0.0.1:{pt_port}",
            "lean passthrough": f"http://127.0.0.1:{lean_port}",
            "tollgate (local)": gw.url,
        }
        gateways = {"tollgate (local)": gw}
        if args.distributed:
            rl_procs, rl_host = start_ratelimit(workdir)
            procs.extend(rl_procs)
            dist = start_tollgate(workdir, mock_url, rl_host)
            procs.append(dist.proc)
            targets["tollgate (distributed)"] = dist.url
            gateways["tollgate (distributed)"] = dist
        headers = {"Content-Type": "application/json"}
        for url in targets.values():  # warm-up: connections, caches, first-call imports
            wrk.run(f"{url}/v1/chat/completions", BODY, headers, 8, 1, bearer_keys=KEYS)
        for conns in (8, 1):
            report(conns, measure(targets, headers, conns, args.seconds, args.rounds))
        for name, gw in gateways.items():
            refused = [line for line in httpx.get(f"{gw.admin}/metrics").text.splitlines()
                       if line.startswith("tollgate_requests_total") and 'status="200"' not in line]
            if refused:
                print(f"{name}: answers other than 200:", *refused, sep="\n  ")
    finally:
        for p in reversed(procs):
            p.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
