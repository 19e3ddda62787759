"""One gateway replica: its config, and what lives as long as the process.

The config is swapped as a whole on reload; a request reads it once at its start, so
it sees one consistent config from auth to settle.
"""

from __future__ import annotations

import logging

from gateway.access_log import AccessLog
from gateway.accounting import Accounting
from gateway.config.runtime import GatewayConfig, Listener, Route
from gateway.metrics import GatewayMetrics
from gateway.model_list import ModelDirectory
from gateway.ratelimit_client import RateLimitClient
from gateway.upstream import Upstream

log = logging.getLogger("tollgate")


class Replica:
    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.metrics = GatewayMetrics()
        self.upstream = Upstream()
        self.models = ModelDirectory(self.upstream)
        self.ratelimit = RateLimitClient()
        self.accounting = Accounting(self.metrics, self.ratelimit)
        self.access_log = AccessLog()
        self.ready = False

    def reload(self, config: GatewayConfig) -> None:
        old_ports = {lst.port for lst in self.config.listeners}
        new_ports = {lst.port for lst in config.listeners}
        if new_ports != old_ports:
            log.warning("listener ports changed (%s -> %s): takes effect on restart",
                        sorted(old_ports), sorted(new_ports))
        self.config = config
        for warning in config.warnings:
            log.warning("%s", warning)
        log.info("config reloaded from %s", config.source)

    def listener(self, port: int) -> Listener | None:
        for lst in self.config.listeners:
            if lst.port == port:
                return lst
        # A single listener serves whatever port it was bound to (e.g. tests on port 0).
        return self.config.listeners[0] if len(self.config.listeners) == 1 else None

    def route(self, port: int, path: str) -> Route | None:
        listener = self.listener(port)
        if listener is None:
            return None
        for route in listener.routes:  # longest prefix first
            if path.startswith(route.path_prefix):
                return route
        return None

    async def start(self) -> None:
        await self.upstream.start()

    async def close(self) -> None:
        """Flushes pending settles and access-log lines, then drops every kept-alive connection."""
        await self.ratelimit.close()
        await self.upstream.close()
        self.access_log.flush()
        self.metrics.shutdown()
