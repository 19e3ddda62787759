"""Redis over TLS with a client certificate and an ACL user: a real redis-server, certificates made by openssl."""

import shutil
import subprocess
import uuid
from pathlib import Path

import httpx
import pytest
from tests.harness.procs import Proc, free_port, redis_server_binary
from tests.harness.ratelimit import descriptor, domain_dir, launch_service, launched

from ratelimit_service.redis_client import redis_options

CONFIG = "domain: d\ndescriptors:\n  - key: user_id\n    rate_limit: {unit: hour, requests_per_unit: 10}\n"
USER, PASSWORD = "tollgate", "pa:ss-w0rd"  # a colon in the password: REDIS_AUTH splits at the first one


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def certificates(folder: Path) -> None:
    """A CA, a server certificate for 127.0.0.1 and localhost, and a client certificate, all signed by the CA."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=tollgate test CA",
            "-keyout", "ca.key", "-out", "ca.crt", cwd=folder)
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, extra in (("server", ["-extfile", "san.ext"]), ("client", [])):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
                "-out", f"{name}.csr", cwd=folder)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "2", "-out", f"{name}.crt", *extra, cwd=folder)


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory):
    """redis-server on a TLS port only, client certificates required, the default user off."""
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed")
    folder = tmp_path_factory.mktemp("redis-tls")
    certificates(folder)
    port = free_port()
    args = [
        redis_server_binary(), "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
        "--tls-cert-file", "server.crt", "--tls-key-file", "server.key", "--tls-ca-cert-file", "ca.crt",
        "--tls-auth-clients", "yes", "--save", "", "--appendonly", "no", "--dir", str(folder),
        "--user", "default", "off", "--user", USER, "on", f">{PASSWORD}", "~*", "&*", "+@all",
    ]
    proc = Proc("redis-tls", args, cwd=folder).start().wait_port(port)
    yield folder, port
    proc.stop()


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory):
    return domain_dir(tmp_path_factory, "rl-tls", {"d.yaml": CONFIG})


def decide(base: str) -> httpx.Response:
    d = descriptor(("user_id", uuid.uuid4().hex), hits_addend=3)
    return httpx.post(f"{base}/json", json={"domain": "d", "descriptors": [d]}, timeout=5)


def test_url_options_with_client_certificate_and_acl_user(tls_redis, config_dir):
    folder, port = tls_redis
    url = (f"rediss://{USER}:pa%3Ass-w0rd@127.0.0.1:{port}/0?ssl_ca_certs={folder}/ca.crt"
           f"&ssl_certfile={folder}/client.crt&ssl_keyfile={folder}/client.key")
    proc, base = launch_service(config_dir, url)
    try:
        assert httpx.get(f"{base}/healthcheck", timeout=5).text == "OK"
        r = decide(base)
        assert r.status_code == 200 and r.json()["statuses"][0]["limitRemaining"] == 7
        assert "pa%3Ass" not in proc.log() and PASSWORD not in proc.log()
    finally:
        proc.stop()


def test_envoy_environment_names(tls_redis, config_dir):
    folder, port = tls_redis
    env = {
        "REDIS_TLS_CACERT": str(folder / "ca.crt"), "REDIS_TLS_CLIENT_CERT": str(folder / "client.crt"),
        "REDIS_TLS_CLIENT_KEY": str(folder / "client.key"), "REDIS_AUTH": f"{USER}:{PASSWORD}",
        "REDIS_TLS_SKIP_HOSTNAME_VERIFICATION": "true",
    }
    # A name the certificate does not carry: fine only because hostname verification is skipped.
    for base in launched(config_dir, f"redis://127.0.0.1:{port}/0", env={**env, "REDIS_TLS": "true"}):
        assert decide(base).status_code == 200


@pytest.mark.parametrize("change, reason", [
    ({"REDIS_TLS_CLIENT_CERT": "", "REDIS_TLS_CLIENT_KEY": ""}, "certificate required"),  # TLS 1.3: at first read
    ({"REDIS_AUTH": f"{USER}:wrong"}, "refused the connection: WRONGPASS"),
    ({"REDIS_AUTH": ""}, "NOAUTH Authentication required"),  # the default user is off
])
def test_a_refused_connection_is_a_503_naming_why(tls_redis, config_dir, change, reason):
    folder, port = tls_redis
    env = {
        "REDIS_TLS_CACERT": str(folder / "ca.crt"), "REDIS_TLS_CLIENT_CERT": str(folder / "client.crt"),
        "REDIS_TLS_CLIENT_KEY": str(folder / "client.key"), "REDIS_AUTH": f"{USER}:{PASSWORD}", **change,
    }
    for base in launched(config_dir, f"rediss://127.0.0.1:{port}/0", env=env, ready_status=503):
        health = httpx.get(f"{base}/healthcheck", timeout=5)
        assert health.status_code == 503 and reason in health.text, health.text
        assert decide(base).status_code == 500


def test_redis_options_parse_and_check(tmp_path):
    assert redis_options("redis://u:p%40ss@h:1/0", {}).password == "p@ss"
    assert redis_options("redis://h:1", {"REDIS_AUTH": "secret"}).username is None
    assert redis_options("redis://h:1", {"REDIS_AUTH": "user:se:cret"}).password == "se:cret"
    assert redis_options("redis://:url@h:1", {"REDIS_AUTH": "u:env"}).password == "url"  # the URL wins
    assert redis_options("redis://h:1", {}).tls is None
    tls = redis_options("rediss://h:1?ssl_check_hostname=false", {}).tls
    assert tls is not None and not tls.check_hostname
    for url, env, message in [
        ("redis://h:1?ssl_ca=x", {}, "unsupported Redis URL option 'ssl_ca'"),
        ("rediss://h:1?ssl_check_hostname=maybe", {}, "ssl_check_hostname: expected true or false"),
        ("redis://h:1", {"REDIS_TLS": "sure"}, "REDIS_TLS: expected true or false"),
        (f"rediss://h:1?ssl_ca_certs={tmp_path}/missing.crt", {}, "Redis TLS files:"),
    ]:
        with pytest.raises(ValueError, match=message):
            redis_options(url, env)
