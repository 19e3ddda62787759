"""deploy/nginx/nginx.conf: parsed by the real nginx (`nginx -t`, Debian's 1.22 here),
as committed and after the one documented rendering step for local processes (see
deploy_stack.render_nginx). tests/deploy/test_deploy_compose_docker.py runs it for real."""

from __future__ import annotations

import re
import subprocess

from tests.harness.deploy_stack import LOCAL_UPSTREAM, NGINX_CONF, nginx_command, render_nginx


def test_load_balancer_resolves_every_replica_through_docker_dns_per_request():
    text = NGINX_CONF.read_text()
    assert re.search(r"^\s*resolver 127\.0\.0\.11 valid=\d+s", text, re.M)
    # A variable in proxy_pass is resolved at request time (re-resolution on every
    # nginx version); `server ... resolve` would need nginx >= 1.27.3.
    assert re.search(r"^\s*set \$tollgate_gateway gateway:4000;", text, re.M)
    assert "proxy_pass http://$tollgate_gateway;" in text
    directives = re.sub(r"#.*", "", text)
    assert not re.search(r"\bupstream\s+\w+\s*\{", directives) and not re.search(r"\bresolve\b", directives)


def nginx_t(conf) -> subprocess.CompletedProcess:
    command = nginx_command(conf)
    command[command.index("-g") + 1] = f"pid {conf.parent / 'nginx.pid'};"
    return subprocess.run([*command, "-t"], capture_output=True, text=True, timeout=30)


def test_committed_config_passes_nginx_t_on_the_local_nginx(tmp_path):
    """The file as compose mounts it, on Debian's nginx 1.22 (the compose image pins 1.28)."""
    conf = tmp_path / "nginx.conf"
    conf.write_text(NGINX_CONF.read_text())
    result = nginx_t(conf)
    assert result.returncode == 0, result.stderr


def test_streaming_is_not_buffered():
    text = NGINX_CONF.read_text()
    for directive in ("proxy_buffering off;", "proxy_request_buffering off;", "proxy_http_version 1.1;"):
        assert directive in text


def test_rendered_config_passes_nginx_t(tmp_path):
    replicas = ["127.0.0.1:41001", "127.0.0.1:41002", "127.0.0.1:41003"]
    conf = render_nginx(tmp_path, 41000, replicas)
    text = conf.read_text()
    upstream = re.search(rf"upstream {LOCAL_UPSTREAM} \{{(.*?)\}}", text, re.S)[1]
    assert re.findall(r"server (127\.0\.0\.1:\d+);", upstream) == replicas
    assert f"set $tollgate_gateway {LOCAL_UPSTREAM};" in text and "gateway:4000" not in re.sub(r"#.*", "", text)
    assert "proxy_pass http://$tollgate_gateway;" in text and "listen 127.0.0.1:41000;" in text
    result = nginx_t(conf)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_nginx_t_rejects_a_broken_render(tmp_path):
    conf = render_nginx(tmp_path, 41000, ["127.0.0.1:41001"])
    conf.write_text(conf.read_text().replace("proxy_buffering off;", "proxy_buffering maybe;"))
    result = nginx_t(conf)
    assert result.returncode != 0 and "proxy_buffering" in result.stderr
