#!/usr/bin/env python3
"""Regenerates the Kubernetes ConfigMaps from the compose config files.

deploy/gateway/config.yaml and deploy/ratelimit/config.yaml are the single source;
deploy/k8s/ carries them as ConfigMaps because kustomize may not read files outside
its own directory. tests/deploy fails when the two drift; this script fixes that.
"""

from __future__ import annotations

import sys
from pathlib import Path

DEPLOY = Path(__file__).resolve().parent

# (source file, ConfigMap manifest, ConfigMap name, header comment)
CONFIGMAPS = (
    (DEPLOY / "gateway" / "config.yaml", DEPLOY / "k8s" / "gateway-config.yaml", "tollgate-gateway-config",
     "# The gateway config, generated from deploy/gateway/config.yaml by\n"
     "# deploy/sync_configmaps.py. Edit it in place in the cluster:\n"
     "#   kubectl -n tollgate edit configmap tollgate-gateway-config\n"
     "# and the gateway reloads it without a restart.\n"),
    (DEPLOY / "ratelimit" / "config.yaml", DEPLOY / "k8s" / "ratelimit-config.yaml", "ratelimit-config",
     "# Per-user daily token budgets (the ConfigMap of agentgateway's Kubernetes virtual-keys example), generated from\n"
     "# deploy/ratelimit/config.yaml by deploy/sync_configmaps.py. Edit it in place:\n"
     "#   kubectl -n tollgate edit configmap ratelimit-config\n"
     "# The kubelet updates the mounted file (within about a minute) and the rate-limit\n"
     "# service reloads it without a restart, keeping what was already spent.\n"),
)


def render(source: Path, name: str, header: str) -> str:
    """A ConfigMap whose `config.yaml` entry is the source file, byte for byte."""
    lines = source.read_text().splitlines()
    body = "".join(f"    {line}\n" if line.strip() else "\n" for line in lines)
    return (f"{header}apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n"
            f"data:\n  config.yaml: |\n{body}")


def main() -> int:
    for source, target, name, header in CONFIGMAPS:
        target.write_text(render(source, name, header))
        print(f"wrote {target.relative_to(DEPLOY.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
