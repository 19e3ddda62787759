"""Starting the real rate-limit service for tests, and calling it over HTTP."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
from tests.harness.procs import Proc, free_port, python_cmd

DATA = Path(__file__).resolve().parents[1] / "ratelimit" / "data"


def start_service(config_dir: Path, redis_url: str, *extra: str) -> tuple[Proc, str]:
    port = free_port()
    args = python_cmd(
        "ratelimit_service", "--config-dir", str(config_dir), "--redis-url", redis_url, "--port", str(port),
        "--host", "127.0.0.1", *extra,
    )
    proc = Proc("ratelimit", args).start()
    base = f"http://127.0.0.1:{port}"
    proc.wait_http(f"{base}/healthcheck")
    return proc, base


def serving(config_dir: Path, redis_url: str, files: dict[str, str]) -> Iterator[str]:
    """For fixtures: writes the domain files, runs the service, yields its base URL, stops it."""
    for name, text in files.items():
        (config_dir / name).write_text(text)
    proc, base = start_service(config_dir, redis_url)
    try:
        yield base
    finally:
        proc.stop()


def descriptor(*entries: tuple[str, str], **extra) -> dict:
    return {"entries": [{"key": k, "value": v} for k, v in entries], **extra}


def call(base: str, domain: str, *descriptors: dict, path: str = "/json", **extra) -> httpx.Response:
    return httpx.post(f"{base}{path}", json={"domain": domain, "descriptors": list(descriptors), **extra}, timeout=5)


def metric(base: str, name: str, **labels: str) -> float:
    """The value of one sample on /metrics (0 if absent)."""
    text = httpx.get(f"{base}/metrics", timeout=5).text
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(name):
            sample, _, value = line.rpartition(" ")
            label_text = sample[len(name):].strip("{}")
            if sample[len(name):len(name) + 1] in ("", "{") and ",".join(sorted(label_text.split(","))) == want:
                return float(value)
    return 0.0


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def launch_service(config_dir: Path, redis_url: str, *extra: str, env: dict[str, str] | None = None,
                   host: str | None = "127.0.0.1", ready_status: int = 200) -> tuple[Proc, str]:
    """start_service with an environment (token, clock offset, Redis TLS), an optional
    --host (None: the service's own default) and the /healthcheck status that means
    started (503 for a service whose Redis is down)."""
    port = free_port()
    args = python_cmd("ratelimit_service", "--config-dir", str(config_dir), "--redis-url", redis_url,
                      "--port", str(port), *(("--host", host) if host else ()), *extra)
    proc = Proc("ratelimit", args, env=env or {}).start()
    base = f"http://127.0.0.1:{port}"
    proc.wait_http(f"{base}/healthcheck", status=ready_status)
    return proc, base


def reservation_id() -> str:
    return f"r-{uuid.uuid4().hex}"


def domain_dir(tmp_path_factory, name: str, files: dict[str, str]) -> Path:
    """A fresh config directory holding these domain files (for module fixtures)."""
    path = tmp_path_factory.mktemp(name)
    for file_name, text in files.items():
        (path / file_name).write_text(text)
    return path


def launched(config_dir: Path, redis_url: str, *extra: str, **options) -> Iterator[str]:
    """For fixtures: launch_service(...), yield its base URL, stop it."""
    proc, base = launch_service(config_dir, redis_url, *extra, **options)
    try:
        yield base
    finally:
        proc.stop()
