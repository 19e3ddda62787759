"""Hot reload: poll the config directory and swap in each valid new config.

Every poll hashes the contents of the config files (read through symlinks, so a
Kubernetes ConfigMap's `..data` swap shows as a change even when no visible
name changes). A changed set is loaded whole: valid, it replaces the config in
force; invalid, it is logged with its `file:line: message` problems, counted,
and the last good config stays. The same bad contents are reported once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Callable

from ratelimit_service.config import ConfigError, RateLimitConfig, load_texts, read_dir
from ratelimit_service.stats import Stats

log = logging.getLogger("tollgate.ratelimit.reload")

POLL_SECONDS = 0.5


def fingerprint(texts: list[tuple[str, str]]) -> str:
    digest = hashlib.sha256()
    for path, text in texts:
        digest.update(path.encode() + b"\0" + text.encode() + b"\0")
    return digest.hexdigest()


class Reloader:
    def __init__(
        self,
        config_dir: str,
        apply: Callable[[RateLimitConfig], None],
        stats: Stats,
        loaded: list[tuple[str, str]],
        interval: float = POLL_SECONDS,
    ):
        self.config_dir = config_dir
        self.apply = apply
        self.stats = stats
        self.interval = interval
        self.seen = fingerprint(loaded)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                config = await asyncio.to_thread(self.load_if_changed)
            except Exception:  # a poll must never end the watcher
                log.exception("config reload failed")
                continue
            if config is not None:
                self.apply(config)  # on the event loop: never in the middle of a request's matching

    def load_if_changed(self) -> RateLimitConfig | None:
        """The directory's new config, or None if unchanged or invalid."""
        try:
            texts = read_dir(self.config_dir)
        except ConfigError as e:
            return self._reject(f"unreadable: {e}", e)
        seen = fingerprint(texts)
        if seen == self.seen:
            return None
        try:
            config = load_texts(texts)
        except ConfigError as e:
            return self._reject(seen, e)
        self.seen = seen
        self.stats.config_loads += 1
        self.stats.domains = len(config.domains)
        log.info("config reloaded: %d domain(s) from %d file(s)", len(config.domains), len(config.files))
        return config

    def _reject(self, seen: str, error: ConfigError) -> None:
        if seen != self.seen:
            self.seen = seen
            self.stats.config_errors += 1
            for problem in error.problems:
                log.error("config rejected, keeping the last good one: %s", problem)
        return None
