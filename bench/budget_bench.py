"""Budget accuracy under fire: is every token and micro-dollar the provider billed charged
exactly once, and does a hard budget never overshoot, across 3 replicas, clients leaving
mid-stream and a replica killed mid-run?

    python -m bench.budget_bench [--seconds 25] [--concurrency 48]     # about 2 x seconds + 15 s

Starts redis-server, the rate-limit service, two mock upstreams (8-chunk streams 15 ms
apart, so a client can leave mid-stream; one serves the replica that will be killed) and
3 gateways. Per mode (soft, then hard), the clients send chat completions round-robin
over the replicas, plain and streamed; one client in four closes its connection after a
stream's first piece or two. 40 % in, one replica is SIGKILLed: requests to it then fail
client-side, and the reservations it held must come back by lease (timeout 5 s + 5 s).
Each mode has two users: one's token budget runs out during the mode, the other's dollar
budget (modelCatalog prices); budgets are sized from a 3 s warm-up's throughput.

Prints per mode: tokens and dollars charged by the service (POST /v1/budget) against what
the mocks billed (/_mock/usage deltas, dollars at catalog prices), overall, for the
surviving replicas alone (per-replica buckets tell them apart) and for the killed one,
which loses what it had not settled; each budget's overshoot; request counts; when the
killed replica's holds came back. A client that leaves is charged in full by design: the
gateway drains the stream until its usage, and the mock bills whole answers, so the
survivors' figures include the disconnects. Exits 1 if a hard budget overshoots, if the
survivors' charge differs from their billing, or if a reservation is held at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis
import yaml

from gateway.accounting import LEASE_MARGIN
from tests.harness.procs import GatewayProc
from tests.harness.stack import Stack

DOMAIN, MODEL = "bench", "gpt-4o"
# USD per 1M tokens = micro-dollars per token: whole numbers, so a billed cost is exact.
PRICE_IN, PRICE_OUT = 2, 10
TIMEOUT_S = 5  # the route's requestTimeout; a reservation's lease is this + LEASE_MARGIN
LEASE_S = TIMEOUT_S + LEASE_MARGIN
MOCK_ARGS = ("--completion-tokens", "40", "--chunks", "8", "--chunk-delay-ms", "15", "--no-record")
PROMPTS = ("Count to five.", "Write a haiku about budgets, tokens and the dollars they cost.",
           "Explain, in two short sentences, why a hard budget reserves before the call and settles after it.")
MODES = ("soft", "hard")
USERS = ("warm", *(f"{m}-{k}" for m in MODES for k in ("tok", "usd")))  # <mode>-<budget that runs out>
HUGE_TOKENS, HUGE_USD = 4_000_000_000, 1000  # limits are uint32 (dollar ones in micro-dollars)
EXHAUST_AT = 0.6  # budgets are sized to run out about this far into a mode
KILL_AT = 0.4  # when the last replica is SIGKILLed


def domain_yaml(limits: dict[str, tuple[int, int]]) -> str:
    """Each user's token and dollar (micro-dollars) budgets, and a per-replica pair of
    buckets large enough never to refuse: they tell what each replica charged."""
    descriptors = [{"key": "replica", "rate_limit": {"unit": "day", "requests_per_unit": HUGE_TOKENS}},
                   {"key": "replica_usd", "rate_limit": {"unit": "month", "usd": HUGE_USD}}]
    for user in USERS:
        tokens, micros = limits.get(user, (HUGE_TOKENS, HUGE_USD * 10**6))
        descriptors += [{"key": "user_id", "value": user, "rate_limit": {"unit": "day", "requests_per_unit": tokens}},
                        {"key": "user_usd", "value": user, "rate_limit": {"unit": "month", "usd": micros / 1e6}}]
    return yaml.safe_dump({"domain": DOMAIN, "descriptors": descriptors})


def gateway_config(stack: Stack, name: str, mock_url: str) -> dict:
    def descriptor(key: str, value: str, kind: str, enforcement: str) -> dict:
        return {"entries": [{"key": key, "value": value}], "type": kind, "enforcement": enforcement}

    def target(mode: str) -> dict:
        enforcement = "hard" if mode == "hard" else "soft"
        # The replica's own buckets are hard in every mode, so each request holds a
        # reservation there that the kill leaves behind, and its return can be watched.
        return {"condition": f"apiKey.mode == '{mode}'", "host": stack.ratelimit_host, "domain": DOMAIN,
                "descriptors": [descriptor("user_id", "apiKey.user_id", "tokens", enforcement),
                                descriptor("user_usd", "apiKey.user_id", "usd", enforcement),
                                descriptor("replica", f"'{mode}-{name}'", "tokens", "hard"),
                                descriptor("replica_usd", f"'{mode}-{name}'", "usd", "hard")]}
    keys = [{"key": f"sk-{u}", "metadata": {"user_id": u, "mode": u.split("-")[0]}} for u in USERS]
    return {"config": {"modelCatalog": {MODEL: {"input": PRICE_IN, "output": PRICE_OUT}}},
            "llm": {"port": "@PORT@", "policies": {
                "timeout": {"requestTimeout": f"{TIMEOUT_S}s"}, "apiKey": {"keys": keys},
                "remoteRateLimit": {"conditional": [target(m) for m in ("warm", *MODES)]}},
                "models": [{"name": "*", "provider": "openAI", "params": {"apiKey": "sk-up", "baseUrl": mock_url}}]}}


def spent(stack: Stack, key: str, value: str) -> int:
    return int(stack.budget(DOMAIN, (key, value))["spent"])


def billed(stack: Stack, mock: str, before: dict | None = None) -> tuple[int, int]:
    """(tokens, micro-dollars at catalog prices) the mock billed since `before`."""
    now = stack.mock_billed(mock)
    p, c = (now[k] - (before or {}).get(k, 0) for k in ("prompt_tokens", "completion_tokens"))
    return p + c, p * PRICE_IN + c * PRICE_OUT


@dataclass
class Run:
    """One mode's traffic: who sends, where, and what came of it."""

    users: tuple[str, ...]
    urls: list[str]
    seconds: float
    start: float = field(default_factory=time.monotonic)
    killed_at: float | None = None
    counts: Counter = field(default_factory=Counter)
    exhausted: dict[str, float] = field(default_factory=dict)  # user -> first 429, s into the run
    turn: itertools.count = field(default_factory=itertools.count)


async def request(http: httpx.AsyncClient, url: str, user: str, cut: bool, rnd: random.Random) -> str:
    body = {"model": MODEL, "messages": [{"role": "user", "content": rnd.choice(PROMPTS)}],
            "max_tokens": rnd.choice((16, 40, 64)), "stream": cut or rnd.random() < 0.5}
    headers = {"Authorization": f"Bearer sk-{user}"}
    try:
        async with http.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers) as r:
            if r.status_code != 200:
                await r.aread()
                return "refused" if r.status_code == 429 else f"failed {r.status_code}"
            if not body["stream"]:
                return "served" if "usage" in (await r.aread()).decode() else "failed body"
            pieces, leave_after = 0, rnd.choice((1, 2))
            async for line in r.aiter_lines():
                if line == "data: [DONE]":
                    return "served"
                if cut and '"content":"' in line and '"content":""' not in line:
                    pieces += 1
                    if pieces == leave_after:
                        return "disconnected"  # leaving the block closes the connection mid-stream
            return "failed stream"  # ended without [DONE]
    except httpx.HTTPError as e:
        return f"failed {type(e).__name__}"


async def client(n: int, run: Run, http: httpx.AsyncClient) -> None:
    rnd = random.Random(n)
    user = run.users[n % len(run.users)]
    while time.monotonic() - run.start < run.seconds:
        i = next(run.turn) % len(run.urls)  # one round robin over all requests: every replica sees every user
        sent_before_kill = run.killed_at is None
        outcome = await request(http, run.urls[i], user, n % 4 == 3, rnd)
        if outcome.startswith("failed") and i == len(run.urls) - 1 and run.killed_at is not None:
            outcome = "cut by the kill" if sent_before_kill else "sent to the dead replica"
        run.counts[outcome] += 1
        if outcome == "refused":
            run.exhausted.setdefault(user, time.monotonic() - run.start)
            await asyncio.sleep(0.02)  # a refused client backs off a little, as real ones do


async def kill_and_watch(stack: Stack, run: Run, doomed: GatewayProc, bucket: str) -> dict:
    """SIGKILLs the doomed replica KILL_AT into the run, then watches its bucket until its
    leases must have ended: the time of the last drop is when its holds came back."""
    await asyncio.sleep(max(0.0, run.start + KILL_AT * run.seconds - time.monotonic()))
    read = lambda: asyncio.to_thread(lambda: (spent(stack, "replica", bucket), spent(stack, "replica_usd", bucket)))
    doomed.proc.signal(signal.SIGKILL)
    run.killed_at = time.monotonic()
    await asyncio.sleep(0.5)  # what the replica had sent before it died lands; then its bucket only changes by lease
    at_kill = last = await read()
    back_after = None
    while time.monotonic() < run.killed_at + LEASE_S + 2:
        await asyncio.sleep(0.1)
        if (now := await read()) != last:
            last, back_after = now, time.monotonic() - run.killed_at
    return {"held": (at_kill[0] - last[0], at_kill[1] - last[1]), "back_after": back_after,
            "at": run.killed_at - run.start}


async def drive(run: Run, concurrency: int, watch=None):
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=concurrency + 8)) as http:
        watcher = asyncio.ensure_future(watch) if watch else None
        await asyncio.gather(*(client(n, run, http) for n in range(concurrency)))
        return await watcher if watcher else None


def settled(stack: Stack, probe) -> None:
    """Waits until what `probe` reads stops changing: settles and the mocks' bills land
    just after the last answers."""
    last, deadline = probe(), time.monotonic() + 20
    while time.monotonic() < deadline:
        time.sleep(0.5)
        if (now := probe()) == last:
            return
        last = now


def dollars(micros: int) -> str:
    return f"${micros / 1e6:,.6f}"


def pct(a: int, b: int) -> str:
    return f"{100 * a / b:.3f} %" if b else "n/a"


def mode_run(stack: Stack, mode: str, gateways: list[GatewayProc], mocks: dict[str, str], names: list[str],
             limits: dict, args) -> list[str]:
    """One mode's run and its report; returns the checks that failed."""
    users = (f"{mode}-tok", f"{mode}-usd")
    before = {m: stack.mock_billed(url) for m, url in mocks.items()}
    run = Run(users, [g.url for g in gateways], args.seconds)
    watch = asyncio.run(drive(run, args.concurrency, kill_and_watch(stack, run, gateways[-1], f"{mode}-{names[-1]}")))
    bucket = lambda key, i: spent(stack, key, f"{mode}-{names[i]}")
    figures = lambda: ([billed(stack, url, before[m]) for m, url in mocks.items()],
                       [(bucket("replica", i), bucket("replica_usd", i)) for i in range(len(names))],
                       [(spent(stack, "user_id", u), spent(stack, "user_usd", u)) for u in users])
    settled(stack, figures)
    (live_bill, doomed_bill), replicas, per_user = figures()
    failed = []
    print(f"\n== {mode}: {args.concurrency} clients, {args.seconds:.0f} s, {names[-1]} killed at {watch['at']:.1f} s")
    print("requests   " + ", ".join(f"{k} {v}" for k, v in sorted(run.counts.items())))
    for j, (unit, fmt) in enumerate((("tokens", "{:,}".format), ("dollars", dollars))):
        charged = sum(u[j] for u in per_user)
        live, killed = sum(r[j] for r in replicas[:-1]), replicas[-1][j]
        bill = live_bill[j] + doomed_bill[j]
        print(f"{unit:<10} charged {fmt(charged)} / billed {fmt(bill)} = {pct(charged, bill)}\n{'':<10} surviving "
              f"replicas {fmt(live)} / {fmt(live_bill[j])} = {pct(live, live_bill[j])}; killed replica {fmt(killed)}"
              f" / {fmt(doomed_bill[j])} (billed, never settled: {fmt(doomed_bill[j] - killed)})")
        if live != live_bill[j]:
            failed.append(f"{mode}: surviving replicas charged {live} {unit}, their mock billed {live_bill[j]}")
        if killed > doomed_bill[j]:  # it may lose what it never settled, never charge more than billed
            failed.append(f"{mode}: killed replica charged {killed} {unit}, its mock billed {doomed_bill[j]}")
        if charged != sum(r[j] for r in replicas):
            failed.append(f"{mode}: users charged {charged} {unit}, replicas {sum(r[j] for r in replicas)}")
    for user, (tokens, micros) in zip(users, per_user):
        j = 0 if user.endswith("tok") else 1
        limit, used = limits[user][j], (tokens, micros)[j]
        over, fmt = max(used - limit, 0), "{:,} tokens".format if j == 0 else dollars
        when = f"first 429 at {run.exhausted[user]:.1f} s" if user in run.exhausted else "NEVER refused"
        print(f"budget     {user}: limit {fmt(limit)}, charged {fmt(used)}, "
              f"overshoot {fmt(over)} ({pct(over, limit)}), {when}")
        if mode == "hard" and (tokens > limits[user][0] or micros > limits[user][1]):
            failed.append(f"hard budget of {user} overshot: {tokens} tokens, {micros} micro-dollars")
    held_tokens, held_micros = watch["held"]
    back = "none held" if watch["back_after"] is None else f"the last came back {watch['back_after']:.1f} s after it"
    print(f"killed     held {held_tokens:,} tokens / {dollars(held_micros)} at the kill; {back} "
          f"(lease {LEASE_S:.0f} s)")
    return failed


def open_reservations(redis_url: str) -> int:
    """Reservations still held on any bucket (each lives in its bucket's `:l` lease set)."""
    r = redis.Redis.from_url(redis_url)
    return sum(r.zcard(k) for k in r.scan_iter("tollgate:rl:*:l"))


def size_budgets(stack: Stack, gateways: list[GatewayProc], mocks: dict[str, str], concurrency: int,
                 seconds: float) -> dict[str, tuple[int, int]]:
    """A 3 s warm-up on an unlimited user (connections and caches warm up too); the budgets
    it sizes run out EXHAUST_AT into a mode at the throughput this machine has now."""
    warm = Run(("warm",), [g.url for g in gateways], 3.0)
    before = {m: stack.mock_billed(url) for m, url in mocks.items()}
    asyncio.run(drive(warm, concurrency))
    tokens, micros = (sum(x) for x in zip(*(billed(stack, url, before[m]) for m, url in mocks.items())))
    share = EXHAUST_AT * seconds / warm.seconds / 2  # a mode's two users share the clients
    limits = {u: (int(tokens * share), HUGE_TOKENS) if u.endswith("tok") else
              (HUGE_TOKENS, int(micros * share) // 100 * 100) for u in USERS if u != "warm"}
    (stack.config_dir / "config.yaml").write_text(domain_yaml(limits))
    for _ in range(100):  # the service reloads its domain files within a second
        if int(stack.budget(DOMAIN, ("user_id", "soft-tok"))["currentLimit"]["requestsPerUnit"]) != HUGE_TOKENS:
            break
        time.sleep(0.1)
    print(f"warm-up: {warm.counts['served']} served in {warm.seconds:.0f} s, {tokens:,} tokens, {dollars(micros)}; "
          f"budgets: {limits['soft-tok'][0]:,} tokens, {dollars(limits['soft-usd'][1])}")
    return limits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=25, help="traffic per mode (default 25, at least 22)")
    parser.add_argument("--concurrency", type=int, default=48, help="concurrent clients (default 48)")
    args = parser.parse_args()
    args.seconds = max(args.seconds, (LEASE_S + 3) / (1 - KILL_AT))  # the killed holds come back within the mode
    started = time.monotonic()
    stack = Stack(Path(tempfile.mkdtemp(prefix="tollgate-budget-bench-")))
    try:
        stack.start_redis()
        stack.start_ratelimit(domain_yaml({}))
        mocks = {"live": stack.start_mock(*MOCK_ARGS), "doomed": stack.start_mock(*MOCK_ARGS)}
        names = ["gw0", "gw1", "gw2"]
        gateways = [stack.start_gateway(gateway_config(stack, n, mocks["doomed" if n == "gw2" else "live"]))
                    for n in names]
        limits = size_budgets(stack, gateways, mocks, args.concurrency, args.seconds)
        failed = []
        for mode in MODES:
            if mode != MODES[0]:  # a fresh replica in place of the one killed
                names[-1] = f"gw{len(stack.gateways)}"
                gateways[-1] = stack.start_gateway(gateway_config(stack, names[-1], mocks["doomed"]))
            failed += mode_run(stack, mode, gateways, mocks, names, limits, args)
        if left := open_reservations(stack.redis_url):
            failed.append(f"{left} reservations still held at the end")
    finally:
        stack.stop()
    print(f"\n{time.monotonic() - started:.0f} s in all; "
          + ("FAILED:\n  " + "\n  ".join(failed) if failed else "all checks passed"))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
