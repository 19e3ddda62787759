"""deploy/k8s's NetworkPolicies and Ingress, checked offline.

The policies are evaluated the way the Kubernetes API documents them (a pod selected
by a policy of a type is isolated for that direction; a connection needs the egress
side of its source and the ingress side of its destination; rules are OR-ed, peers
within a rule OR-ed, a peer's namespaceSelector and podSelector AND-ed) over the
manifests' own pods plus a few stand-ins: CoreDNS, a Prometheus in `monitoring`, a
stray pod in the tollgate namespace, a pod in `default`, and addresses outside the
cluster. The schemas themselves are checked in test_deploy_k8s_static.py.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass, field

import pytest

from tests.harness.deploy_files import K8S, K8S_DEMO, k8s_object, k8s_objects, pod_spec

NAMESPACE = "tollgate"
PUBLIC, PRIVATE = "203.0.113.10", "10.20.30.40"


@dataclass(frozen=True)
class Pod:
    name: str
    namespace: str
    labels: dict[str, str] = field(hash=False)
    ports: dict[str, int] = field(default_factory=dict, hash=False)  # port name -> number

    def namespace_labels(self) -> dict[str, str]:
        return {"kubernetes.io/metadata.name": self.namespace}


def workload_pods(root) -> dict[str, Pod]:
    pods = {}
    for _, doc in k8s_objects(root):
        if doc["kind"] in ("Deployment", "StatefulSet"):
            ports = {p["name"]: p["containerPort"] for c in pod_spec(doc)["containers"] for p in c.get("ports", [])}
            labels = doc["spec"]["template"]["metadata"]["labels"]
            pods[labels["app.kubernetes.io/name"]] = Pod(doc["metadata"]["name"], NAMESPACE, labels, ports)
    return pods


PODS = {**workload_pods(K8S), **workload_pods(K8S_DEMO)}
GATEWAY, RATELIMIT, REDIS, MOCK = (PODS[f"tollgate-{n}"] for n in ("gateway", "ratelimit", "redis", "mock-llm"))
DNS = Pod("coredns", "kube-system", {"k8s-app": "kube-dns"}, {"dns": 53})
PROMETHEUS = Pod("prometheus", "monitoring", {"app": "prometheus"})
STRAY = Pod("debug", NAMESPACE, {"run": "debug"})
ELSEWHERE = Pod("client", "default", {"app": "client"})


@functools.cache
def policies(root=K8S_DEMO) -> list[dict]:
    """The overlay's policies include the base's: the demo sees both sets."""
    docs = [d for _, d in k8s_objects(K8S)] + ([d for _, d in k8s_objects(K8S_DEMO)] if root == K8S_DEMO else [])
    return [d for d in docs if d["kind"] == "NetworkPolicy"]


def selects(selector: dict, labels: dict[str, str]) -> bool:
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expr in selector.get("matchExpressions", []):
        value, op = labels.get(expr["key"]), expr["operator"]
        ok = {"In": value in expr.get("values", []), "NotIn": value not in expr.get("values", []),
              "Exists": value is not None, "DoesNotExist": value is None}[op]
        if not ok:
            return False
    return True


def peer_matches(peer: dict, other: Pod | str, policy_namespace: str) -> bool:
    if isinstance(other, str):  # an address outside the cluster: only ipBlock peers match it
        block = peer.get("ipBlock")
        if block is None:
            return False
        address = ipaddress.ip_address(other)
        return (address in ipaddress.ip_network(block["cidr"])
                and not any(address in ipaddress.ip_network(e) for e in block.get("except", [])))
    if "ipBlock" in peer:
        return False
    if "namespaceSelector" in peer:
        namespace_ok = selects(peer["namespaceSelector"], other.namespace_labels())
    else:
        namespace_ok = other.namespace == policy_namespace
    return namespace_ok and selects(peer.get("podSelector", {}), other.labels)


def port_matches(entries: list[dict] | None, port: int, protocol: str, target: Pod | str) -> bool:
    if not entries:
        return True
    named = target.ports if isinstance(target, Pod) else {}
    return any(e.get("protocol", "TCP") == protocol and named.get(e.get("port"), e.get("port")) in (port, None)
               for e in entries)


def side_allows(pod: Pod, direction: str, other: Pod | str, port: int, protocol: str, target: Pod | str, root) -> bool:
    """Whether `pod`'s policies of `direction` ("Ingress" or "Egress") admit the connection."""
    if pod.namespace != NAMESPACE:
        return True  # other namespaces have no policies here
    selecting = [p for p in policies(root) if direction in p["spec"]["policyTypes"]
                 and selects(p["spec"]["podSelector"], pod.labels)]
    if not selecting:
        return True
    peers_key, rules_key = ("from", "ingress") if direction == "Ingress" else ("to", "egress")
    for policy in selecting:
        for rule in policy["spec"].get(rules_key, []):
            peers = rule.get(peers_key)
            if (not peers or any(peer_matches(p, other, NAMESPACE) for p in peers)) \
                    and port_matches(rule.get("ports"), port, protocol, target):
                return True
    return False


def allowed(src: Pod, dst: Pod | str, port: int, protocol: str = "TCP", root=K8S_DEMO) -> bool:
    egress = side_allows(src, "Egress", dst, port, protocol, dst, root)
    ingress = isinstance(dst, str) or side_allows(dst, "Ingress", src, port, protocol, dst, root)
    return egress and ingress


def test_the_namespace_denies_by_default():
    (deny,) = [p for p in policies(K8S) if p["metadata"]["name"] == "default-deny"]
    assert deny["spec"]["podSelector"] == {} and set(deny["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert not allowed(STRAY, GATEWAY, 15000) and not allowed(GATEWAY, STRAY, 8080)


def test_only_gateways_reach_the_ratelimit_service_in_the_cluster():
    port = RATELIMIT.ports["http"]
    assert allowed(GATEWAY, RATELIMIT, port)
    for src in (REDIS, MOCK, STRAY, ELSEWHERE):
        assert not allowed(src, RATELIMIT, port), src.name
    assert allowed(PROMETHEUS, RATELIMIT, port), "Prometheus scrapes /metrics, from `monitoring` only"


def test_only_the_ratelimit_service_reaches_redis():
    port = REDIS.ports["redis"]
    assert allowed(RATELIMIT, REDIS, port)
    for src in (GATEWAY, MOCK, STRAY, ELSEWHERE, PROMETHEUS):
        assert not allowed(src, REDIS, port), src.name


def test_every_pod_resolves_names_through_cluster_dns():
    for pod in (GATEWAY, RATELIMIT, REDIS, MOCK):
        assert allowed(pod, DNS, 53, "UDP") and allowed(pod, DNS, 53, "TCP"), pod.name
        assert not allowed(pod, ELSEWHERE, 53, "UDP"), pod.name


def test_gateways_reach_providers_over_https_and_nothing_else_leaves():
    assert allowed(GATEWAY, PUBLIC, 443, root=K8S)
    assert not allowed(GATEWAY, PUBLIC, 80, root=K8S) and not allowed(GATEWAY, PRIVATE, 443, root=K8S)
    for pod in (RATELIMIT, REDIS, MOCK):
        assert not allowed(pod, PUBLIC, 443), pod.name


def test_llm_port_is_open_to_clients_and_admin_only_to_prometheus():
    assert allowed(ELSEWHERE, GATEWAY, GATEWAY.ports["http"])
    assert not allowed(STRAY, GATEWAY, GATEWAY.ports["http"]), "an unlisted pod of the namespace has no egress"
    assert allowed(PROMETHEUS, GATEWAY, GATEWAY.ports["admin"])
    assert not allowed(ELSEWHERE, GATEWAY, GATEWAY.ports["admin"])


def test_demo_overlay_lets_only_gateways_reach_the_mock():
    port = MOCK.ports["http"]
    assert allowed(GATEWAY, MOCK, port)
    assert not allowed(GATEWAY, MOCK, port, root=K8S), "the base has no mock to reach"
    for src in (RATELIMIT, STRAY, ELSEWHERE):
        assert not allowed(src, MOCK, port), src.name


@pytest.mark.parametrize("policy", policies(), ids=lambda p: p["metadata"]["name"])
def test_every_policy_selects_pods_that_exist(policy):
    selector = policy["spec"]["podSelector"]
    assert selector == {} or any(selects(selector, pod.labels) for pod in PODS.values())


# --- Ingress ---------------------------------------------------------------------

def test_ingress_terminates_tls_and_routes_to_the_gateways_llm_port_only():
    ingress = k8s_object("Ingress", "tollgate")
    spec = ingress["spec"]
    hosts = {rule["host"] for rule in spec["rules"]}
    assert hosts and hosts <= {h for tls in spec["tls"] for h in tls["hosts"]}, "every host is served over TLS"
    assert all(tls["secretName"] for tls in spec["tls"])
    service = k8s_object("Service", "gateway")
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    for rule in spec["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["name"] == service["metadata"]["name"]
            assert ports[backend["port"]["name"]] == GATEWAY.ports["http"], "only the LLM port, never admin"
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off", "SSE must not be buffered"
