"""docker-compose.yml run for real: a Docker engine, Compose v2 or v1, our image, and a
stack that is torn down, volumes included, whatever happens.

No Docker engine yet: ../shared/containers/setup.sh (next to the repository; or the
script named by $TOLLGATE_CONTAINERS_SETUP) installs and starts one, and builds local
stand-ins for the registry images our files name. Neither there: the caller skips.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.harness.deploy_files import COMPOSE, DEPLOY, REPO, compose, dockerfile_instructions

SETUP_OVERRIDE = "TOLLGATE_CONTAINERS_SETUP"
# Host ports: 0 lets Docker pick free ones, so the test never collides with whatever
# else listens on 4000/9090; `compose port` tells which it picked.
HOST_PORT_VARIABLES = ("TOLLGATE_HOST_PORT", "PROMETHEUS_HOST_PORT", "GRAFANA_HOST_PORT")
Say = Callable[[str], None]


class DockerError(RuntimeError):
    pass


def run(args: list[str], timeout: float = 120, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    try:
        result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as e:
        raise DockerError(f"{' '.join(args)}: no answer in {timeout:.0f} s\n{e.stdout or ''}{e.stderr or ''}") from e
    if check and result.returncode != 0:
        raise DockerError(f"{' '.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}")
    return result


def stream(args: list[str], say: Say, shown: Callable[[str], bool]) -> tuple[int, str]:
    """Runs a long command, passing the lines `shown` selects to `say` as they come
    (a first-time build takes minutes: the CI log shows where it is)."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = []
    for line in proc.stdout:
        output.append(line)
        if shown(line):
            say("  " + line.rstrip()[:110])
    return proc.wait(), "".join(output)


def docker(*args: str, timeout: float = 120, check: bool = True) -> str:
    return run(["docker", *args], timeout=timeout, check=check).stdout.strip()


# --- the engine ------------------------------------------------------------------

def setup_script() -> Path | None:
    """../shared/containers/setup.sh beside the checkout (worktrees and CI clones alike)."""
    override = os.environ.get(SETUP_OVERRIDE)
    candidates = [Path(override)] if override else [REPO.parent / "shared" / "containers" / "setup.sh"]
    return next((p.resolve() for p in candidates if p.is_file()), None)


def engine_up() -> bool:
    return shutil.which("docker") is not None and run(["docker", "info"], timeout=30, check=False).returncode == 0


def compose_command() -> list[str] | None:
    """Compose v2 (`docker compose`) if installed, else v1 (`docker-compose`, Debian's
    1.29), whose --compatibility flag honours `deploy.replicas`."""
    if shutil.which("docker") and run(["docker", "compose", "version"], timeout=30, check=False).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose", "--compatibility"]
    return None


def base_images() -> set[str]:
    """Images our files pull: the Dockerfile's FROM and the compose services' images
    (not the one we build, nor Grafana, which has no stand-in and is left out)."""
    images = {args.split()[0] for keyword, args in dockerfile_instructions() if keyword == "FROM"}
    built = {s["image"] for s in compose()["services"].values() if "build" in s}
    return images | {s["image"] for name, s in compose()["services"].items() if name != "grafana"} - built


def missing_images() -> list[str]:
    return sorted(i for i in base_images() if run(["docker", "image", "inspect", i], check=False).returncode)


def ensure_engine(say: Say) -> str | None:
    """Starts what is missing with setup.sh; returns why the compose test cannot run, or None."""
    ready = engine_up() and compose_command() is not None
    if ready and not missing_images():
        return None
    script = setup_script()
    if script is None:
        if ready:
            return None  # a Docker with a registry behind it pulls the images itself
        return ("no Docker engine (`docker info` fails or docker-compose is missing) and no "
                f"../shared/containers/setup.sh (or ${SETUP_OVERRIDE}) to start one: the compose test needs Docker")
    say(f"running {script} (installs/starts Docker, builds the stand-in images)")
    started = time.monotonic()
    code, output = stream(["bash", str(script), str(REPO)], say, lambda line: line.startswith("containers:"))
    if code != 0 or not engine_up() or compose_command() is None:
        raise DockerError(f"{script} failed (exit {code}):\n{output}")
    say(f"setup.sh done in {time.monotonic() - started:.1f} s; missing images: {missing_images() or 'none'}")
    return None


# --- the image -------------------------------------------------------------------

@dataclass
class Image:
    tag: str
    build_seconds: float
    size_bytes: int


def build_image(tag: str, say: Say) -> Image:
    previous = docker("image", "inspect", "--format", "{{.Id}}", tag, check=False)
    started = time.monotonic()
    # "Step n/m" from the classic builder, "#n [stage k/m]" from BuildKit's plain progress.
    steps = re.compile(r"Step \d+/\d+ :|#\d+ \[")
    code, output = stream(["docker", "build", "-t", tag, str(REPO)], say, steps.match)
    if code != 0:
        raise DockerError(f"docker build failed (exit {code}):\n{output[-6000:]}")
    seconds = time.monotonic() - started
    current = docker("image", "inspect", "--format", "{{.Id}}", tag)
    if previous and previous != current:
        docker("image", "rm", previous, check=False)  # the replaced build, unless a container uses it
    return Image(tag, seconds, int(docker("image", "inspect", "--format", "{{.Size}}", tag)))


def image_config(tag: str) -> dict:
    return json.loads(docker("image", "inspect", "--format", "{{json .Config}}", tag))


# --- containers ------------------------------------------------------------------

def inspect(container: str) -> dict:
    return json.loads(docker("inspect", container))[0]


def health(container: str) -> str:
    state = inspect(container)["State"]
    return state.get("Health", {}).get("Status", state["Status"])


def container_ip(container: str) -> str:
    (network,) = inspect(container)["NetworkSettings"]["Networks"].values()
    return network["IPAddress"]


def exec_python(container: str, code: str, timeout: float = 30) -> str:
    return docker("exec", container, "python", "-c", code, timeout=timeout)


# TCP sockets in LISTEN state (0A) in the container's network namespace, except
# Docker's embedded DNS, which listens on 127.0.0.11 (0B00007F) in every container on
# a user-defined network.
LISTENING_PORTS = """
ports = set()
for table in ("/proc/net/tcp", "/proc/net/tcp6"):
    try:
        rows = [row.split() for row in open(table).read().splitlines()[1:]]
    except OSError:
        continue
    ports |= {int(r[1].rsplit(":", 1)[1], 16) for r in rows if r[3] == "0A" and not r[1].startswith("0B00007F:")}
print(*sorted(ports))
"""

# Creating a file in / fails with EROFS (30) on a read-only root, whoever asks, before
# any permission check; a writable root would give EACCES (13) to a non-root user.
ROOT_PROBE = """
import errno, os
try:
    open("/.tollgate-write-probe", "w")
    verdict = "writable"
except OSError as e:
    verdict = errno.errorcode.get(e.errno, str(e.errno))
print(os.getuid(), os.getgid(), verdict)
"""

METRICS = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:15000/metrics').read().decode())"


def listening_ports(container: str) -> set[int]:
    return {int(p) for p in exec_python(container, LISTENING_PORTS).split()}


def requests_with_status(container: str, status: int) -> float:
    """tollgate_requests_total{status=...} summed over reasons, from the replica's own /metrics."""
    total = 0.0
    for line in exec_python(container, METRICS).splitlines():
        if line.startswith("tollgate_requests_total{") and f'status="{status}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_until(check: Callable[[], object], timeout: float, what: str, interval: float = 0.5) -> object:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise DockerError(f"{what}: not within {timeout:.0f} s")
        time.sleep(interval)


# --- the stack -------------------------------------------------------------------

@dataclass
class ComposeProject:
    """A copy of docker-compose.yml and deploy/ in `workdir`, run under a unique project
    name. The copy's bind mounts are the copied deploy/ files, so a test edits those,
    never the repository's. Compose v1 rejects the top-level `name:`; it gets a copy
    without that line (the project name is given with -p either way)."""

    workdir: Path
    command: list[str]
    name: str = field(default_factory=lambda: f"tollgate-test-{os.getpid()}-{secrets.token_hex(3)}")
    down_done: bool = False

    def __post_init__(self) -> None:
        text = COMPOSE.read_text()
        if self.command[0] == "docker-compose":
            text, count = re.subn(r"^name:[^\n]*\n", "", text, flags=re.M)
            assert count == 1, "docker-compose.yml should have one top-level `name:`"
        (self.workdir / "docker-compose.yml").write_text(text)
        shutil.copytree(DEPLOY, self.workdir / "deploy")
        for path in [self.workdir, *self.workdir.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)  # readable by the containers' users
        atexit.register(self.down)  # a run that dies between setup and teardown

    @property
    def version(self) -> str:
        return (run([*self.command, "version", "--short"], check=False).stdout.strip().splitlines() or ["?"])[0]

    def environment(self) -> dict[str, str]:
        """The caller's environment minus what would change the stack: variables the
        compose file reads (a real OPENAI_API_KEY must not reach the test) and COMPOSE_*."""
        read = set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", COMPOSE.read_text()))
        env = {k: v for k, v in os.environ.items() if k not in read and not k.startswith("COMPOSE_")}
        return {**env, **{name: "0" for name in HOST_PORT_VARIABLES}}

    def __call__(self, *args: str, timeout: float = 300) -> str:
        argv = [*self.command, "-p", self.name, "-f", str(self.workdir / "docker-compose.yml"), *args]
        return run(argv, timeout=timeout, env=self.environment()).stdout.strip()

    def containers(self, service: str) -> list[str]:
        return sorted(self("ps", "-q", service).split())

    def port(self, service: str, port: int) -> str:
        return self("port", service, str(port)).splitlines()[-1]

    def logs(self) -> str:
        try:
            return self("logs", "--no-color", "--tail", "40", timeout=60)[-12000:]
        except DockerError as e:
            return str(e)

    def leftovers(self) -> list[str]:
        label = f"label=com.docker.compose.project={self.name}"
        found = []
        for kind in ("container", "volume", "network"):
            found += [f"{kind} {x}" for x in docker(kind, "ls", "-q", *(["-a"] if kind == "container" else []),
                                                  "--filter", label, check=False).split()]
        return found

    def down(self) -> list[str]:
        """`down -v`; then removes by label whatever it left. Returns what went wrong."""
        if self.down_done:
            return []
        self.down_done = True
        problems = []
        try:
            self("down", "-v", "--remove-orphans", "-t", "5", timeout=180)
        except DockerError as e:
            problems.append(str(e)[-2000:])
        left = self.leftovers()
        for item in left:  # containers first: volumes and networks in use cannot go
            kind, ident = item.split(" ", 1)
            docker(kind, "rm", *(["-f"] if kind != "network" else []), ident, check=False)
        return problems + left


class Steps:
    """Prints each step as it happens, past pytest's output capture, so the CI log shows
    the compose test's progress and figures whether it passes or fails."""

    def __init__(self, config) -> None:
        self.capture = config.pluginmanager.getplugin("capturemanager")
        self.started = time.monotonic()
        self.first = True

    def say(self, message: str) -> None:
        line = f"{chr(10) if self.first else ''}compose [{time.monotonic() - self.started:5.1f}s] {message}"
        self.first = False
        if self.capture is None:
            print(line, flush=True)
            return
        with self.capture.global_and_fixture_disabled():
            print(line, flush=True)
