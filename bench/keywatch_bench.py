"""CPU an idle gateway spends watching 10,000 unchanged key files, against the same gateway
watching one, both measured over the same interleaved windows.

    python -m bench.keywatch_bench [--seconds 10] [--rounds 3] [--keys 10000]

The target: watching 10,000 unchanged key files costs under 1 % of a core.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from tests.harness.procs import free_port, start_gateway


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def gateway(workdir: Path, keys: int):
    keys_dir = workdir / f"keys-{keys}"
    keys_dir.mkdir()
    for i in range(keys):
        (keys_dir / f"k{i}").write_text(json.dumps({"key": f"sk-bench-{i}", "metadata": {"user_id": f"u{i}"}}))
    port, admin = free_port(), free_port()
    path = workdir / f"gateway-{keys}.yaml"
    path.write_text(json.dumps({"config": {"adminAddr": f"127.0.0.1:{admin}"},
                                "llm": {"port": port, "policies": {"apiKey": {"keysDir": str(keys_dir)}},
                                        "models": [{"name": "*", "provider": "openAI"}]}}))
    return start_gateway(path, port, admin, name=f"gateway-{keys}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keys", type=int, default=10_000)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="tollgate-keywatch-"))
    many, one = gateway(workdir, args.keys), gateway(workdir, 1)
    try:
        time.sleep(2)  # past start-up and the watch's first wake-up
        shares = {"many": [], "one": []}
        for _ in range(args.rounds):
            before = {n: cpu_seconds(g.proc.popen.pid) for n, g in (("many", many), ("one", one))}
            time.sleep(args.seconds)
            for name, g in (("many", many), ("one", one)):
                shares[name].append((cpu_seconds(g.proc.popen.pid) - before[name]) / args.seconds * 100)
        m, o = statistics.median(shares["many"]), statistics.median(shares["one"])
        print(f"idle gateway watching {args.keys:,} key files: {m:.2f} % of a core "
              f"(rounds {min(shares['many']):.2f}-{max(shares['many']):.2f}); watching 1: {o:.2f} %; "
              f"the watching of the others costs {m - o:+.2f} % ({'under' if m - o < 1 else 'NOT under'} 1 %)")
    finally:
        many.stop()
        one.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
