"""A whole Tollgate topology from real processes: redis-server, tollgate-ratelimit,
gateway replicas and the mock upstream, on free loopback ports."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

from tests.harness.kubelet import project
from tests.harness.procs import GatewayProc, Proc, free_port, python_cmd, start_gateway, start_mock_llm, start_redis

UPSTREAM_KEY = "sk-ant-upstream-e2e-secret"


def write_keys_dir(root: Path, keys: dict[str, dict]) -> Path:
    """A keysDir laid out like a mounted Kubernetes Secret (`..data` symlink swap)."""
    project(root, {name: json.dumps(doc) for name, doc in keys.items()})
    return root


@dataclass
class Stack:
    workdir: Path
    procs: list[Proc] = field(default_factory=list)
    gateways: list[GatewayProc] = field(default_factory=list)
    redis: Proc | None = None
    redis_url: str = ""
    redis_port: int = 0
    ratelimit: Proc | None = None
    ratelimit_host: str = ""
    mock_url: str = ""
    config_dir: Path | None = None

    def start_redis(self) -> None:
        self.redis_port = self.redis_port or free_port()
        self.redis, self.redis_url = start_redis(self.redis_port, workdir=self.workdir)
        self.procs.append(self.redis)

    def start_mock(self, *args: str) -> str:
        proc, self.mock_url = start_mock_llm(None, *args)
        self.procs.append(proc)
        return self.mock_url

    def start_ratelimit(self, domain_yaml: str, name: str = "config.yaml", env: dict[str, str] | None = None) -> None:
        if self.config_dir is None:
            self.config_dir = self.workdir / "ratelimit"
            self.config_dir.mkdir()
            (self.config_dir / name).write_text(domain_yaml)
        port = int(self.ratelimit_host.rsplit(":", 1)[1]) if self.ratelimit_host else free_port()
        self.ratelimit = Proc("ratelimit", python_cmd(
            "ratelimit_service", "--config-dir", str(self.config_dir),
            "--redis-url", self.redis_url, "--port", str(port)), env=env or {}).start()
        self.ratelimit.wait_http(f"http://127.0.0.1:{port}/healthcheck")
        self.ratelimit_host = f"127.0.0.1:{port}"
        self.procs.append(self.ratelimit)

    def start_gateway(self, config: dict, env: dict[str, str] | None = None) -> GatewayProc:
        port, admin_port = free_port(), free_port()
        config = json.loads(json.dumps(config).replace("@PORT@", str(port)))
        config.setdefault("config", {})["adminAddr"] = f"127.0.0.1:{admin_port}"
        path = self.workdir / f"gateway-{port}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        gw = start_gateway(path, port, admin_port, env={"ANTHROPIC_API_KEY": UPSTREAM_KEY, **(env or {})},
                           name=f"gateway-{len(self.gateways)}")
        self.gateways.append(gw)
        return gw

    def mock_requests(self) -> list[dict]:
        return httpx.get(f"{self.mock_url}/_mock/requests").json()["requests"]

    def mock_billed(self, mock_url: str | None = None) -> dict[str, int]:
        """What the mock upstream billed: prompt and completion tokens, requests."""
        return httpx.get(f"{mock_url or self.mock_url}/_mock/usage").json()

    def budget(self, domain: str, *entries: tuple[str, str]) -> dict:
        """The service's read-only view of one descriptor's budget (limit, spent, remaining)."""
        r = httpx.post(f"http://{self.ratelimit_host}/v1/budget", json={
            "domain": domain, "descriptors": [{"entries": [{"key": k, "value": v} for k, v in entries]}]})
        return r.json()["statuses"][0]

    def stop(self) -> None:
        for gw in self.gateways:
            gw.stop()
        for p in reversed(self.procs):
            p.stop()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True
