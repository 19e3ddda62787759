"""`tollgate demo`: the whole system on one machine, from a copy of the deploy files.

It runs the same three commands as docker-compose.yml (mock upstream, rate-limit
service, one gateway) as local processes, with the rate-limit service on the embedded
`memory://` store unless REDIS_URL names a real Redis. The deploy files (deploy/gateway
and deploy/ratelimit, shipped inside the package) are copied to a fresh directory first:
editing the copy changes the live limits, and the repository's own files stay as they are.

The demo owns its children: Ctrl-C, SIGTERM or SIGHUP stops them all, and so does the
demo's own death (the kernel signals them: PR_SET_PDEATHSIG). Each child runs in its own
process group, so a terminal's Ctrl-C reaches the demo alone, which stops the children
in order: the gateway first, while the service it settles with is still up. If one
child exits, the demo says which, stops the others and exits 1.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import secrets
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
# In a container the admin port must face the network (Prometheus scrapes it); on a
# laptop it stays on loopback, as /metrics names every key's spend.
COMPOSE_ADMIN, DEMO_ADMIN = "adminAddr: 0.0.0.0:15000", "adminAddr: 127.0.0.1:15000"

WALKTHROUGH = """
Tollgate is up: LLM traffic on http://localhost:4000, metrics on http://127.0.0.1:15000/metrics

  # alice: the default budgets (1,000,000 tokens a day, $50 a month, her team's $500)
  curl -si localhost:4000/v1/chat/completions -H 'Authorization: Bearer sk-alice-abc123def456' \\
       -H 'Content-Type: application/json' -d '{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"Hello!"}}]}}'
  # what is left of them, as alice sees it with her own key
  curl -s localhost:4000/v1/budget -H 'Authorization: Bearer sk-alice-abc123def456'
  # mike: 100 tokens a day: the first answer spends it, the second is 429 and says until when
  curl -s localhost:4000/v1/chat/completions -H 'Authorization: Bearer sk-mike-key' \\
       -H 'Content-Type: application/json' -d '{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"Hello!"}}]}}'
  # raise mike's limit live: edit his line in {ratelimit}/config.yaml

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
    config = workdir / "gateway" / "config.yaml"
    config.write_text(config.read_text().replace(COMPOSE_ADMIN, DEMO_ADMIN))
    return workdir


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


class Stop(Exception):
    """SIGTERM or SIGHUP: stop as Ctrl-C does."""


def _stop(signum: int, _frame) -> None:
    raise Stop(signal.Signals(signum).name)


def _die_with_parent() -> None:
    """In each child, before exec: SIGTERM when the demo dies, even by SIGKILL."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):  # not Linux: the signal handlers still cover SIGTERM
        pass


class Child:
    """One of the demo's processes, by name."""

    def __init__(self, name: str, args: list[str], env: dict, cwd: Path) -> None:
        self.name = name
        # process_group=0: out of the terminal's foreground group (see the module's docstring).
        self.proc = subprocess.Popen(args, env=env, cwd=cwd, preexec_fn=_die_with_parent, process_group=0)

    def exited(self) -> str | None:
        """How the child ended, in words, or None while it runs."""
        code = self.proc.poll()
        if code is None:
            return None
        return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with {code}"


def wait_ready(url: str, child: Child, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (how := child.exited()) is not None:
            raise SystemExit(f"tollgate demo: {child.name} {how} while starting")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"tollgate demo: {child.name} not ready at {url} after {timeout:g}s")


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
        # A fresh token per run: the service answers only this demo's gateway.
        "TOLLGATE_RATELIMIT_TOKEN": secrets.token_urlsafe(32),
    }
    # -P: the working directory (the copy, with its gateway/ folder) never shadows a package.
    py = [sys.executable, "-P"]
    steps = [
        ("mock-llm", [*py, "-m", "tollgate_demo.mock_llm", "--port", "8000", "--completion-tokens", "120"],
         "http://127.0.0.1:8000/healthz"),
        ("ratelimit", [*py, "-m", "ratelimit_service", "--config-dir", str(workdir / "ratelimit"),
                       "--redis-url", redis_url, "--port", "8080"], "http://127.0.0.1:8080/healthcheck"),
        ("gateway", [*py, "-m", "gateway", "-f", str(workdir / "gateway" / "config.yaml")],
         "http://127.0.0.1:15000/healthz/ready"),
    ]
    children: list[Child] = []
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _stop)
    try:
        for name, args, ready in steps:
            children.append(Child(name, args, env, workdir))
            wait_ready(ready, children[-1])
        print(WALKTHROUGH.format(ratelimit=workdir / "ratelimit", workdir=workdir, redis=redis_url), flush=True)
        while True:
            for child in children:
                if (how := child.exited()) is not None:
                    print(f"tollgate demo: {child.name} {how}; stopping the others", file=sys.stderr)
                    return 1
            time.sleep(0.5)
    except (KeyboardInterrupt, Stop):
        return 0
    finally:
        stop_all(children)
        shutil.rmtree(workdir, ignore_errors=True)


def stop_all(children: list[Child]) -> None:
    """SIGTERM in reverse start order (the gateway flushes its settles first), then wait."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut this short
    for child in reversed(children):
        if child.proc.poll() is None:
            child.proc.send_signal(signal.SIGTERM)
    for child in children:
        try:
            child.proc.wait(15)
        except subprocess.TimeoutExpired:
            child.proc.kill()


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tollgate demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", default=None, help="env REDIS_URL; default memory:// (embedded)")
    return main(parser.parse_args(argv).redis_url)


if __name__ == "__main__":
    sys.exit(cli())
