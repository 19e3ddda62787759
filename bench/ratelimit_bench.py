#!/usr/bin/env python3
"""Decisions/s of the rate-limit service's POST /json, against the same Redis's raw EVALSHA rate.

    python -m bench.ratelimit_bench [--seconds 10] [--connections 64] [--users 1000]

Starts a redis-server and `tollgate-ratelimit` on free ports, drives /json with
wrk (one descriptor per request, users rotating so each hits its own bucket),
then runs the very same Lua script with redis-benchmark (EVALSHA, pipelined,
same key spread) against the same Redis. Prints both rates and their ratio.
Then the /v1 API as the gateway uses it: a check-only reserve under a fresh id
(with the gateway's lease) before each call, and a settle of that id with the
call's 30 tokens (absolute) after it; first as single /v1/reserve and
/v1/settle calls, then as /v1/batch (batches of 4: two reserves, two settles,
8 connections). For both it reads the CPU the service and Redis spend per
decision from /proc: robust to a busy machine, unlike rates. Every /v1 answer
is checked (200 for each item, no duplicate settle). Needs wrk and
redis-benchmark on PATH. Runs for about 4 x --seconds + 10 s.
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
import uuid
from pathlib import Path
from string import Template

from gateway.accounting import LEASE_MARGIN
from gateway.upstream import DEFAULT_TIMEOUT
from ratelimit_service.limiter import JSON, Call, Check, _add, bucket_key, load_script
from ratelimit_service.redis_client import bulk
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

# What a gateway replica sends for a soft token budget (gateway/policies/remote_ratelimit.py,
# gateway/ratelimit_client.py): before each call a check-only reserve under a fresh id, with
# the lease of a route without its own timeout; after it, a settle of that id with the call's
# tokens, absolute. A settle names the reservation made $lag earlier, long since answered on
# any of the connections; until there is one that old, a reserve goes in its place.
WRK_V1_SCRIPT = Template("""
local reserved, settled = 0, 0
bad = 0
local function entries(k)
  return string.format('[{"entries":[{"key":"user_id","value":"u%d"}],', k % $users)
end
local function reserve()
  reserved = reserved + 1
  return "reserve", string.format('{"domain":"$domain","id":"$prefix-%d","lease_ms":$lease,"descriptors":%s'
    .. '"hits_addend":0}]}', reserved, entries(reserved))
end
local function settle()
  if settled + $lag >= reserved then
    return reserve()
  end
  settled = settled + 1
  return "settle", string.format('{"domain":"$domain","id":"$prefix-%d","descriptors":%s"hits_addend":30}]}',
    settled, entries(settled))
end
local headers = {["Content-Type"] = "application/json"}
local turn = 0
local function single()
  turn = turn + 1
  local op, body = (turn % 2 == 1 and reserve or settle)()
  return wrk.format("POST", "/v1/" .. op, headers, body)
end
local function batch()
  local items = {}
  for i, make in ipairs({reserve, reserve, settle, settle}) do
    local op, body = make()
    items[i] = '{"op":"' .. op .. '",' .. body:sub(2)
  end
  return wrk.format("POST", "/v1/batch", headers, '{"items":[' .. table.concat(items, ",") .. ']}')
end
request = $request
-- An answer that is not 200, an item that is not 200, or a settle the service had already
-- seen (an id reused) is a bad answer.
response = function(status, headers, body)
  if status ~= 200 then
    bad = bad + 1
  end
  for code in body:gmatch('"status":(%d+)') do
    if code ~= "200" then
      bad = bad + 1
    end
  end
  for _ in body:gmatch('"duplicate":true') do
    bad = bad + 1
  end
end
local threads = {}
setup = function(thread)
  table.insert(threads, thread)
end
done = function()
  local total = 0
  for _, thread in ipairs(threads) do
    total = total + thread:get("bad")
  end
  io.write(string.format("bad answers: %d\\n", total))
end
""")
BATCH_ITEMS = 4
BATCH_CONNECTIONS = 8
LEASE_MS = int((DEFAULT_TIMEOUT + LEASE_MARGIN) * 1000)  # the gateway's lease for a route without a timeout


def v1_script(users: int, batch: bool) -> str:
    """The gateway's /v1 traffic; ids are fresh in every wrk run (the service refuses a closed one)."""
    return WRK_V1_SCRIPT.substitute(domain=DOMAIN, users=users, lag=256, lease=LEASE_MS,
                                    prefix=uuid.uuid4().hex[:12], request="batch" if batch else "single")


def wrk(url: str, path: str, seconds: int, connections: int, workdir: Path, script: str) -> dict:
    script_path = workdir / "ratelimit_wrk.lua"
    script_path.write_text(script)
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(script_path), url + path],
        capture_output=True, text=True, timeout=seconds + 30, check=True,
    ).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    latency = re.search(r"Latency\s+(\S+)", out)
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    bad = re.search(r"bad answers: (\d+)", out)
    return {"rate": rate, "non_2xx": int(errors.group(1)) if errors else 0, "latency_avg": latency.group(1),
            "requests": requests, "bad": int(bad.group(1)) if bad else 0}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def v1_cpu(url: str, seconds: int, connections: int, users: int, workdir: Path, batch: bool,
           service_pid: int, redis_pid: int) -> dict:
    """Decisions/s of the /v1 traffic, and the service's and Redis's CPU microseconds per decision."""
    before = cpu_seconds(service_pid), cpu_seconds(redis_pid)
    result = wrk(url, "/v1/batch" if batch else "/v1/reserve", seconds, connections, workdir, v1_script(users, batch))
    per_request = BATCH_ITEMS if batch else 1
    decisions = result["requests"] * per_request
    service_us = (cpu_seconds(service_pid) - before[0]) / decisions * 1e6
    redis_us = (cpu_seconds(redis_pid) - before[1]) / decisions * 1e6
    return {**result, "rate": result["rate"] * per_request, "service_us": service_us, "redis_us": redis_us}


def raw_evalsha(redis_port: int, seconds: int, users: int) -> float:
    """redis-benchmark running the service's script on the same spread of keys, for about `seconds`."""
    script = load_script()
    sha = hashlib.sha1(script.encode()).hexdigest()
    subprocess.run(["redis-cli", "-p", str(redis_port), "SCRIPT", "LOAD", script], check=True, capture_output=True)
    # A /json decision on one user's bucket, laid out by the service's own encoder (lua/ratelimit.lua
    # reads it), so the arguments follow the script; redis-benchmark puts a user in __rand_int__.
    keys, fields = [], [bulk("0.0")]  # TOLLGATE_CLOCK_OFFSET, as the service passes it
    key = bucket_key(DOMAIN, "tb", (("user_id", "u__rand_int__"),))
    _add(Call(JSON, [Check(key, "tb", 1_000_000_000, 3600, 1)]), keys, fields)
    args = ["EVALSHA", sha, str(len(keys)), *(arg.split(b"\r\n")[1].decode() for arg in keys + fields)]

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
        json_script = WRK_SCRIPT % (DOMAIN, args.users, "/json")
        wrk(url, "/json", 2, args.connections, workdir, json_script)  # warm-up
        started = time.monotonic()
        decisions = wrk(url, "/json", args.seconds, args.connections, workdir, json_script)
        raw = raw_evalsha(redis_port, args.seconds, args.users)
        elapsed = time.monotonic() - started
        pids = service.popen.pid, redis.popen.pid
        single = v1_cpu(url, args.seconds, args.connections, args.users, workdir, False, *pids)
        wrk(url, "/v1/batch", 2, BATCH_CONNECTIONS, workdir, v1_script(args.users, True))  # warm-up
        batch = v1_cpu(url, args.seconds, BATCH_CONNECTIONS, args.users, workdir, True, *pids)
    finally:
        service.stop()
        redis.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    ratio = decisions["rate"] / raw
    print(f"/json decisions/s      {decisions['rate']:>10,.0f}  (avg latency {decisions['latency_avg']}, "
          f"non-2xx {decisions['non_2xx']}, {args.connections} connections)")
    print(f"raw EVALSHA/s          {raw:>10,.0f}  (redis-benchmark, same script and Redis, pipelined)")
    print(f"ratio /json : EVALSHA  {ratio:>10.2f}")
    print(f"target 5,000/s         {'met' if decisions['rate'] >= 5000 else 'NOT met'}  ({elapsed:.0f} s measured)")
    for name, r, how in (("/v1", single, f"reserve and settle calls, {args.connections} connections"),
                         ("/v1/batch", batch, f"batches of {BATCH_ITEMS}, {BATCH_CONNECTIONS} connections")):
        print(f"{name + ' decisions/s':<23}{r['rate']:>10,.0f}  ({how}, avg latency {r['latency_avg']}, "
              f"bad answers {r['bad']})")
        print(f"  CPU per decision     service {r['service_us']:.1f} us, redis {r['redis_us']:.1f} us")
    if args.json:
        print(json.dumps({"json_rps": decisions["rate"], "evalsha_rps": raw, "ratio": ratio,
                          "v1_decisions_rps": single["rate"], "v1_service_us": single["service_us"],
                          "v1_redis_us": single["redis_us"], "batch_decisions_rps": batch["rate"],
                          "batch_service_us": batch["service_us"], "batch_redis_us": batch["redis_us"]}))
    if single["bad"] or batch["bad"] or decisions["non_2xx"]:
        sys.exit("ratelimit_bench: the service gave answers other than 200 (see above)")


if __name__ == "__main__":
    main()
