"""Load a config file into the runtime dataclasses the request path reads.

`load(path)` parses the YAML with line numbers, expands `$VAR`, validates it with the
pydantic models (which compile CEL), reads every keysDir, checks what spans objects
(duplicate keys, ports) and builds `GatewayConfig`. Any problem raises `ConfigError`
listing every `file:line: message` found.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from gateway.cel import compile_expr
from gateway.config import models as m
from gateway.config import runtime as rt
from gateway.config.keyfiles import read_keys_dir, read_text
from gateway.config.source import ConfigError, EnvDocument, Problem, parse_yaml
from gateway.config.validate import validate
from gateway.keys import DEMO_KEY_DIGESTS, refuse_demo_keys
from gateway.policies.apikey import ApiKey, ApiKeyPolicy, KeyEntry, KeyStore
from tollgate_common.netio import tls_context

DEFAULT_BASE_URLS = {"openAI": "https://api.openai.com", "anthropic": "https://api.anthropic.com"}

Loc = tuple[Any, ...]


def load(path: str | os.PathLike[str]) -> rt.GatewayConfig:
    source = Path(path)
    doc = parse_yaml(read_text(source), str(path))
    if not isinstance(doc.data, dict):
        what = "empty" if doc.data is None else "not a mapping"
        raise ConfigError([Problem(str(path), 1, f"config is {what}: expected 'llm:' or 'binds:'")])
    return _Builder(doc, source).build(validate(doc, m.GatewayFile))



class _Builder:
    def __init__(self, doc: EnvDocument, source: Path) -> None:
        self.doc = doc
        self.source = source
        self.problems: list[Problem] = []
        self.keys_dirs: list[Path] = []

    def build(self, file: m.GatewayFile) -> rt.GatewayConfig:
        listeners: list[rt.Listener] = []
        if file.llm is not None:
            listeners.append(self.llm_listener(file.llm))
        for i, bind in enumerate(file.binds or []):
            listeners.append(self.bind_listener(i, bind))
        self.check_ports(file, listeners)
        if self.problems:
            main = self.doc.file
            raise ConfigError(sorted(self.problems, key=lambda p: (p.file != main, p.file, p.line)))
        settings = file.config
        return rt.GatewayConfig(
            source=self.source,
            listeners=tuple(listeners),
            admin_addr=settings.admin_addr,
            metrics_fields=dict(settings.metrics.fields.add),
            model_catalog=dict(settings.model_catalog),
            max_body_bytes=settings.max_body_size,
            max_header_bytes=settings.max_header_size,
            max_header_count=settings.max_header_count,
            header_timeout=settings.header_timeout,
            connect_timeout=settings.backend.connect_timeout,
            access_log=settings.logging,
            watch_paths=(self.source.absolute(), *dict.fromkeys(self.keys_dirs)),
            warnings=tuple(self.warnings() + self.unread_fields(listeners)),
        )

    # --- listeners and routes ---------------------------------------------------------

    def llm_listener(self, llm: m.LLM) -> rt.Listener:
        seen: dict[str, int] = {}
        for j, model in enumerate(llm.models):
            loc = ("llm", "models", j, "name")
            if model.name in seen:
                self.problem(loc, f"duplicate model name {model.name!r} (first at line {seen[model.name]})")
            seen.setdefault(model.name, self.doc.line(loc))
        backends = tuple(
            rt.Backend(
                name=model.name,
                provider=model.provider,
                model=model.params.model,
                api_key=model.params.api_key or None,
                base_url=model.params.base_url or DEFAULT_BASE_URLS[model.provider],
                tokenize=model.params.tokenize,
                tls=self.backend_tls(("llm", "models", j, "tls"), model.tls),
            )
            for j, model in enumerate(llm.models)
        )
        policies = self.policies(("llm", "policies"), llm.policies)
        route = rt.Route(name="llm", path_prefix="/", policies=policies, backends=backends, model_routing=True)
        return rt.Listener(port=llm.port, routes=(route,), tls=self.listener_tls(("llm", "tls"), llm.tls))

    def bind_listener(self, i: int, bind: m.Bind) -> rt.Listener:
        routes: list[rt.Route] = []
        names: dict[str, int] = {}
        tls = [listener.tls for listener in bind.listeners]
        if any(t != tls[0] for t in tls):
            # One port is one socket: its listeners share a protocol and a certificate.
            self.problem(("binds", i, "listeners"), f"the listeners of port {bind.port} must share "
                         "'protocol' and 'tls' (one socket serves them all)")
        for li, listener in enumerate(bind.listeners):
            for ri, route in enumerate(listener.routes):
                loc = ("binds", i, "listeners", li, "routes", ri)
                name = route.name or f"bind{bind.port}/listener{li}/route{ri}"
                if name in names:
                    self.problem(loc + ("name",), f"duplicate route name {name!r} (first at line {names[name]})")
                names.setdefault(name, self.doc.line(loc))
                policies = self.policies(loc + ("policies",), route.policies)
                backend_tls = self.backend_tls(loc + ("policies", "backendTLS"), route.policies.backend_tls)
                backends = tuple(self.ai_backend(b.ai, policies.backend_auth, backend_tls) for b in route.backends)
                for prefix in [match.path.path_prefix for match in route.matches] or ["/"]:
                    routes.append(rt.Route(name=name, path_prefix=prefix, policies=policies,
                                           backends=backends, model_routing=False))
        routes.sort(key=lambda r: len(r.path_prefix), reverse=True)
        return rt.Listener(port=bind.port, routes=tuple(routes),
                           tls=self.listener_tls(("binds", i, "listeners", 0, "tls"), tls[0]))

    # --- TLS files ----------------------------------------------------------------------

    def file(self, value: str) -> str:
        """A path from the config, relative to the config file's directory."""
        path = Path(value)
        return str(path if path.is_absolute() else (self.source.parent / path).absolute())

    def listener_tls(self, loc: Loc, spec: m.ListenerTLS | None) -> tuple[str, str] | None:
        if spec is None:
            return None
        cert, key = self.file(spec.cert), self.file(spec.key)
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as e:
            self.problem(loc, f"tls: cannot load certificate {spec.cert!r} and key {spec.key!r}: {e}")
        return cert, key

    def backend_tls(self, loc: Loc, spec: m.BackendTLS | None) -> rt.BackendTLS | None:
        if spec is None:
            return None
        tls = rt.BackendTLS(root=spec.root and self.file(spec.root), cert=spec.cert and self.file(spec.cert),
                            key=spec.key and self.file(spec.key), hostname=spec.hostname)
        try:
            tls_context(tls.root, tls.cert, tls.key)
        except (OSError, ssl.SSLError) as e:
            self.problem(loc, f"backendTLS: cannot load {', '.join(spec.given('root', 'cert', 'key'))}: {e}")
        return tls

    @staticmethod
    def ai_backend(ai: m.AIBackend, api_key: str | None, tls: rt.BackendTLS | None = None) -> rt.Backend:
        if ai.base_url:
            base_url = ai.base_url
        elif ai.host_override:
            base_url = f"http://{ai.host_override}"
        else:
            base_url = DEFAULT_BASE_URLS[ai.provider.kind]
        return rt.Backend(name=ai.name, provider=ai.provider.kind, model=ai.provider.model,
                          api_key=api_key, base_url=base_url, tokenize=ai.tokenize, tls=tls)

    # --- policies ---------------------------------------------------------------------

    def policies(self, loc: Loc, p: m.LLMPolicies) -> rt.Policies:
        backend_auth = getattr(p, "backend_auth", None)
        url_rewrite = getattr(p, "url_rewrite", None)
        return rt.Policies(
            api_key=self.api_key(loc + ("apiKey",), p.api_key) if p.api_key else None,
            local_rate_limits=tuple(p.local_rate_limit),
            remote_rate_limit=p.remote_rate_limit,
            backend_auth=(backend_auth.key or None) if backend_auth else None,
            url_rewrite=url_rewrite.path.path if url_rewrite else None,
            request_timeout=p.timeout.request_timeout if p.timeout else None,
        )

    def api_key(self, loc: Loc, spec: ApiKey) -> ApiKeyPolicy:
        store = KeyStore()
        seen: dict[str, str] = {}
        for j, entry in enumerate(spec.keys):
            self.add_key(store, seen, entry, self.doc, loc + ("keys", j))
        if spec.keys_dir:
            self.read_keys_dir(loc + ("keysDir",), spec.keys_dir, store, seen)
        return ApiKeyPolicy.build(spec, store)

    def read_keys_dir(self, loc: Loc, configured: str, store: KeyStore, seen: dict[str, str]) -> None:
        directory = Path(configured)
        if not directory.is_absolute():
            # Written in the file, a path is the file's (`keys` next to config.yaml, as
            # deploy/ ships it); taken from the environment (TOLLGATE_KEYS_DIR=deploy/gateway/keys),
            # it is the shell's, as every other command-line path is.
            from_env = any(os.environ.get(name) for name in self.doc.vars_under(loc))
            directory = Path.cwd() / directory if from_env else self.source.parent / directory
        self.keys_dirs.append(directory.absolute())
        try:
            keys, problems = read_keys_dir(directory)
        except OSError as e:
            # A directory is no secret: shown as resolved, with the variable it came from.
            names = ", ".join(f"${n}" for n in self.doc.vars_under(loc) if os.environ.get(n))
            origin = f" (from {names})" if names else ""
            self.problems.append(self.doc.problem(loc, f"keysDir {str(directory)!r}{origin}: {e.strerror or e}"))
            return
        self.problems += problems
        for key in keys:
            if self.unique(seen, key.digest, Problem(key.path, 1, ""), f"{key.path}:1"):
                store.put(key.digest, key.identity)

    def add_key(self, store: KeyStore, seen: dict[str, str], entry: KeyEntry, doc: EnvDocument, loc: Loc) -> None:
        if self.unique(seen, entry.digest, doc.problem(loc, ""), f"{doc.file}:{doc.line(loc)}"):
            store.add(entry.digest, entry.metadata, entry.allowed_models)

    def unique(self, seen: dict[str, str], digest: str, where: Problem, place: str) -> bool:
        """True for a key to serve: not seen before (a duplicate is a problem naming where its
        twin is, never the key itself), and not a published demo key while those are refused."""
        if digest in seen:
            self.problems.append(Problem(where.file, where.line, f"duplicate API key (the same key is at {seen[digest]})"))
            return False
        seen[digest] = place
        if digest in DEMO_KEY_DIGESTS and refuse_demo_keys():
            self.problems.append(Problem(where.file, where.line, "this is one of the published demo keys "
                                         "(deploy/gateway/keys/), refused while TOLLGATE_REFUSE_DEMO_KEYS=1: "
                                         "replace it (tollgate keys generate)"))
            return False
        return True

    # --- checks across the file -------------------------------------------------------

    def check_ports(self, file: m.GatewayFile, listeners: Sequence[rt.Listener]) -> None:
        locs: list[Loc] = ([("llm", "port")] if file.llm is not None else []) + [
            ("binds", i, "port") for i in range(len(file.binds or []))]
        first: dict[int, int] = {}
        for loc, listener in zip(locs, listeners):
            if listener.port in first:
                self.problem(loc, f"port {listener.port} is already used (line {first[listener.port]})")
            first.setdefault(listener.port, self.doc.line(loc))
        admin_port = int(file.config.admin_addr.rsplit(":", 1)[1])
        if admin_port in first:
            self.problem(("config", "adminAddr"),
                         f"adminAddr port {admin_port} is also an LLM listener port (line {first[admin_port]})")

    def problem(self, loc: Loc, message: str) -> None:
        self.problems.append(self.doc.problem(loc, self.doc.redact(loc, message)))

    def warnings(self) -> list[str]:
        return [
            str(self.doc.problem(path, f"environment variable {name} is not set; using an empty value"))
            for path, names in self.doc.unset_vars.items() for name in names
        ]

    def unread_fields(self, listeners: Sequence[rt.Listener]) -> list[str]:
        """A warning per CEL reference to an `apiKey` field that no configured key carries:
        `apiKey.userid` for `user_id` would fail on every request."""
        carried = {name for lst in listeners for route in lst.routes if route.policies.api_key
                   for name in route.policies.api_key.store.metadata_fields()}
        out = []
        for path, source in _cel_sources(self.doc.data, ()):
            missing = sorted(compile_expr(source).api_key_fields - carried)
            if missing:
                have = f"keys carry: {', '.join(sorted(carried))}" if carried else "no key carries metadata"
                out += [str(self.doc.problem(path, f"apiKey.{name} is read here but no configured key carries it "
                                                   f"({have})")) for name in missing]
        return out


# Where the file holds CEL: rule conditions, descriptor values and costs, metric fields.
_CEL_KEYS = frozenset({"condition", "value", "expression", "cost"})


def _cel_sources(data: Any, path: Loc) -> Iterator[tuple[Loc, str]]:
    if isinstance(data, dict):
        for key, value in data.items():
            inside = path + (key,)
            if isinstance(value, str) and (key in _CEL_KEYS and "remoteRateLimit" in path
                                           or path[-3:] == ("metrics", "fields", "add")):
                yield inside, value
            else:
                yield from _cel_sources(value, inside)
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from _cel_sources(value, path + (i,))


