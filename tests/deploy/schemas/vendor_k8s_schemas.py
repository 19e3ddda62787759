#!/usr/bin/env python3
"""Builds k8s-strict.json: the Kubernetes JSON schemas our manifests use, offline.

Source: the PyPI package kubernetes-validate, which bundles the upstream OpenAPI
schemas converted to JSON Schema (draft 2020-12), "strict" flavour (unknown fields
rejected). Only the kinds listed below and the definitions they reach are kept,
without descriptions, so the vendored file stays small. Rerun after adding a kind:
    pip install kubernetes-validate && python tests/deploy/schemas/vendor_k8s_schemas.py
"""

from __future__ import annotations

import json
import sys
from importlib import metadata, resources
from pathlib import Path
from typing import Any

K8S_VERSION = "1.31.0"
KINDS = (
    ("v1", "Namespace"), ("v1", "ConfigMap"), ("v1", "Secret"), ("v1", "Service"),
    ("apps/v1", "Deployment"), ("apps/v1", "StatefulSet"),
    ("policy/v1", "PodDisruptionBudget"), ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ("networking.k8s.io/v1", "NetworkPolicy"), ("networking.k8s.io/v1", "Ingress"),
)
OUT = Path(__file__).with_name("k8s-strict.json")
# Kind files point into _definitions.json; definitions point within it.
DEFS_PREFIXES = ("/api/_definitions.json#/$defs/", "#/$defs/")


def kind_key(api_version: str, kind: str) -> str:
    """The $defs entry of a top-level kind: `kind:apps.v1.Deployment` (no `/`: refs are JSON pointers)."""
    return f"kind:{api_version.replace('/', '.')}.{kind}"


def kind_file(api_version: str, kind: str) -> str:
    group_version = api_version.split("/")
    name = "-".join([kind.lower(), *(p.split(".")[0] for p in group_version)])
    return f"{name}.json"


def rewrite(node: Any, reached: set[str]) -> Any:
    """Drops descriptions, points refs into this one file and records what they reach."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "description" and isinstance(value, str):
                continue
            if key == "$ref" and isinstance(value, str):
                prefix = next((p for p in DEFS_PREFIXES if value.startswith(p)), None)
                if prefix is not None:
                    name = value[len(prefix):]
                    reached.add(name)
                    value = f"#/$defs/{name}"
            out[key] = rewrite(value, reached)
        return out
    if isinstance(node, list):
        return [rewrite(item, reached) for item in node]
    return node


def build() -> dict[str, Any]:
    root = resources.files("kubernetes_validate") / "kubernetes-json-schema" / f"v{K8S_VERSION}-local-strict"
    all_defs = json.loads((root / "_definitions.json").read_text())["$defs"]
    defs: dict[str, Any] = {}
    pending: set[str] = set()
    for api_version, kind in KINDS:
        schema = json.loads((root / kind_file(api_version, kind)).read_text())
        schema.pop("$id", None)
        schema.pop("$schema", None)
        defs[kind_key(api_version, kind)] = rewrite(schema, pending)
    while pending:
        name = pending.pop()
        if name not in defs:
            defs[name] = rewrite(all_defs[name], pending)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$comment": (f"Kubernetes v{K8S_VERSION} strict schemas from kubernetes-validate "
                     f"{metadata.version('kubernetes-validate')}; built by vendor_k8s_schemas.py"),
        "$defs": dict(sorted(defs.items())),
    }


def main() -> int:
    OUT.write_text(json.dumps(build(), indent=None, separators=(",", ":"), sort_keys=False) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
