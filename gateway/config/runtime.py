"""The normalized, compiled gateway config that the request path reads.

Both YAML forms (`llm:` and `binds:`) load into these plain dataclasses, so the
request path never touches pydantic and never compiles anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from gateway.auth import ApiKeyPolicy
    from gateway.cel import Expr

Provider = Literal["openAI", "anthropic"]
LimitType = Literal["tokens", "requests"]


@dataclass(frozen=True)
class Backend:
    """One upstream model target: an `llm.models[]` entry or a route's `ai` backend."""

    name: str  # exact model name or glob ("*", "gpt-*")
    provider: Provider
    model: str | None  # upstream model override (params.model / provider.X.model)
    api_key: str | None  # upstream credential, already env-expanded; never logged
    base_url: str  # scheme://host:port[/prefix]
    tokenize: bool = False


@dataclass(frozen=True)
class LocalLimit:
    max_tokens: int
    tokens_per_fill: int
    fill_interval: float  # seconds
    type: LimitType = "tokens"


@dataclass(frozen=True)
class DescriptorEntry:
    key: str
    value: "Expr"


@dataclass(frozen=True)
class RemoteDescriptor:
    entries: tuple[DescriptorEntry, ...]
    type: LimitType = "requests"
    cost: "Expr | None" = None
    enforcement: Literal["soft", "hard"] = "soft"


@dataclass(frozen=True)
class RemotePolicy:
    host: str  # host:port of the rate-limit service
    domain: str
    descriptors: tuple[RemoteDescriptor, ...]
    failure_mode: Literal["failClosed", "failOpen"] = "failClosed"
    timeout: float = 0.5  # seconds, per call to the service


@dataclass(frozen=True)
class RemoteRule:
    condition: "Expr | None"  # None = always
    policy: RemotePolicy


@dataclass(frozen=True)
class Policies:
    api_key: "ApiKeyPolicy | None" = None
    local_rate_limits: tuple[LocalLimit, ...] = ()
    remote_rate_limit: tuple[RemoteRule, ...] = ()  # first true condition wins
    backend_auth: str | None = None  # binds form: upstream key for every backend
    url_rewrite: str | None = None  # full path replacement
    request_timeout: float | None = None  # seconds; agentgateway's timeout.requestTimeout


@dataclass(frozen=True)
class Route:
    name: str  # stable id used to key per-replica buckets across reloads
    path_prefix: str  # "/" for the llm form
    policies: Policies
    backends: tuple[Backend, ...]
    # llm form: pick the backend by the request's model. binds form: agentgateway sends
    # every request on a route to its backend, whatever model the client named.
    model_routing: bool = True


@dataclass(frozen=True)
class Listener:
    port: int
    routes: tuple[Route, ...]  # longest path prefix first


@dataclass(frozen=True)
class Price:
    input_per_million: float
    output_per_million: float


@dataclass(frozen=True)
class GatewayConfig:
    source: Path
    listeners: tuple[Listener, ...]
    admin_addr: str = "localhost:15000"
    metrics_fields: dict[str, "Expr"] = field(default_factory=dict)
    model_catalog: dict[str, Price] = field(default_factory=dict)
    max_body_bytes: int = 10 * 1024 * 1024
    watch_paths: tuple[Path, ...] = ()  # the config file and every keysDir
    warnings: tuple[str, ...] = ()  # `file:line: message` lines worth logging at start
