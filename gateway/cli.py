"""`tollgate`: run a gateway replica, validate a config, generate keys, print the schema.

    tollgate -f CONFIG                      run (env TOLLGATE_CONFIG)
    tollgate validate -f CONFIG             exit 0 and "ok", or 1 and `file:line: message`
    tollgate keys generate [--metadata k=v] print a key, then its `keyHash` YAML entry
      [--keys-dir DIR [--name N]]         ...or write the entry as a keysDir file
    tollgate schema                         JSON schema of the config file
    tollgate demo [--redis-url URL]         mock upstream + rate-limit service + gateway (tollgate_demo)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

from gateway.config.loader import load
from gateway.config.runtime import GatewayConfig
from gateway.config.source import ConfigError
from gateway.keys import as_yaml, generate_entry, write_key_file

EXIT_INVALID = 1  # validate: the config has problems
EXIT_START = 2  # run: the config cannot start a gateway


def main(argv: list[str] | None = None) -> None:
    sys.exit(dispatch(argv))


def dispatch(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _logging(getattr(args, "log_level", None) or os.environ.get("TOLLGATE_LOG_LEVEL", "info"))
    command = args.command
    if command == "schema":
        return _schema()
    if command == "keys":
        return _keys(args)
    if command == "demo":
        # The demo is its own program (package tollgate_demo), run in this process's place.
        extra = ["--redis-url", args.redis_url] if args.redis_url else []
        os.execv(sys.executable, [sys.executable, "-P", "-m", "tollgate_demo.demo", *extra])
    config_path = getattr(args, "config", None) or os.environ.get("TOLLGATE_CONFIG")
    if not config_path:
        print("tollgate: no config: pass -f CONFIG or set TOLLGATE_CONFIG", file=sys.stderr)
        return EXIT_START
    if command == "validate":
        return _validate(config_path)
    return _run(config_path)


def _parser() -> argparse.ArgumentParser:
    # Options live on a parent parser so that both `tollgate -f X validate` and
    # `tollgate validate -f X` work; SUPPRESS keeps a subcommand from erasing them.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-f", "--file", "--config", dest="config", default=argparse.SUPPRESS,
                        metavar="CONFIG", help="config file (env TOLLGATE_CONFIG)")
    common.add_argument("--log-level", default=argparse.SUPPRESS,
                        choices=["debug", "info", "warning", "error"], help="env TOLLGATE_LOG_LEVEL; default info")
    parser = argparse.ArgumentParser(
        prog="tollgate", parents=[common], usage="tollgate [-f CONFIG] [command] ...",
        description="LLM gateway with virtual keys and token and dollar budgets. "
                    "`tollgate -f CONFIG`, with no command, runs a gateway replica.",
        epilog="Run `tollgate COMMAND --help` for a command's options. Docs: README.md and docs/config.md.")
    sub = parser.add_subparsers(dest="command", metavar="{validate,keys,schema,demo}")
    sub.add_parser("validate", parents=[common], help="check a config file: `file:line: problem` for each")
    sub.add_parser("schema", parents=[common], help="print the config's JSON schema")
    demo = sub.add_parser(
        "demo", parents=[common], help="run the whole system locally, on a copy of the deploy files",
        description="Mock upstream, rate-limit service and one gateway on ports 8000, 8080 and 4000 "
                    "(admin 15000), run on a fresh copy of deploy/gateway and deploy/ratelimit: the copy's "
                    "path is printed, edits to it apply live, the repository's files stay as they are, and "
                    "the copy is removed when the demo stops.")
    demo.add_argument("--redis-url", default=None, help="env REDIS_URL; default memory:// (embedded)")
    keys = sub.add_parser("keys", parents=[common], help="virtual key tools")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="{generate}")
    generate = keys_sub.add_parser("generate", help="print a new random key and its keyHash entry")
    generate.add_argument("--metadata", action="append", default=[], metavar="K=V",
                          help="metadata for CEL (apiKey.K); repeatable")
    generate.add_argument("--allowed-model", action="append", default=None, metavar="GLOB",
                          help="restrict the key to these models; repeatable")
    generate.add_argument("--prefix", default="sk-", help="text before the random part (default sk-)")
    generate.add_argument("--keys-dir", type=Path, default=None, metavar="DIR",
                          help="write the entry as DIR/NAME, a keysDir file, instead of printing it")
    generate.add_argument("--name", default=None, help="the file name under --keys-dir (default: the user_id metadata)")
    return parser


def _logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _load(path: str) -> GatewayConfig | None:
    try:
        config = load(path)
    except ConfigError as e:
        for problem in e.problems:
            print(problem, file=sys.stderr)
        return None
    for warning in config.warnings:  # once, here: a running gateway logs a reload's own
        print(f"warning: {warning}", file=sys.stderr)
    return config


def _validate(path: str) -> int:
    config = _load(path)
    if config is None:
        return EXIT_INVALID
    routes = sum(len(lst.routes) for lst in config.listeners)
    print(f"{path}: ok ({len(config.listeners)} listener(s), {routes} route(s))")
    return 0


def _run(path: str) -> int:
    config = _load(path)
    if config is None:
        return EXIT_START
    from gateway.server import ListenError, run  # the request path's imports are not needed to validate

    try:
        run(config)
    except ListenError as e:
        print(f"tollgate: {e}", file=sys.stderr)
        return EXIT_START
    return 0


def _keys(args: argparse.Namespace) -> int:
    metadata = {}
    for item in args.metadata:
        name, sep, value = item.partition("=")
        if not sep or not name:
            print(f"tollgate: --metadata expects K=V, got {item!r}", file=sys.stderr)
            return EXIT_START
        metadata[name] = value
    key, entry = generate_entry(metadata, args.allowed_model, args.prefix)
    if args.keys_dir is None:
        print(key)
        print(as_yaml(entry), end="")
        return 0
    name = args.name or metadata.get("user_id")
    if not name:
        print("tollgate: --keys-dir needs --name (or --metadata user_id=...) for the file name", file=sys.stderr)
        return EXIT_START
    try:
        path = write_key_file(args.keys_dir, name, entry)
    except FileExistsError:
        print(f"tollgate: {args.keys_dir / name} exists; a key file is never replaced (pick another --name)",
              file=sys.stderr)
        return EXIT_START
    except (OSError, ValueError) as e:
        print(f"tollgate: {e}", file=sys.stderr)
        return EXIT_START
    print(key)  # the only copy: the file holds the digest
    print(f"wrote {path}", file=sys.stderr)
    return 0


def _schema() -> int:
    from gateway.config.models import GatewayFile

    schema = GatewayFile.model_json_schema(by_alias=True)
    schema["title"] = "Tollgate gateway config"
    print(json.dumps(_unwrapped(schema), indent=2))
    return 0


def _unwrapped(node: Any) -> Any:
    """`node` with the descriptions' wrapped lines (docstrings wrap at 120 columns) joined."""
    if isinstance(node, list):
        return [_unwrapped(item) for item in node]
    if not isinstance(node, dict):
        return node
    return {key: re.sub(r"(?<!\n)\n(?!\n)", " ", value) if key == "description" and isinstance(value, str)
            else value if key == "default" else _unwrapped(value) for key, value in node.items()}
