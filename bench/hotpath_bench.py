"""CPU per call of the gateway's per-request steps, against baselines from the same run.

    python -m bench.hotpath_bench [--rounds 7]

Rows (medians over interleaved rounds; the spread says how noisy the machine was):
- key authentication with 10,000 keys, against a bare sha256 + dict lookup;
- building a request's CEL activation and evaluating `apiKey.user_id == 'mike'`,
  against celpy's own CompiledRunner.evaluate of the same expression.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import time
from collections.abc import Callable

import celpy
from starlette.datastructures import Headers

from gateway.cel import Activation, compile_expr
from gateway.policies.apikey import ApiKeyPolicy, KeyStore, Metadata, key_digest


def per_call(fn: Callable[[], object], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def auth_pair() -> tuple[Callable, Callable]:
    store = KeyStore()
    plain: dict[str, dict] = {}
    for i in range(10_000):
        store.add(key_digest(f"sk-{i}"), {"user": str(i)})
        plain[key_digest(f"sk-{i}")] = {"user": str(i)}
    policy = ApiKeyPolicy("strict", "authorization", "Bearer ", store, ("x-api-key",))
    headers = Headers({"authorization": "Bearer sk-9999"})
    return (lambda: policy.authenticate(headers),
            lambda: plain[hashlib.sha256(headers["authorization"][7:].encode()).hexdigest()])


def cel_pair() -> tuple[Callable, Callable]:
    source = "apiKey.user_id == 'mike'"
    ours = compile_expr(source)
    metadata = Metadata({"user_id": "mike"})
    env = celpy.Environment(runner_class=celpy.CompiledRunner)
    runner = env.program(env.compile(source))
    baseline = {"apiKey": celpy.json_to_cel({"user_id": "mike"})}
    return (lambda: ours.evaluate(Activation(metadata, "POST", "/v1/chat/completions", {"authorization": "x"})),
            lambda: runner.evaluate(baseline))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    rows = {"authenticate (10k keys) vs sha256 + dict": (auth_pair(), 20_000),
            "activation + CEL condition vs celpy CompiledRunner": (cel_pair(), 5_000)}
    for name, ((ours, base), n) in rows.items():
        ratios, ours_us, base_us = [], [], []
        for _ in range(args.rounds):  # interleaved: drift on this machine hits both sides alike
            o, b = per_call(ours, n), per_call(base, n)
            ours_us.append(o * 1e6)
            base_us.append(b * 1e6)
            ratios.append(o / b)
        print(f"{name}: {statistics.median(ours_us):.2f} us vs {statistics.median(base_us):.2f} us, "
              f"ratio {statistics.median(ratios):.2f} (min {min(ratios):.2f}, max {max(ratios):.2f})")


if __name__ == "__main__":
    main()
