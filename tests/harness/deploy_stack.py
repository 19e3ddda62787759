"""docker-compose.yml run as local processes: what `docker compose up` would start.

Each Tollgate service runs its compose `command` and `environment`, with the image's
console scripts taken from pyproject.toml. What a container gets for free is mapped
explicitly, and only that:
- hostnames: every `service:port` (in commands, environment and mounted config files)
  becomes `127.0.0.1:<free port>`;
- bind mounts: each is a fresh copy of the repository directory (so tests may edit it);
- listen ports: containers all listen on the same ports; local replicas cannot, so each
  gets free ports (`--port` arguments; the gateway's `llm.port` and `config.adminAddr`);
- nginx: the upstream variable, `gateway:4000` resolved through Docker's DNS (one
  address per replica), names an upstream block of the local replicas instead (see
  render_nginx).
Readiness is the compose healthcheck itself, run with the same mapping.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tests.harness.deploy_files import (
    DEPLOY, REPO, healthcheck_command, image_file, service, service_environment, service_volumes,
)
from tests.harness.procs import Proc, free_port, redis_server_binary

NGINX_CONF = DEPLOY / "nginx" / "nginx.conf"
NGINX_UPSTREAM = re.compile(r"^(?P<indent>[ \t]*)set[ \t]+\$tollgate_gateway[ \t]+gateway:4000;[ \t]*$", re.M)
LOCAL_UPSTREAM = "tollgate_local_replicas"
NGINX_LISTEN = re.compile(r"^(?P<indent>[ \t]*)listen[ \t]+4000;", re.M)
NGINX_TEMP_DIRS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def console_scripts() -> dict[str, str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]


def missing_scripts() -> list[str]:
    """Console scripts whose module is not in the tree yet (the stack cannot run)."""
    missing = []
    for name, target in console_scripts().items():
        module = target.split(":")[0]
        if not (REPO / (module.replace(".", "/") + ".py")).exists():
            missing.append(f"{name} ({module})")
    return missing


def script_command(name: str) -> list[str]:
    """The interpreter command equivalent to the installed console script `name`."""
    module, func = console_scripts()[name].split(":")
    code = f"import sys; from {module} import {func}; sys.argv[0] = {name!r}; sys.exit({func}())"
    return [sys.executable, "-c", code]


def localize(text: str, addresses: dict[str, str]) -> str:
    """Replaces each `host:port` of `addresses` (a whole address, not a suffix of one),
    also as the default of a `${VAR:-host:port}` reference."""
    for address, local in addresses.items():
        text = re.sub(rf"(?:(?<=:-)|(?<![\w.-])){re.escape(address)}(?!\d)", local, text)
    return text


def render_nginx(workdir: Path, listen_port: int, replicas: list[str]) -> Path:
    """deploy/nginx/nginx.conf for local processes.

    Changes, and nothing else: `set $tollgate_gateway gateway:4000;` (a name Docker's
    DNS resolves to every replica) names an upstream block of the local replica
    addresses instead, so `proxy_pass http://$tollgate_gateway;` stays as it is;
    `listen 4000` becomes a loopback port; temp paths go under `workdir` so an
    unprivileged nginx can start. (The block's round-robin is stricter than the random
    pick nginx makes among a DNS answer's addresses; docs/deploy.md says what differs.)
    """
    text = NGINX_CONF.read_text()
    (match,) = list(NGINX_UPSTREAM.finditer(text))
    text = text[:match.start()] + f"{match['indent']}set $tollgate_gateway {LOCAL_UPSTREAM};" + text[match.end():]
    servers = "".join(f"        server {addr};\n" for addr in replicas)
    upstream = f"    upstream {LOCAL_UPSTREAM} {{\n{servers}    }}\n"
    text, listens = NGINX_LISTEN.subn(rf"\g<indent>listen 127.0.0.1:{listen_port};", text)
    assert listens == 1, "nginx.conf should have exactly one `listen 4000;`"
    temp = "".join(f"    {d}_temp_path {workdir / d};\n" for d in NGINX_TEMP_DIRS)
    text = text.replace("http {\n", "http {\n" + temp + upstream, 1)
    for d in NGINX_TEMP_DIRS:
        (workdir / d).mkdir(mode=0o777, exist_ok=True)
        (workdir / d).chmod(0o777)  # workers may run as `nobody` when the tests run as root
    path = workdir / "nginx.conf"
    path.write_text(text)
    return path


def nginx_command(conf: Path) -> list[str]:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    return [nginx, "-e", "stderr", "-p", str(conf.parent), "-c", str(conf),
            "-g", f"daemon off; pid {conf.parent / 'nginx.pid'};"]


@dataclass
class Local:
    """One running replica of a compose service."""

    name: str
    proc: Proc
    ports: dict[int, int]  # container port -> local port
    mounts: dict[str, Path] = field(default_factory=dict)  # container path -> local copy

    def url(self, container_port: int, path: str = "") -> str:
        return f"http://127.0.0.1:{self.ports[container_port]}{path}"


class ComposeStack:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.addresses: dict[str, str] = {}  # "ratelimit:8080" -> "127.0.0.1:41234"
        self.running: list[Local] = []

    # --- mapping ---------------------------------------------------------------

    def localize(self, text: str) -> str:
        return localize(text, self.addresses)

    def assign_ports(self, name: str) -> dict[int, int]:
        ports = {int(p): free_port() for p in service(name).get("expose", [])}
        for container_port, local in ports.items():
            self.addresses.setdefault(f"{name}:{container_port}", f"127.0.0.1:{local}")
        return ports

    def copy_mounts(self, name: str, tag: str) -> dict[str, Path]:
        """Fresh copies of a service's bind mounts, hostnames and mount paths localized."""
        mounts: dict[str, Path] = {}
        for host, target, _ in service_volumes(name):
            copy = self.workdir / tag / target.strip("/").replace("/", "_")
            if host.is_dir():
                shutil.copytree(host, copy)
            else:
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(host, copy)
            mounts[target] = copy
        for copy in mounts.values():
            for f in [copy] if copy.is_file() else [p for p in copy.rglob("*") if p.is_file()]:
                f.write_text(self.map_paths(self.localize(f.read_text()), mounts))
        return mounts

    @staticmethod
    def map_paths(text: str, mounts: dict[str, Path]) -> str:
        for target in sorted(mounts, key=len, reverse=True):
            text = text.replace(target, str(mounts[target]))
        return text

    def command(self, name: str, ports: dict[int, int], mounts: dict[str, Path]) -> list[str]:
        command = list(service(name)["command"])
        args = [self.map_paths(self.localize(a), mounts) for a in command[1:]]
        for i, arg in enumerate(args[:-1]):
            if arg == "--port":
                args[i + 1] = str(ports[int(args[i + 1])])
        return script_command(command[0]) + args

    def environment(self, name: str) -> dict[str, str]:
        return {k: self.localize(v) for k, v in service_environment(name).items()}

    def healthy(self, local: Local) -> bool:
        """Runs the service's compose healthcheck, mapped like its command."""
        command = healthcheck_command(local.name)
        if command[0] == "python":
            command = [sys.executable, str(image_file(command[1])), *command[2:]]
        for container_port, port in local.ports.items():
            command = [a.replace(f"127.0.0.1:{container_port}", f"127.0.0.1:{port}") for a in command]
        return subprocess.run(command, capture_output=True, timeout=10).returncode == 0

    def wait_healthy(self, locals_: list[Local], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        pending = list(locals_)
        while pending:
            for local in list(pending):
                if not local.proc.alive():
                    raise RuntimeError(f"{local.proc.name} exited:\n{local.proc.log()}")
                if self.healthy(local):
                    pending.remove(local)
            if pending and time.monotonic() > deadline:
                raise RuntimeError("not healthy: " + ", ".join(
                    f"{p.proc.name}:\n{p.proc.log()}" for p in pending))
            time.sleep(0.1)

    # --- services --------------------------------------------------------------

    def start_redis(self) -> Local:
        command = service("redis")["command"]
        ports = self.assign_ports("redis")
        data = self.workdir / "redis-data"
        data.mkdir()
        args = [redis_server_binary(), *command[1:], "--port", str(ports[6379]),
                "--bind", "127.0.0.1", "--dir", str(data)]
        proc = Proc("redis", args).start().wait_port(ports[6379])
        return self._track(Local("redis", proc, ports))

    def start_service(self, name: str, replica: int = 0, ports: dict[int, int] | None = None) -> Local:
        ports = ports or self.assign_ports(name)
        mounts = self.copy_mounts(name, f"{name}-{replica}")
        proc = Proc(f"{name}-{replica}", self.command(name, ports, mounts), env=self.environment(name))
        return self._track(Local(name, proc.start(), ports, mounts))

    def start_gateways(self) -> list[Local]:
        """`deploy.replicas` gateways; the first one's ports are the `gateway:*` addresses."""
        replicas = []
        for i in range(service("gateway")["deploy"]["replicas"]):
            ports = self.assign_ports("gateway") if i == 0 else {p: free_port() for p in replicas[0].ports}
            mounts = self.copy_mounts("gateway", f"gateway-{i}")
            config = mounts_file(mounts, service("gateway")["command"][-1])
            listen_on(config, ports)
            proc = Proc(f"gateway-{i}", self.command("gateway", ports, mounts), env=self.environment("gateway"))
            replicas.append(self._track(Local("gateway", proc.start(), ports, mounts)))
        return replicas

    def start_nginx(self, gateways: list[Local]) -> tuple[Local, str]:
        port = free_port()
        conf = render_nginx(self.workdir, port, [f"127.0.0.1:{g.ports[4000]}" for g in gateways])
        proc = Proc("nginx", nginx_command(conf)).start().wait_port(port)
        return self._track(Local("nginx", proc, {4000: port})), f"http://127.0.0.1:{port}"

    def _track(self, local: Local) -> Local:
        self.running.append(local)
        return local

    @contextlib.contextmanager
    def logs_on_failure(self) -> Iterator[None]:
        """Re-raises a failed assertion with every process's log tail attached."""
        try:
            yield
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.logs()}") from e

    def logs(self) -> str:
        return "\n".join(f"--- {r.proc.name}\n{r.proc.log()[-3000:]}" for r in self.running)

    def stop(self) -> None:
        for local in reversed(self.running):
            local.proc.stop()


def mounts_file(mounts: dict[str, Path], container_path: str) -> Path:
    for target in sorted(mounts, key=len, reverse=True):
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            return mounts[target] / container_path[len(target):].lstrip("/")
    raise KeyError(container_path)


def listen_on(config_path: Path, ports: dict[int, int]) -> None:
    """Moves a gateway config's listeners (`llm.port`, `config.adminAddr`) to local ports."""
    config = yaml.safe_load(config_path.read_text())
    config["llm"]["port"] = ports[config["llm"]["port"]]
    admin_port = int(config["config"]["adminAddr"].rsplit(":", 1)[1])
    config["config"]["adminAddr"] = f"127.0.0.1:{ports[admin_port]}"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
