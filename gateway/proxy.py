"""HTTPS_PROXY / HTTP_PROXY / NO_PROXY for provider calls, read once when the gateway starts.

Behind a corporate proxy the providers are reachable only through it. Provider
connections to an `https://` backend go through `HTTPS_PROXY`, to an `http://` backend
through `HTTP_PROXY` (lower-case names win, as in curl), both tunnelled with CONNECT
(tollgate_common/netio.py), so TLS stays end to end and the proxy sees no request.
`NO_PROXY` lists what is reached directly: `*` (everything), host names (a name matches
itself and its subdomains; a leading dot is allowed), IP addresses, CIDR blocks
(`10.0.0.0/8`), each optionally with `:port`. The rate-limit service is never proxied.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from tollgate_common.netio import Proxy


def _env(environ: Mapping[str, str], name: str) -> str:
    return environ.get(name.lower()) or environ.get(name.upper()) or ""


def parse_proxy(url: str) -> Proxy | None:
    """`http://[user:pass@]host[:port]` (a bare `host:port` too); None when empty."""
    if not url:
        return None
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"proxy URL must be http://host:port (CONNECT over plain HTTP), got scheme {parts.scheme!r}")
    user = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return Proxy.basic(parts.hostname, parts.port or 80, user, password)


@dataclass(frozen=True)
class ProxySettings:
    https: Proxy | None = None
    http: Proxy | None = None
    everything_direct: bool = False
    names: tuple[tuple[str, int | None], ...] = ()  # (suffix without leading dot, port)
    networks: tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, int | None], ...] = field(default=())

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> "ProxySettings":
        environ = os.environ if environ is None else environ
        names, networks, everything = [], [], False
        for entry in (e.strip() for e in _env(environ, "no_proxy").split(",")):
            if not entry:
                continue
            if entry == "*":
                everything = True
                continue
            host, port = _split_port(entry)
            try:
                networks.append((ipaddress.ip_network(host, strict=False), port))
            except ValueError:
                names.append((host.lstrip(".").lower(), port))
        return cls(parse_proxy(_env(environ, "https_proxy")), parse_proxy(_env(environ, "http_proxy")),
                   everything, tuple(names), tuple(networks))

    def for_origin(self, scheme: str, host: str, port: int) -> Proxy | None:
        """The proxy to reach `scheme://host:port` through, or None for a direct connection."""
        proxy = self.https if scheme == "https" else self.http
        if proxy is None or self.everything_direct or self._direct(host.lower().strip("[]"), port):
            return None
        return proxy

    def _direct(self, host: str, port: int) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return any((host == name or host.endswith("." + name)) and p in (None, port) for name, p in self.names)
        return any(address in net and p in (None, port) for net, p in self.networks)


def _split_port(entry: str) -> tuple[str, int | None]:
    """`host:port`, `[v6]:port`, a bare IPv6 address or CIDR, or a host."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        if port.isdigit():
            return host, int(port)
    return entry, None
