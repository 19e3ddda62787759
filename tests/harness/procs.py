"""Real processes for tests: free ports, a redis-server, and our own commands.

Every suite starts the real gateway, rate-limit service and mock upstream through
these helpers, so a process that fails to start shows its own log in the failure.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
_STARTED: list["Proc"] = []
# Logs and Redis working directories of this run: one folder, removed at exit (a failing
# test has already copied the log it needs into its message).
_RUN_DIR = Path(tempfile.mkdtemp(prefix="tollgate-test-run-"))


@atexit.register
def _reap() -> None:
    """A test run that dies (timeout, Ctrl-C) must not leave servers or files behind."""
    for proc in _STARTED:
        if proc.alive():
            proc.signal(signal.SIGKILL)
    for proc in _STARTED:
        if proc.popen is not None:
            try:
                proc.popen.wait(5)
            except subprocess.TimeoutExpired:
                pass
    shutil.rmtree(_RUN_DIR, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Proc:
    """A child process whose combined output goes to a log file."""

    name: str
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    popen: subprocess.Popen | None = None
    log_path: Path | None = None

    def start(self) -> "Proc":
        fd, path = tempfile.mkstemp(prefix=f"{self.name}-", suffix=".log", dir=_RUN_DIR)
        self.log_path = Path(path)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self.popen = subprocess.Popen(
            self.args, stdout=fd, stderr=subprocess.STDOUT, env=env,
            cwd=self.cwd or REPO, start_new_session=True,
        )
        os.close(fd)
        _STARTED.append(self)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def wait_http(self, url: str, timeout: float = 20.0, status: int = 200) -> "Proc":
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited ({self.popen.returncode}):\n{self.log()}")
            try:
                r = httpx.get(url, timeout=1.0)
                if r.status_code == status:
                    return self
                last = f"HTTP {r.status_code}"
            except httpx.HTTPError as e:
                last = repr(e)
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready at {url} ({last}):\n{self.log()}")

    def wait_port(self, port: int, timeout: float = 20.0) -> "Proc":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited ({self.popen.returncode}):\n{self.log()}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return self
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not listening on {port}:\n{self.log()}")

    def signal(self, sig: int) -> None:
        if self.alive():
            os.killpg(self.popen.pid, sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.popen is None:
            return None
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.popen.wait(5)
        return self.popen.returncode


def python_cmd(module: str, *args: str) -> list[str]:
    """`python -m module args`, with the interpreter running the tests."""
    return [sys.executable, "-m", module, *args]


def redis_server_binary() -> str:
    path = shutil.which("redis-server")
    if not path:
        raise RuntimeError("redis-server is not installed (apt-get install -y redis-server)")
    return path


def start_redis(port: int | None = None, appendonly: bool = False, workdir: Path | None = None) -> tuple[Proc, str]:
    """A real redis-server on a free loopback port; returns (proc, url)."""
    port = port or free_port()
    workdir = workdir or Path(tempfile.mkdtemp(prefix="redis-", dir=_RUN_DIR))
    args = [
        redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1",
        "--save", "", "--appendonly", "yes" if appendonly else "no",
        "--dir", str(workdir), "--protected-mode", "no",
    ]
    proc = Proc("redis", args).start().wait_port(port)
    return proc, f"redis://127.0.0.1:{port}/0"


def start_mock_llm(port: int | None = None, *extra: str) -> tuple[Proc, str]:
    """The mock upstream; returns (proc, base_url)."""
    port = port or free_port()
    proc = Proc("mock-llm", python_cmd("tollgate_demo.mock_llm", "--port", str(port), *extra)).start()
    proc.wait_http(f"http://127.0.0.1:{port}/healthz")
    return proc, f"http://127.0.0.1:{port}"


@dataclass
class GatewayProc:
    proc: Proc
    url: str  # LLM listener, e.g. http://127.0.0.1:4000
    admin: str  # admin listener
    config_path: Path

    def stop(self) -> int | None:
        return self.proc.stop()


def start_gateway(config_path: Path, port: int, admin_port: int, env: dict[str, str] | None = None,
                  name: str = "gateway") -> GatewayProc:
    """`python -m gateway -f CONFIG`; the config must use `port` and `admin_port`."""
    proc = Proc(name, python_cmd("gateway", "-f", str(config_path)), env=env or {}).start()
    admin = f"http://127.0.0.1:{admin_port}"
    proc.wait_http(f"{admin}/healthz/ready")
    return GatewayProc(proc, f"http://127.0.0.1:{port}", admin, config_path)
