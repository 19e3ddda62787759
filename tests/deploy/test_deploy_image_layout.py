"""The image's layout without Docker: the Dockerfile's build context is copied
(what .dockerignore keeps), installed with `pip install --no-deps` into a plain
directory, and the three console scripts run from there, outside the source tree,
with the Lua scripts where the Dockerfile puts them (TOLLGATE_LUA_DIR)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from deploy_files import DEPLOY, REPO, dockerfile_copies, dockerfile_env
from deploy_stack import missing_scripts
from procs import Proc, free_port

pytestmark = pytest.mark.skipif(
    bool(missing_scripts()), reason=f"console scripts not implemented yet: {', '.join(missing_scripts())}")

MIKE_OVER_BUDGET = {"domain": "token-budgets", "descriptors": [
    {"entries": [{"key": "user_id", "value": "mike"}], "hits_addend": 150}]}


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """(site dir with bin/, app dir as /app) built like the Dockerfile builds."""
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
    app = root / "app"
    lua_target = Path(dockerfile_env()["TOLLGATE_LUA_DIR"])
    shutil.copytree(context / "lua", app / lua_target.name)
    return site, app / lua_target.name, root


def installed(site: Path, script: str, *args: str, lua_dir: Path, cwd: Path) -> Proc:
    env = {"PYTHONPATH": str(site), "TOLLGATE_LUA_DIR": str(lua_dir)}
    return Proc(script, [sys.executable, str(site / "bin" / script), *args], env=env, cwd=cwd).start()


def test_installed_ratelimit_service_runs_the_lua_from_tollgate_lua_dir(image, tmp_path):
    site, lua_dir, root = image
    port = free_port()
    config = shutil.copytree(DEPLOY / "ratelimit", tmp_path / "ratelimit")
    proc = installed(site, "tollgate-ratelimit", "--config-dir", str(config), "--redis-url", "memory://",
                     "--port", str(port), lua_dir=lua_dir, cwd=root)
    try:
        proc.wait_http(f"http://127.0.0.1:{port}/healthcheck")
        reply = httpx.post(f"http://127.0.0.1:{port}/json", json=MIKE_OVER_BUDGET, timeout=5)
        assert reply.status_code == 429 and reply.json()["overallCode"] == "OVER_LIMIT", reply.text
    finally:
        proc.stop()


def test_ratelimit_service_reads_its_scripts_only_from_tollgate_lua_dir(image, tmp_path):
    site, _, root = image
    empty = tmp_path / "no-lua"
    empty.mkdir()
    port = free_port()
    proc = installed(site, "tollgate-ratelimit", "--config-dir", str(DEPLOY / "ratelimit"), "--redis-url",
                     "memory://", "--port", str(port), lua_dir=empty, cwd=root)
    try:
        proc.popen.wait(20)
    except subprocess.TimeoutExpired:
        pytest.fail("started without any Lua script: TOLLGATE_LUA_DIR is not what it reads")
    finally:
        proc.stop()
    assert proc.popen.returncode != 0 and ".lua" in proc.log(), proc.log()


def test_installed_mock_and_healthcheck_script(image):
    site, lua_dir, root = image
    port = free_port()
    proc = installed(site, "tollgate-mock-llm", "--port", str(port), lua_dir=lua_dir, cwd=root)
    try:
        proc.wait_port(port)
        check = [sys.executable, str(DEPLOY / "healthcheck.py"), f"http://127.0.0.1:{port}/healthz"]
        assert subprocess.run(check, timeout=10).returncode == 0
        missing = [sys.executable, str(DEPLOY / "healthcheck.py"), f"http://127.0.0.1:{port}/no-such-path"]
        assert subprocess.run(missing, capture_output=True, timeout=10).returncode == 1
    finally:
        proc.stop()


def test_installed_gateway_validates_the_deploy_config(image, tmp_path):
    site, lua_dir, root = image
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
    site, lua_dir, root = image
    mock_port, port, admin = free_port(), free_port(), free_port()
    mock = installed(site, "tollgate-mock-llm", "--port", str(mock_port), lua_dir=lua_dir, cwd=root)
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"llm:\n  port: {port}\n  policies:\n    apiKey:\n      keys: [{{key: sk-image}}]\n"
        f"  models:\n  - name: '*'\n    provider: openAI\n"
        f"    params: {{apiKey: k, baseUrl: 'http://127.0.0.1:{mock_port}'}}\n"
        f"config:\n  adminAddr: 127.0.0.1:{admin}\n")
    gateway = installed(site, "tollgate", "-f", str(config), lua_dir=lua_dir, cwd=root)
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
