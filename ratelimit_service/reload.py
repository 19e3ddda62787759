"""Hot reload of the domain files: each valid new set replaces the config in force.

A changed set is loaded whole: valid, it replaces the config; invalid, its
`file:line: message` problems are logged and counted, and the last good config stays.
A change is read only once the directory has been quiet for half a second, so a file
caught half-written (truncated at `- key: user_i`, which parses) is never applied.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from ratelimit_service.config import RateLimitConfig, load_dir
from ratelimit_service.stats import Stats
from tollgate_common.problems import ConfigError
from tollgate_common.watch import Reloader

log = logging.getLogger("tollgate.ratelimit.reload")

QUIET_MS = 500


def domain_reloader(config_dir: str, apply: Callable[[RateLimitConfig], None], stats: Stats) -> Reloader:
    def load() -> RateLimitConfig:
        try:
            return load_dir(config_dir)
        except ConfigError:
            stats.config_errors += 1
            raise

    def applied(config: RateLimitConfig) -> None:
        stats.config_loads += 1
        stats.domains = len(config.domains)
        log.info("config reloaded: %d domain(s) from %d file(s)", len(config.domains), len(config.files))
        apply(config)

    return Reloader(lambda: (Path(config_dir),), load, applied, log, quiet_ms=QUIET_MS)
