"""The image's layout without Docker: the Dockerfile's build context is copied
(what .dockerignore keeps), installed with `pip install --no-deps` into a plain
directory, and the three console scripts run from there, outside the source tree:
the Lua scripts and the demo's files travel inside the packages."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.harness.deploy_files import DEPLOY, REPO, dockerfile_copies
from tests.harness.deploy_stack import missing_scripts
from tests.harness.procs import Proc, free_port
from tollgate_demo.demo import COMPOSE_ADMIN, DEMO_ADMIN

pytestmark = pytest.mark.skipif(
    bool(missing_scripts()), reason=f"console scripts not implemented yet: {', '.join(missing_scripts())}")

MIKE_OVER_BUDGET = {"domain": "token-budgets", "descriptors": [
    {"entries": [{"key": "user_id", "value": "mike"}], "hits_addend": 150}]}


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """(site dir with bin/, a working directory) built like the Dockerfile builds."""
    root = tmp_path_factory.mktemp("image")
    context = root / "context"
    for sources, _ in dockerfile_copies():
        for source in sources:
            src, dst = REPO / source, context / source
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(src, dst)
    site = root / "site"
    # As the Dockerfile: `pip install --no-deps .` (the build backend comes from PyPI).
    built = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                            "--disable-pip-version-check", "--target", str(site), str(context)],
                           capture_output=True, text=True, timeout=180, cwd=root)
    if built.returncode != 0 and re.search(r"NewConnectionError|No matching distribution|Could not find a version", built.stderr):
        pytest.skip(f"the build backend could not be fetched: {built.stderr[-300:]}")
    assert built.returncode == 0, built.stderr
    shutil.rmtree(context)  # as the Dockerfile: the sources are not kept
    return site, root


def installed(site: Path, script: str, *args: str, cwd: Path) -> Proc:
    return Proc(script, [sys.executable, str(site / "bin" / script), *args], env={"PYTHONPATH": str(site)},
                cwd=cwd).start()


def test_the_packages_carry_the_lua_scripts_and_the_demo_files(image):
    site, _ = image
    assert sorted(p.name for p in (site / "ratelimit_service" / "lua").glob("*.lua")) == sorted(
        p.name for p in (REPO / "lua").glob("*.lua"))
    demo = site / "tollgate_demo" / "deploy"
    assert (demo / "gateway" / "config.yaml").is_file() and (demo / "ratelimit" / "config.yaml").is_file()
    assert {p.name for p in (demo / "gateway" / "keys").iterdir()} == {
        p.name for p in (DEPLOY / "gateway" / "keys").iterdir()}


def test_installed_ratelimit_service_runs_the_lua_from_its_package(image, tmp_path):
    site, root = image
    port = free_port()
    config = shutil.copytree(DEPLOY / "ratelimit", tmp_path / "ratelimit")
    proc = installed(site, "tollgate-ratelimit", "--config-dir", str(config), "--redis-url", "memory://",
                     "--port", str(port), cwd=root)
    try:
        proc.wait_http(f"http://127.0.0.1:{port}/healthcheck")
        reply = httpx.post(f"http://127.0.0.1:{port}/json", json=MIKE_OVER_BUDGET, timeout=5)
        assert reply.status_code == 429 and reply.json()["overallCode"] == "OVER_LIMIT", reply.text
    finally:
        proc.stop()


def test_installed_mock_and_healthcheck_script(image):
    site, root = image
    port = free_port()
    proc = installed(site, "tollgate-mock-llm", "--port", str(port), cwd=root)
    try:
        proc.wait_port(port)
        check = [sys.executable, str(DEPLOY / "healthcheck.py"), f"http://127.0.0.1:{port}/healthz"]
        assert subprocess.run(check, timeout=10).returncode == 0
        missing = [sys.executable, str(DEPLOY / "healthcheck.py"), f"http://127.0.0.1:{port}/no-such-path"]
        assert subprocess.run(missing, capture_output=True, timeout=10).returncode == 1
    finally:
        proc.stop()


def test_installed_gateway_validates_the_deploy_config(image, tmp_path):
    site, root = image
    config = tmp_path / "config.yaml"
    keys = shutil.copytree(DEPLOY / "gateway" / "keys", tmp_path / "keys")
    config.write_text((DEPLOY / "gateway" / "config.yaml").read_text().replace("/etc/tollgate/keys", str(keys)))
    env = {"PYTHONPATH": str(site), "OPENAI_BASE_URL": "http://mock-llm:8000", "ANTHROPIC_BASE_URL": "http://mock-llm:8000",
           "OPENAI_API_KEY": "k", "ANTHROPIC_API_KEY": "k"}
    result = subprocess.run([sys.executable, str(site / "bin" / "tollgate"), "validate", "-f", str(config)],
                            capture_output=True, text=True, timeout=60, cwd=root, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    broken = config.read_text().replace("mode: strict", "mode: strictest")
    config.write_text(broken)
    result = subprocess.run([sys.executable, str(site / "bin" / "tollgate"), "validate", "-f", str(config)],
                            capture_output=True, text=True, timeout=60, cwd=root, env=env)
    assert result.returncode != 0 and f"{config}:" in result.stdout + result.stderr


def test_installed_gateway_serves_through_every_package(image, tmp_path):
    # The full request path imports every gateway subpackage: one left out of the
    # wheel (a folder without __init__.py) fails here, not in production.
    site, root = image
    mock_port, port, admin = free_port(), free_port(), free_port()
    mock = installed(site, "tollgate-mock-llm", "--port", str(mock_port), cwd=root)
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"llm:\n  port: {port}\n  policies:\n    apiKey:\n      keys: [{{key: sk-image}}]\n"
        f"  models:\n  - name: '*'\n    provider: openAI\n"
        f"    params: {{apiKey: k, baseUrl: 'http://127.0.0.1:{mock_port}'}}\n"
        f"config:\n  adminAddr: 127.0.0.1:{admin}\n")
    gateway = installed(site, "tollgate", "-f", str(config), cwd=root)
    try:
        mock.wait_port(mock_port)
        gateway.wait_http(f"http://127.0.0.1:{admin}/healthz/ready")
        reply = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=10,
                           headers={"Authorization": "Bearer sk-image"},
                           json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
        assert reply.status_code == 200, reply.text
    finally:
        gateway.stop()
        mock.stop()


def test_installed_demo_runs_from_the_files_its_package_carries(image, tmp_path):
    site, root = image
    code = "from tollgate_demo.demo import copy_deploy, deploy_source; import sys; " \
           "print(deploy_source()); copy_deploy(__import__('pathlib').Path(sys.argv[1]))"
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "demo")], capture_output=True, text=True,
                            timeout=60, cwd=root, env={"PYTHONPATH": str(site)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(site / "tollgate_demo" / "deploy")
    # The copy is the packaged file, with one change: the admin listener on loopback.
    shipped = (DEPLOY / "gateway" / "config.yaml").read_text()
    assert shipped.count(COMPOSE_ADMIN) == 1
    assert (tmp_path / "demo" / "gateway" / "config.yaml").read_text() == shipped.replace(COMPOSE_ADMIN, DEMO_ADMIN)
