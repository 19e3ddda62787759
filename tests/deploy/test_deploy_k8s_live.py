"""deploy/k8s's contents run as local processes, the way a kubelet would feed them.

The ConfigMaps and Secrets are projected into directories with the kubelet's atomic
layout (`..data` -> timestamped dir, one symlink per key); updates swap `..data`,
as `kubectl edit` plus the kubelet's sync do. The containers run their manifest
`command`/`args` and `env` (secretKeyRef resolved from the Secret, the demo overlay's
upstream patch applied); Service names map to loopback ports, and readiness is the
manifest's readinessProbe. Then: the walkthrough of agentgateway's virtual-keys example, a ConfigMap edit raising
mike's limit, and a new key added to the Secret, with no restart.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import yaml

from tests.harness.deploy_files import K8S_DEMO, container, k8s_object, load_yaml_docs, mount_path_of
from tests.harness.deploy_stack import missing_scripts, localize, script_command
from tests.harness.deploy_walkthrough import chat, run_walkthrough, wait_for_status
from tests.harness.kubelet import project
from tests.harness.procs import Proc, free_port, redis_server_binary

pytestmark = pytest.mark.skipif(
    bool(missing_scripts()), reason=f"console scripts not implemented yet: {', '.join(missing_scripts())}")

def object_files(kind: str, name: str) -> dict[str, str]:
    doc = k8s_object(kind, name)
    return dict(doc["data"] if kind == "ConfigMap" else doc["stringData"])


def container_env(deployment: dict, patch: dict | None = None) -> dict[str, str]:
    env = {}
    for item in container(deployment)["env"] + (container(patch)["env"] if patch else []):
        ref = item.get("valueFrom", {}).get("secretKeyRef")
        env[item["name"]] = object_files("Secret", ref["name"])[ref["key"]] if ref else item["value"]
    return env


class Cluster:
    """The manifests' workloads as processes; Services are `name:port` -> loopback."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.addresses: dict[str, str] = {}
        self.procs: list[Proc] = []

    def expose(self, service: str, port: int) -> int:
        local = free_port()
        self.addresses[f"{service}:{port}"] = f"127.0.0.1:{local}"
        return local

    def run(self, name: str, deployment: dict, ports: dict[int, int], env: dict[str, str] | None = None,
            mounts: dict[str, Path] | None = None) -> Proc:
        command = list(container(deployment)["command"])
        args = [localize(a, self.addresses) for a in command[1:]]
        for target, local in (mounts or {}).items():
            args = [a.replace(target, str(local)) for a in args]
        for i, arg in enumerate(args[:-1]):
            if arg == "--port":
                args[i + 1] = str(ports[int(args[i + 1])])
        env = {k: localize(v, self.addresses) for k, v in (env or {}).items()}
        proc = Proc(name, script_command(command[0]) + args, env=env).start()
        self.procs.append(proc)
        probe = container(deployment)["readinessProbe"]["httpGet"]
        port = next(p["containerPort"] for p in container(deployment)["ports"] if p["name"] == probe["port"])
        return proc.wait_http(f"http://127.0.0.1:{ports[port]}{probe['path']}")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    work = tmp_path_factory.mktemp("k8s")
    c = Cluster(work)
    try:
        redis = k8s_object("StatefulSet", "redis")
        redis_port = c.expose("redis", 6379)
        (work / "redis").mkdir()
        args = [a if a != mount_path_of(redis, "data") else str(work / "redis") for a in container(redis)["args"]]
        c.procs.append(Proc("redis", [redis_server_binary(), *args, "--port", str(redis_port),
                                      "--bind", "127.0.0.1"]).start().wait_port(redis_port))

        ratelimit = k8s_object("Deployment", "tollgate-ratelimit")
        rl_config = work / "ratelimit-config"
        project(rl_config, object_files("ConfigMap", "ratelimit-config"))
        c.run("ratelimit", ratelimit, {8080: c.expose("ratelimit", 8080)}, env=container_env(ratelimit),
              mounts={mount_path_of(ratelimit, "config"): rl_config})

        mock = k8s_object("Deployment", "tollgate-mock-llm", K8S_DEMO)
        c.run("mock-llm", mock, {8000: c.expose("mock-llm", 8000)})

        gateway = k8s_object("Deployment", "tollgate-gateway")
        llm_port, admin_port = free_port(), free_port()
        keys = work / "keys"
        project(keys, object_files("Secret", "tollgate-virtual-keys"))
        config = yaml.safe_load(localize(object_files("ConfigMap", "tollgate-gateway-config")["config.yaml"], c.addresses))
        config["llm"]["port"] = llm_port
        config["config"]["adminAddr"] = f"127.0.0.1:{admin_port}"
        config["llm"]["policies"]["apiKey"]["keysDir"] = str(keys)
        config_dir = work / "gateway-config"
        project(config_dir, {"config.yaml": yaml.safe_dump(config)})
        patch = load_yaml_docs(K8S_DEMO / "gateway-upstream.yaml")[0]
        c.run("gateway", gateway, {4000: llm_port, 15000: admin_port}, env=container_env(gateway, patch),
              mounts={mount_path_of(gateway, "config"): config_dir})
        yield c, f"http://127.0.0.1:{llm_port}", rl_config, keys
    finally:
        c.stop()


def edit_configmap(volume: Path, limit: int) -> None:
    """`kubectl edit configmap ratelimit-config` followed by the kubelet's sync."""
    files = object_files("ConfigMap", "ratelimit-config")
    files["config.yaml"] = files["config.yaml"].replace("requests_per_unit: 100}", f"requests_per_unit: {limit}}}")
    project(volume, files)


def test_seed_001_walkthrough_with_a_configmap_edit(cluster):
    _, url, rl_config, _ = cluster
    run_walkthrough(url, rl_config, edit=edit_configmap)


def test_the_budget_plane_answers_only_the_secrets_token(cluster):
    c, url, _, _ = cluster
    assert chat(url, "sk-alice-abc123def456").status_code == 200  # the gateway sends it
    settle = f"http://{c.addresses['ratelimit:8080']}/v1/settle"
    response = httpx.post(settle, json={"domain": "token-budgets", "id": "r-stranger", "hits": 0}, timeout=5)
    assert response.status_code == 401, response.text


def test_a_key_added_to_the_secret_works_without_restart(cluster):
    _, url, _, keys = cluster
    assert chat(url, "sk-carol-new-key").status_code == 401
    files = object_files("Secret", "tollgate-virtual-keys")
    files["carol"] = '{"key": "sk-carol-new-key", "metadata": {"user_id": "carol"}}'
    project(keys, files)
    response, seconds = wait_for_status(lambda: chat(url, "sk-carol-new-key"), 200, timeout=5)
    assert response.status_code == 200 and seconds <= 2.5, (response.status_code, seconds)

