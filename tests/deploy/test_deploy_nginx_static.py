"""deploy/nginx/nginx.conf: parsed by the real nginx (`nginx -t`) after the one
documented rendering step for local processes (see deploy_stack.render_nginx)."""

from __future__ import annotations

import re
import subprocess

from tests.harness.deploy_stack import NGINX_CONF, nginx_command, render_nginx


def test_load_balancer_uses_docker_dns_with_a_short_ttl_over_every_replica():
    text = NGINX_CONF.read_text()
    assert re.search(r"^\s*resolver 127\.0\.0\.11 valid=\d+s", text, re.M)
    upstream = re.search(r"upstream tollgate_gateway \{(.*?)\}", text, re.S)[1]
    assert re.search(r"^\s*zone ", upstream, re.M), "a shared zone is required for `resolve`"
    assert re.search(r"^\s*server gateway:4000 resolve\b", upstream, re.M)
    assert "proxy_pass http://tollgate_gateway;" in text


def test_streaming_is_not_buffered():
    text = NGINX_CONF.read_text()
    for directive in ("proxy_buffering off;", "proxy_request_buffering off;", "proxy_http_version 1.1;"):
        assert directive in text


def test_rendered_config_passes_nginx_t(tmp_path):
    replicas = ["127.0.0.1:41001", "127.0.0.1:41002", "127.0.0.1:41003"]
    conf = render_nginx(tmp_path, 41000, replicas)
    text = conf.read_text()
    assert [m for m in re.findall(r"server (127\.0\.0\.1:\d+)", text)] == replicas
    upstream = re.search(r"upstream tollgate_gateway \{(.*?)\}", text, re.S)[1]
    assert "resolve" not in upstream and "listen 127.0.0.1:41000;" in text
    command = nginx_command(conf)
    command[command.index("-g") + 1] = f"pid {tmp_path / 'nginx.pid'};"
    result = subprocess.run([*command, "-t"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_nginx_t_rejects_a_broken_render(tmp_path):
    conf = render_nginx(tmp_path, 41000, ["127.0.0.1:41001"])
    conf.write_text(conf.read_text().replace("proxy_buffering off;", "proxy_buffering maybe;"))
    command = nginx_command(conf)
    command[command.index("-g") + 1] = f"pid {tmp_path / 'nginx.pid'};"
    result = subprocess.run([*command, "-t"], capture_output=True, text=True, timeout=30)
    assert result.returncode != 0 and "proxy_buffering" in result.stderr
