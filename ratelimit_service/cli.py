"""`tollgate-ratelimit`: the global rate-limit service.

    tollgate-ratelimit --config-dir DIR [--redis-url URL] [--port 8080] [--host 127.0.0.1] [--protect-json]

Every option also reads an environment variable (CONFIG_DIR, REDIS_URL, PORT,
HOST, LOG_LEVEL, TOLLGATE_RATELIMIT_PROTECT_JSON). `--redis-url memory://` runs
the same Lua scripts in-process. Secrets and drills come from the environment
only: TOLLGATE_RATELIMIT_TOKEN or TOLLGATE_RATELIMIT_TOKEN_FILE (a token on the
command line would show in `ps`), REDIS_AUTH and REDIS_TLS_* (envoy's names for
Redis credentials and TLS files), and TOLLGATE_CLOCK_OFFSET. If the first config
load fails, the problems are printed and the exit code is 1; a bad setting
exits with 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import uvicorn

from ratelimit_service.config import ConfigError, load_dir
from ratelimit_service.limiter import Limiter, connect
from ratelimit_service.reload import domain_reloader
from ratelimit_service.server import create_app
from ratelimit_service.service import Service
from ratelimit_service.stats import Stats
from ratelimit_service.windows import OFFSET_ENV, Windows, clock_offset

log = logging.getLogger("tollgate.ratelimit")

TOKEN_ENV, TOKEN_FILE_ENV = "TOLLGATE_RATELIMIT_TOKEN", "TOLLGATE_RATELIMIT_TOKEN_FILE"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    env = os.environ.get
    _, usage, rest = __doc__.split("\n\n", 2)
    parser = argparse.ArgumentParser(prog="tollgate-ratelimit", description="The global rate-limit service.",
                                     epilog=rest, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-dir", default=env("CONFIG_DIR"),
                        help="directory of domain YAML files, reloaded live (env CONFIG_DIR; required)")
    parser.add_argument("--redis-url", default=env("REDIS_URL", "memory://"),
                        help="redis://host:port/db, rediss://, unix:///path, or memory:// "
                             "(env REDIS_URL; default %(default)s)")
    parser.add_argument("--port", type=int, default=int(env("PORT", "8080")), help="HTTP port (env PORT; default %(default)s)")
    # Loopback unless told otherwise: whoever reaches /v1 can spend and settle budgets.
    parser.add_argument("--host", default=env("HOST", "127.0.0.1"), help="listen address (env HOST; default %(default)s)")
    parser.add_argument("--protect-json", action="store_true",
                        default=env("TOLLGATE_RATELIMIT_PROTECT_JSON", "").lower() in ("1", "true", "yes"),
                        help="require the bearer token on /json too (env TOLLGATE_RATELIMIT_PROTECT_JSON; "
                             "default: envoy's open /json)")
    parser.add_argument("--log-level", default=env("LOG_LEVEL", "info"),
                        choices=["debug", "info", "warning", "error"], help="(env LOG_LEVEL; default %(default)s)")
    args = parser.parse_args(argv)
    if not args.config_dir:
        parser.error("--config-dir (or CONFIG_DIR) is required")
    return args


def read_token(env: dict[str, str]) -> str | None:
    """The bearer token /v1 requires, from TOLLGATE_RATELIMIT_TOKEN or the file
    TOLLGATE_RATELIMIT_TOKEN_FILE names (trailing newline stripped); None when
    neither is set. Raises ValueError for both set, or an unreadable or empty file."""
    token, path = env.get(TOKEN_ENV) or None, env.get(TOKEN_FILE_ENV) or None
    if token and path:
        raise ValueError(f"set {TOKEN_ENV} or {TOKEN_FILE_ENV}, not both")
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                token = f.read().rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"{TOKEN_FILE_ENV}: cannot read {path}: {e}") from None
        if not token:
            raise ValueError(f"{TOKEN_FILE_ENV}: {path} is empty")
    return token


def _settings(args: argparse.Namespace) -> tuple[str | None, float, Limiter]:
    """The token, the clock offset and the limiter; exits with 2 naming a bad setting."""
    try:
        token = read_token(dict(os.environ))
        offset = clock_offset(os.environ.get(OFFSET_ENV))
    except ValueError as e:
        print(f"tollgate-ratelimit: {e}", file=sys.stderr)
        sys.exit(2)
    try:
        limiter = Limiter(connect(args.redis_url, dict(os.environ)), clock_offset=offset)
    except ValueError as e:
        print(f"tollgate-ratelimit: --redis-url: {e}", file=sys.stderr)
        sys.exit(2)
    return token, offset, limiter


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_dir(args.config_dir)
    except ConfigError as e:
        for problem in e.problems:
            print(f"tollgate-ratelimit: {problem}", file=sys.stderr)
        sys.exit(1)
    token, offset, limiter = _settings(args)
    stats = Stats()
    stats.config_loads, stats.domains = 1, len(config.domains)
    service = Service(config, limiter, stats, Windows(offset))
    reloader = domain_reloader(args.config_dir, lambda new: setattr(service, "config", new), stats)
    if not config.domains:
        log.warning("no domain configured in %s: every request is OK", args.config_dir)
    if token is None:
        log.warning("no %s: /v1 answers anyone who can reach %s:%d", TOKEN_ENV, args.host, args.port)
    if offset:
        log.warning("%s=%s: the clock runs %+g s from real time", OFFSET_ENV, os.environ[OFFSET_ENV], offset)
    log.info("loaded %d domain(s); redis %s", len(config.domains), _safe_url(args.redis_url))
    uvicorn.run(
        create_app(service, stats, reloader, token, args.protect_json), host=args.host, port=args.port,
        log_level=args.log_level, access_log=False, lifespan="on", proxy_headers=False, server_header=False,
    )


def _safe_url(url: str) -> str:
    """The URL without its password, for logs."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
