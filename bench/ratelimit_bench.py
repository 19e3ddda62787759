#!/usr/bin/env python3
"""Decisions/s of the rate-limit service's POST /json, against the same Redis's raw EVALSHA rate.

    python bench/ratelimit_bench.py [--seconds 10] [--connections 64] [--users 1000]

Starts a redis-server and `tollgate-ratelimit` on free ports, drives /json with
wrk (one descriptor per request, users rotating so each hits its own bucket),
then runs the very same Lua script with redis-benchmark (EVALSHA, pipelined,
same key spread) against the same Redis. Prints both rates and their ratio.
Needs wrk and redis-benchmark on PATH. Runs for about 3 x --seconds + 5 s.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from procs import Proc, free_port, python_cmd, start_redis  # noqa: E402

from ratelimit_service.limiter import bucket_key, load_script  # noqa: E402

DOMAIN = "bench"
CONFIG = f"""
domain: {DOMAIN}
descriptors:
  - key: user_id
    rate_limit:
      unit: hour
      requests_per_unit: 1000000000
"""
WRK_SCRIPT = """
local n = 0
request = function()
  n = n + 1
  local body = string.format(
    '{"domain":"%s","descriptors":[{"entries":[{"key":"user_id","value":"u%%d"}]}]}', n %% %d)
  return wrk.format("POST", "%s", {["Content-Type"] = "application/json"}, body)
end
"""


def wrk(url: str, path: str, seconds: int, connections: int, users: int, workdir: Path) -> dict:
    script = workdir / f"ratelimit_wrk_{path.strip('/').replace('/', '_')}.lua"
    script.write_text(WRK_SCRIPT % (DOMAIN, users, path))
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(script), url + path],
        capture_output=True, text=True, timeout=seconds + 30, check=True,
    ).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    latency = re.search(r"Latency\s+(\S+)", out)
    return {"rate": rate, "non_2xx": int(errors.group(1)) if errors else 0, "latency_avg": latency.group(1)}


def raw_evalsha(redis_port: int, seconds: int, users: int) -> float:
    """redis-benchmark running the service's script on the same spread of keys, for about `seconds`."""
    script = load_script()
    sha = hashlib.sha1(script.encode()).hexdigest()
    subprocess.run(["redis-cli", "-p", str(redis_port), "SCRIPT", "LOAD", script], check=True, capture_output=True)
    key = bucket_key(DOMAIN, "tb", (("user_id", "u__rand_int__"),))
    args = ["EVALSHA", sha, "1", key, "json", "tb", "1000000000", "3600", "1", "-1", "0"]

    def run(requests: int) -> float:
        out = subprocess.run(
            ["redis-benchmark", "-p", str(redis_port), "-c", "32", "-P", "16", "-r", str(users),
             "-n", str(requests), "-q", *args],
            capture_output=True, text=True, timeout=seconds + 60, check=True,
        ).stdout
        return float(re.findall(r"([\d.]+) requests per second", out)[-1])

    probe = run(20_000)
    return run(max(20_000, int(probe * seconds)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="length of each measurement (default 10)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    parser.add_argument("--users", type=int, default=1000, help="distinct buckets (default 1000)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args()
    for tool in ("wrk", "redis-benchmark", "redis-server", "redis-cli"):
        if not shutil.which(tool):
            sys.exit(f"ratelimit_bench: {tool} is not installed")

    workdir = Path(tempfile.mkdtemp(prefix="tollgate-ratelimit-bench-"))
    (workdir / "config").mkdir()
    (workdir / "config" / "bench.yaml").write_text(CONFIG)
    redis, redis_url = start_redis()
    redis_port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    port = free_port()
    service = Proc("ratelimit", python_cmd(
        "ratelimit_service", "--config-dir", str(workdir / "config"), "--redis-url", redis_url,
        "--port", str(port), "--host", "127.0.0.1", "--log-level", "warning",
    )).start()
    try:
        url = f"http://127.0.0.1:{port}"
        service.wait_http(f"{url}/healthcheck")
        wrk(url, "/json", 2, args.connections, args.users, workdir)  # warm-up
        started = time.monotonic()
        decisions = wrk(url, "/json", args.seconds, args.connections, args.users, workdir)
        reserve = wrk(url, "/v1/reserve", args.seconds, args.connections, args.users, workdir)
        raw = raw_evalsha(redis_port, args.seconds, args.users)
        elapsed = time.monotonic() - started
    finally:
        service.stop()
        redis.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    ratio = decisions["rate"] / raw
    print(f"/json decisions/s      {decisions['rate']:>10,.0f}  (avg latency {decisions['latency_avg']}, "
          f"non-2xx {decisions['non_2xx']}, {args.connections} connections)")
    print(f"/v1/reserve decisions/s{reserve['rate']:>10,.0f}  (avg latency {reserve['latency_avg']}, "
          f"non-2xx {reserve['non_2xx']})")
    print(f"raw EVALSHA/s          {raw:>10,.0f}  (redis-benchmark, same script and Redis, pipelined)")
    print(f"ratio /json : EVALSHA  {ratio:>10.2f}")
    print(f"target 5,000/s         {'met' if decisions['rate'] >= 5000 else 'NOT met'}  ({elapsed:.0f} s measured)")
    if args.json:
        print(json.dumps({"json_rps": decisions["rate"], "reserve_rps": reserve["rate"], "evalsha_rps": raw,
                          "ratio": ratio}))


if __name__ == "__main__":
    main()
