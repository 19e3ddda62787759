"""`tollgate-ratelimit`: the global rate-limit service.

    tollgate-ratelimit --config-dir DIR [--redis-url URL] [--port 8080] [--host 0.0.0.0]

Every option also reads an environment variable (CONFIG_DIR, REDIS_URL, PORT,
HOST, LOG_LEVEL). `--redis-url memory://` runs the same Lua scripts in-process;
TOLLGATE_CLOCK_OFFSET moves the clock for drills. If the first config load
fails, the problems are printed and the exit code is 1; a bad setting exits
with 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import uvicorn

from ratelimit_service.config import ConfigError, load_texts, read_dir
from ratelimit_service.limiter import Limiter, connect
from ratelimit_service.reload import Reloader
from ratelimit_service.server import create_app
from ratelimit_service.service import Service
from ratelimit_service.stats import Stats
from ratelimit_service.windows import OFFSET_ENV, Windows, clock_offset

log = logging.getLogger("tollgate.ratelimit")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="tollgate-ratelimit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-dir", default=env("CONFIG_DIR"),
                        help="directory of domain YAML files (env CONFIG_DIR)")
    parser.add_argument("--redis-url", default=env("REDIS_URL", "memory://"),
                        help="redis://host:port/db, rediss://, unix:///path, or memory:// (env REDIS_URL)")
    parser.add_argument("--port", type=int, default=int(env("PORT", "8080")), help="HTTP port (env PORT)")
    parser.add_argument("--host", default=env("HOST", "0.0.0.0"), help="listen address (env HOST)")
    parser.add_argument("--log-level", default=env("LOG_LEVEL", "info"),
                        choices=["debug", "info", "warning", "error"], help="(env LOG_LEVEL)")
    args = parser.parse_args(argv)
    if not args.config_dir:
        parser.error("--config-dir (or CONFIG_DIR) is required")
    return args


def _settings(args: argparse.Namespace) -> tuple[float, Limiter]:
    """The clock offset and the limiter; exits with 2 naming a bad setting."""
    try:
        offset = clock_offset(os.environ.get(OFFSET_ENV))
    except ValueError as e:
        print(f"tollgate-ratelimit: {e}", file=sys.stderr)
        sys.exit(2)
    try:
        limiter = Limiter(connect(args.redis_url), clock_offset=offset)
    except ValueError as e:
        print(f"tollgate-ratelimit: --redis-url: {e}", file=sys.stderr)
        sys.exit(2)
    return offset, limiter


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        texts = read_dir(args.config_dir)
        config = load_texts(texts)
    except ConfigError as e:
        for problem in e.problems:
            print(f"tollgate-ratelimit: {problem}", file=sys.stderr)
        sys.exit(1)
    offset, limiter = _settings(args)
    stats = Stats()
    stats.config_loads, stats.domains = 1, len(config.domains)
    service = Service(config, limiter, stats, Windows(offset))
    reloader = Reloader(args.config_dir, lambda new: setattr(service, "config", new), stats, texts)
    if not config.domains:
        log.warning("no domain configured in %s: every request is OK", args.config_dir)
    if offset:
        log.warning("%s=%s: the clock runs %+g s from real time", OFFSET_ENV, os.environ[OFFSET_ENV], offset)
    log.info("loaded %d domain(s); redis %s", len(config.domains), _safe_url(args.redis_url))
    uvicorn.run(
        create_app(service, stats, reloader), host=args.host, port=args.port,
        log_level=args.log_level, access_log=False, lifespan="on", proxy_headers=False, server_header=False,
    )


def _safe_url(url: str) -> str:
    """The URL without its password, for logs."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
