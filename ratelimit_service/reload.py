"""Hot reload of the domain files: each valid new set replaces the config in force.

A changed set is loaded whole: valid, it replaces the config; invalid, its
`file:line: message` problems are logged and counted, and the last good config stays.
A change is applied only once the directory's files have stayed unchanged across two
polls a second apart (tollgate_common.watch), so a file caught half-written (truncated
at `- key: user_i`, which parses) is never applied while its writer pauses for less.
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

# Domain files are edited by hand or by a tool writing over the network: allow a writer
# a full second's pause mid-file. An edit still applies within about 1.1 s, inside the
# 2 s the README promises.
POLL_SECONDS = 1.0


def domain_reloader(config_dir: str, apply: Callable[[RateLimitConfig], None], stats: Stats) -> Reloader:
    def rejected(_error: ConfigError) -> None:
        stats.config_errors += 1

    def applied(config: RateLimitConfig) -> None:
        stats.config_loads += 1
        stats.domains = len(config.domains)
        log.info("config reloaded: %d domain(s) from %d file(s)", len(config.domains), len(config.files))
        apply(config)

    return Reloader(lambda: (Path(config_dir),), lambda: load_dir(config_dir), applied, log,
                    poll=POLL_SECONDS, on_rejected=rejected)
