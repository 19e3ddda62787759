#!/usr/bin/env python3
"""Decisions/s of the rate-limit service's POST /json, against the same Redis's raw EVALSHA rate.

    python -m bench.ratelimit_bench [--seconds 10] [--connections 64] [--users 1000]

Starts a redis-server and `tollgate-ratelimit` on free ports, drives /json with
wrk (one descriptor per request, users rotating so each hits its own bucket),
then runs the very same Lua script with redis-benchmark (EVALSHA, pipelined,
same key spread) against the same Redis. Prints both rates and their ratio.
Then /v1/batch as the gateway sends it (batches of 4: two check-only reserves,
two settles of 30 tokens, 8 connections), with the CPU the service and Redis
spend per decision, read from /proc: robust to a busy machine, unlike rates.
Needs wrk and redis-benchmark on PATH. Runs for about 4 x --seconds + 7 s.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ratelimit_service.limiter import bucket_key, load_script
from tests.harness.procs import Proc, free_port, python_cmd, start_redis

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

# The gateway's pattern: a check-only reserve before each call, a settle of its tokens after.
WRK_BATCH_SCRIPT = """
local n = 0
local function item(op, hits)
  n = n + 1
  return string.format('{"op":"%%s","domain":"%s","descriptors":[{"entries":[{"key":"user_id","value":"u%%d"}],'
    .. '"hits_addend":%%d}]}', op, n %% %d, hits)
end
request = function()
  local items = {item("reserve", 0), item("reserve", 0), item("settle", 30), item("settle", 30)}
  return wrk.format("POST", "%s", {["Content-Type"] = "application/json"}, '{"items":[' .. table.concat(items, ",") .. ']}')
end
"""
BATCH_ITEMS = 4
BATCH_CONNECTIONS = 8


def wrk(url: str, path: str, seconds: int, connections: int, users: int, workdir: Path,
        template: str = WRK_SCRIPT) -> dict:
    script = workdir / f"ratelimit_wrk_{path.strip('/').replace('/', '_')}.lua"
    script.write_text(template % (DOMAIN, users, path))
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(script), url + path],
        capture_output=True, text=True, timeout=seconds + 30, check=True,
    ).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    latency = re.search(r"Latency\s+(\S+)", out)
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    return {"rate": rate, "non_2xx": int(errors.group(1)) if errors else 0, "latency_avg": latency.group(1),
            "requests": requests}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def batch_cpu(url: str, seconds: int, users: int, workdir: Path, service_pid: int, redis_pid: int) -> dict:
    """/v1/batch decisions/s, and the service's and Redis's CPU microseconds per decision."""
    before = cpu_seconds(service_pid), cpu_seconds(redis_pid)
    result = wrk(url, "/v1/batch", seconds, BATCH_CONNECTIONS, users, workdir, WRK_BATCH_SCRIPT)
    decisions = result["requests"] * BATCH_ITEMS
    service_us = (cpu_seconds(service_pid) - before[0]) / decisions * 1e6
    redis_us = (cpu_seconds(redis_pid) - before[1]) / decisions * 1e6
    return {**result, "rate": result["rate"] * BATCH_ITEMS, "service_us": service_us, "redis_us": redis_us}


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
        wrk(url, "/v1/batch", 2, BATCH_CONNECTIONS, args.users, workdir, WRK_BATCH_SCRIPT)  # warm-up
        batch = batch_cpu(url, args.seconds, args.users, workdir, service.popen.pid, redis.popen.pid)
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
    print(f"/v1/batch decisions/s  {batch['rate']:>10,.0f}  (batches of {BATCH_ITEMS}, {BATCH_CONNECTIONS} connections, "
          f"non-2xx {batch['non_2xx']})")
    print(f"  CPU per decision     service {batch['service_us']:.1f} us, redis {batch['redis_us']:.1f} us")
    if args.json:
        print(json.dumps({"json_rps": decisions["rate"], "reserve_rps": reserve["rate"], "evalsha_rps": raw,
                          "ratio": ratio, "batch_decisions_rps": batch["rate"],
                          "batch_service_us": batch["service_us"], "batch_redis_us": batch["redis_us"]}))


if __name__ == "__main__":
    main()
