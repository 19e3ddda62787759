"""This tree against another checkout of Tollgate, both behind ONE mock upstream.

    python -m bench.ab_bench --baseline ../tollgate-old [--rounds 5] [--seconds 4]

Each tree runs its own rate-limit service and Redis, a local-path gateway and a
distributed-path gateway (bench/gateway_bench.py's configs); the other tree needs its own
`.venv`. One mock serves all four, so a change to the mock moves nobody's figure, and
rounds rotate the order so drift hits every target alike. Prints, at concurrency 8 and 1,
the medians and the per-round ratio this/baseline for each path. About 2 minutes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from bench import wrk
from bench.gateway_bench import BODY, KEYS, gateway_config
from tests.harness.procs import free_port, start_mock_llm, start_redis

HERE = Path(__file__).resolve().parent.parent
DOMAIN = {"domain": "bench", "descriptors": [
    {"key": "user_id", "rate_limit": {"unit": "second", "requests_per_unit": 4_000_000_000}}]}


def wait_ready(url: str, proc: subprocess.Popen) -> None:
    for _ in range(300):
        if proc.poll() is not None:
            raise SystemExit(f"exited before {url} was ready: {proc.args}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} not ready")


def start_tree(name: str, tree: Path, mock_url: str, work: Path, procs: list) -> dict[str, str]:
    """The tree's service (on its own Redis) and its two gateways; returns their URLs."""
    def spawn(*args: str) -> subprocess.Popen:
        proc = subprocess.Popen([str(tree / ".venv/bin/python"), *args], cwd=tree, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(tree)})
        procs.append(proc)
        return proc

    redis, redis_url = start_redis()
    procs.append(redis.popen)
    conf = work / f"ratelimit-{name}"
    conf.mkdir()
    (conf / "bench.yaml").write_text(yaml.safe_dump(DOMAIN))
    rl_port = free_port()
    svc = spawn("-m", "ratelimit_service", "--config-dir", str(conf), "--redis-url", redis_url, "--port", str(rl_port))
    wait_ready(f"http://127.0.0.1:{rl_port}/healthcheck", svc)
    urls = {}
    for path, ratelimit in (("local", None), ("distributed", f"127.0.0.1:{rl_port}")):
        port, admin = free_port(), free_port()
        config = work / f"gateway-{name}-{path}.yaml"
        config.write_text(yaml.safe_dump(gateway_config(mock_url, port, admin, ratelimit)))
        wait_ready(f"http://127.0.0.1:{admin}/healthz/ready", spawn("-m", "gateway", "-f", str(config)))
        urls[f"{name} {path}"] = f"http://127.0.0.1:{port}/v1/chat/completions"
    return urls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, required=True, help="another checkout, with its own .venv")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4)
    args = parser.parse_args()
    work, procs = Path(tempfile.mkdtemp(prefix="tollgate-ab-")), []
    mock, mock_url = start_mock_llm(None, "--no-record", "--completion-tokens", "20")
    try:
        targets = {**start_tree("baseline", args.baseline.resolve(), mock_url, work, procs),
                   **start_tree("this", HERE, mock_url, work, procs)}
        headers = {"Content-Type": "application/json"}
        for url in targets.values():  # warm-up
            wrk.run(url, BODY, headers, 8, 1, bearer_keys=KEYS)
        names = list(targets)
        for conns in (8, 1):
            runs: dict[str, list[wrk.Result]] = {n: [] for n in names}
            for r in range(args.rounds):
                for n in names[r % len(names):] + names[:r % len(names)]:
                    runs[n].append(wrk.run(targets[n], BODY, headers, conns, args.seconds, bearer_keys=KEYS))
            print(f"concurrency {conns}: medians of {args.rounds} rotated rounds")
            for n in names:
                print(f"  {n:22s} {statistics.median(x.rps for x in runs[n]):7.0f} rps  "
                      f"p50 {statistics.median(x.p50_ms for x in runs[n]):.2f} ms")
            for path in ("local", "distributed"):
                ratios = [a.rps / b.rps for a, b in zip(runs[f"this {path}"], runs[f"baseline {path}"])]
                print(f"  this/baseline, {path}: {statistics.median(ratios):.2f} "
                      f"(rounds: {', '.join(f'{x:.2f}' for x in ratios)})")
    finally:
        for proc in procs:
            proc.terminate()
        mock.stop()


if __name__ == "__main__":
    main()
