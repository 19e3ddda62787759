"""Gateway throughput and latency against baselines measured in the same run.

    python bench/gateway_bench.py [--seconds 8] [--distributed]

Rows: the mock upstream called directly; a bare FastAPI passthrough (bench/passthrough.py)
to the same mock; Tollgate with key auth + a local token bucket + metrics; and with
--distributed, Tollgate whose every request also reserves and settles through the
rate-limit service and a real redis-server, for 100 users in turn (one budget each).
Ratios are against the passthrough.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))

import wrk  # noqa: E402
from procs import Proc, free_port, python_cmd, start_gateway, start_mock_llm, start_redis  # noqa: E402

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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--distributed", action="store_true")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="tollgate-bench-"))
    procs = []
    try:
        mock, mock_url = start_mock_llm(None, "--no-record", "--completion-tokens", "20")
        procs.append(mock)
        pt_port = free_port()
        passthrough = Proc("passthrough", [sys.executable, str(REPO / "bench" / "passthrough.py"),
                                           "--port", str(pt_port), "--upstream", mock_url]).start()
        procs.append(passthrough.wait_port(pt_port))
        gw = start_tollgate(workdir, mock_url, None)
        procs.append(gw.proc)
        targets = {
            "mock direct": mock_url,
            "bare FastAPI passthrough": f"http://127.0.0.1:{pt_port}",
            "tollgate (local)": gw.url,
        }
        if args.distributed:
            rl_procs, rl_host = start_ratelimit(workdir)
            procs.extend(rl_procs)
            dist = start_tollgate(workdir, mock_url, rl_host)
            procs.append(dist.proc)
            targets["tollgate (distributed)"] = dist.url
        headers = {"Content-Type": "application/json"}
        for conns in (8, 1):
            print(f"\nconcurrency {conns}, {args.seconds:g}s each")
            results = {}
            for name, url in targets.items():
                wrk.run(f"{url}/v1/chat/completions", BODY, headers, conns, 1, bearer_keys=KEYS)  # warm-up
                results[name] = wrk.run(f"{url}/v1/chat/completions", BODY, headers, conns, args.seconds,
                                        bearer_keys=KEYS)
                print(results[name].row(name))
            base = results["bare FastAPI passthrough"]
            for name, r in results.items():
                if name.startswith("tollgate"):
                    print(f"{name}: {r.rps / base.rps:.0%} of passthrough throughput, "
                          f"p50 +{r.p50_ms - base.p50_ms:.2f} ms vs passthrough, "
                          f"{r.rps / results['mock direct'].rps:.0%} of the direct mock")
    finally:
        for p in reversed(procs):
            p.stop()


if __name__ == "__main__":
    main()
