"""The normalized, compiled gateway config that the request path reads.

Both YAML forms (`llm:` and `binds:`) load into these dataclasses; each route's
policies are their own validated, immutable config objects (gateway/policies/), CEL
already compiled, so the request path never validates or compiles anything.
"""

from __future__ import annotations

import fnmatch

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from gateway.cel import Expr
    from gateway.config.models import Logging
    from gateway.pricing import Price
    from gateway.policies.apikey import ApiKeyPolicy
    from gateway.policies.local_ratelimit import LocalRateLimit
    from gateway.policies.remote_ratelimit import RemoteRateLimit

Provider = Literal["openAI", "anthropic"]


@dataclass(frozen=True)
class BackendTLS:
    """`backendTLS` with its files resolved (absolute paths, checked at load)."""

    root: str | None = None  # CA bundle; None: the system's store
    cert: str | None = None
    key: str | None = None
    hostname: str | None = None  # SNI and the name verified; None: the URL's host


@dataclass(frozen=True)
class Backend:
    """One upstream model target: an `llm.models[]` entry or a route's `ai` backend."""

    name: str  # exact model name or glob ("*", "gpt-*")
    provider: Provider
    model: str | None  # upstream model override (params.model / provider.X.model)
    api_key: str | None  # upstream credential, already env-expanded; never logged
    base_url: str  # scheme://host:port[/prefix]
    tokenize: bool = False
    tls: BackendTLS | None = None


@dataclass(frozen=True)
class Policies:
    api_key: "ApiKeyPolicy | None" = None
    local_rate_limits: "tuple[LocalRateLimit, ...]" = ()
    remote_rate_limit: "RemoteRateLimit | None" = None
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

    def backend_for(self, model: str) -> "Backend | None":
        """Exact name first, then the first matching glob; a lone binds-form backend takes all."""
        for b in self.backends:
            if b.name == model:
                return b
        for b in self.backends:
            if fnmatch.fnmatchcase(model, b.name):
                return b
        if not self.model_routing and self.backends:
            return self.backends[0]
        return None


@dataclass(frozen=True)
class Listener:
    port: int
    routes: tuple[Route, ...]  # longest path prefix first
    tls: tuple[str, str] | None = None  # (cert, key) files: HTTPS


@dataclass(frozen=True)
class GatewayConfig:
    source: Path
    listeners: tuple[Listener, ...]
    admin_addr: str = "localhost:15000"
    metrics_fields: dict[str, "Expr"] = field(default_factory=dict)
    model_catalog: "dict[str, Price]" = field(default_factory=dict)
    max_body_bytes: int = 10 * 1024 * 1024
    max_header_bytes: int = 64 * 1024
    max_header_count: int = 100
    header_timeout: float = 30.0
    connect_timeout: float = 10.0  # seconds, per provider connection (config.backend.connectTimeout)
    access_log: "Logging | None" = None  # config.logging
    watch_paths: tuple[Path, ...] = ()  # the config file and every keysDir
    warnings: tuple[str, ...] = ()  # `file:line: message` lines worth logging at start

    def price_of(self, model: str, backend_model: str | None) -> "Price | None":
        """The catalog's price for a call's model, else for its backend's configured model."""
        return self.model_catalog.get(model) or (self.model_catalog.get(backend_model) if backend_model else None)

    @cached_property
    def labels_per_key(self) -> bool:
        """Metric labels that read only `apiKey.*` are the same for every call of a key."""
        return not any(word in expr.source for expr in self.metrics_fields.values() for word in ("request", "llm"))
