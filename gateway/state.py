"""The process-wide state of one gateway replica.

The config is swapped as a whole on reload; a request reads it once at its start, so
it sees one consistent config from auth to settle.
"""

from __future__ import annotations

import asyncio
import logging

from gateway.accounting import Accounting
from gateway.config.runtime import GatewayConfig, Listener, Route
from gateway.metrics import Metrics
from gateway.upstream import Upstream

log = logging.getLogger("tollgate")


class Gateway:
    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        self.upstream = Upstream()
        self.accounting = Accounting(self.metrics)
        self.ready = False
        self.label_cache: dict[str, dict[str, str]] = {}
        self.labels_per_key = self._labels_per_key(config)
        # Work that outlives its response (draining abandoned streams); awaited at shutdown.
        self._background: set[asyncio.Task] = set()

    def reload(self, config: GatewayConfig) -> None:
        old_ports = {lst.port for lst in self.config.listeners}
        new_ports = {lst.port for lst in config.listeners}
        if new_ports != old_ports:
            log.warning("listener ports changed (%s -> %s): takes effect on restart",
                        sorted(old_ports), sorted(new_ports))
        self.config = config
        self.labels_per_key = self._labels_per_key(config)
        self.label_cache = {}
        log.info("config reloaded from %s", config.source)

    @staticmethod
    def _labels_per_key(config: GatewayConfig) -> bool:
        """Metric labels that read only `apiKey.*` are the same for every call of a key."""
        return not any(word in expr.source for expr in config.metrics_fields.values()
                       for word in ("request", "llm"))

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

    def spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def start(self) -> None:
        await self.upstream.start()

    async def close(self, timeout: float = 30.0) -> None:
        if self._background:
            await asyncio.wait(list(self._background), timeout=timeout)
        await self.accounting.close()
        await self.upstream.close()
