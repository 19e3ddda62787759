"""`tollgate demo`: the whole system on one machine, from a copy of the deploy files.

It runs the same three commands as docker-compose.yml (mock upstream, rate-limit
service, one gateway) as local processes, with the rate-limit service on the embedded
`memory://` store unless REDIS_URL names a real Redis. The deploy files (deploy/gateway
and deploy/ratelimit, shipped inside the package) are copied to a fresh directory first:
editing the copy changes the live limits, and the repository's own files stay as they are.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from importlib import resources
from pathlib import Path

PORTS = {"mock-llm": 8000, "ratelimit": 8080, "gateway": 4000, "gateway admin": 15000}
DEPLOY_FILES = ("gateway", "ratelimit")  # the folders of deploy/ the demo runs from

WALKTHROUGH = """
Tollgate is up: LLM traffic on http://localhost:4000, metrics on http://localhost:15000/metrics

  # alice: no budget of her own
  curl -s localhost:4000/v1/chat/completions -H 'Authorization: Bearer sk-alice-abc123def456' \\
       -H 'Content-Type: application/json' -d '{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"Hello!"}}]}}'
  # mike: 100 tokens a day: the first answer spends it, the second is 429
  curl -si localhost:4000/v1/chat/completions -H 'Authorization: Bearer sk-mike-key' \\
       -H 'Content-Type: application/json' -d '{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"Hello!"}}]}}'
  # raise mike's limit live: edit requests_per_unit in {ratelimit}

The demo runs on a copy of the deploy files in {workdir}.
Rate-limit store: {redis}. Ctrl-C stops everything.
"""


def deploy_source() -> Path:
    """The deploy files: packaged with tollgate_demo, or the checkout's when installed editable."""
    packaged = resources.files("tollgate_demo") / "deploy"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "deploy"


def copy_deploy(workdir: Path) -> Path:
    source = deploy_source()
    for name in DEPLOY_FILES:
        shutil.copytree(source / name, workdir / name)
    return workdir


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"tollgate demo: {' '.join(proc.args[3:5])} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"tollgate demo: {url} not ready after {timeout:g}s")


def main(redis_url: str | None = None) -> int:
    busy = [f"{name} ({port})" for name, port in PORTS.items() if not port_free(port)]
    if busy:
        print(f"tollgate demo: ports in use: {', '.join(busy)}", file=sys.stderr)
        return 1
    redis_url = redis_url or os.environ.get("REDIS_URL") or "memory://"
    workdir = copy_deploy(Path(tempfile.mkdtemp(prefix="tollgate-demo-")))
    env = {
        **os.environ,
        "OPENAI_BASE_URL": "http://127.0.0.1:8000", "OPENAI_API_KEY": "mock-key",
        "ANTHROPIC_BASE_URL": "http://127.0.0.1:8000", "ANTHROPIC_API_KEY": "mock-key",
        "RATELIMIT_HOST": "127.0.0.1:8080", "TOLLGATE_KEYS_DIR": str(workdir / "gateway" / "keys"),
    }
    # -P: the working directory (the copy, with its gateway/ folder) never shadows a package.
    py = [sys.executable, "-P"]
    steps = [
        ([*py, "-m", "tollgate_demo.mock_llm", "--port", "8000", "--completion-tokens", "120"],
         "http://127.0.0.1:8000/healthz"),
        ([*py, "-m", "ratelimit_service", "--config-dir", str(workdir / "ratelimit"),
          "--redis-url", redis_url, "--port", "8080"], "http://127.0.0.1:8080/healthcheck"),
        ([*py, "-m", "gateway", "-f", str(workdir / "gateway" / "config.yaml")],
         "http://127.0.0.1:15000/healthz/ready"),
    ]
    procs: list[subprocess.Popen] = []
    try:
        for args, ready in steps:
            proc = subprocess.Popen(args, env=env, cwd=workdir)
            procs.append(proc)
            wait_ready(ready, proc)
        print(WALKTHROUGH.format(ratelimit=workdir / "ratelimit", workdir=workdir, redis=redis_url))
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(workdir, ignore_errors=True)


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tollgate demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", default=None, help="env REDIS_URL; default memory:// (embedded)")
    return main(parser.parse_args(argv).redis_url)


if __name__ == "__main__":
    sys.exit(cli())
