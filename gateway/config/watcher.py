"""Reload the config while running: valid edits take effect, invalid ones are logged.

Polling rather than inotify: a mounted ConfigMap or Secret changes by swapping its
`..data` symlink, which inotify on the file does not see, and polling works the same on
every filesystem. The fingerprint hashes the content (through symlinks) of the config
file and of every regular file in each keysDir, so a swap is seen however fast it is.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from gateway.config.loader import load
from gateway.config.runtime import GatewayConfig
from gateway.config.source import ConfigError

log = logging.getLogger("tollgate.config")

Fingerprint = tuple[tuple[str, object], ...]


def fingerprint(paths: Iterable[Path]) -> Fingerprint:
    return tuple((str(p), _digest(p)) for p in paths)


def _digest(path: Path) -> object:
    try:
        if path.is_dir():
            return tuple(
                (e.name, _file_digest(Path(e.path)))
                for e in sorted(os.scandir(path), key=lambda e: e.name)
                if not e.name.startswith(".") and e.is_file())
        return _file_digest(path)
    except OSError as e:
        return f"unreadable: {e.strerror}"


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class ConfigWatcher:
    """Polls the config file and its keysDirs every `interval` seconds.

    `on_change(config)` receives every valid new config; an invalid one is logged line
    by line and the running config stays. Pass `current` (the config loaded at start)
    so that the first poll compares against it instead of reloading.
    """

    def __init__(self, path: str | os.PathLike[str], on_change: Callable[[GatewayConfig], None],
                 interval: float = 0.5, current: GatewayConfig | None = None) -> None:
        self.path = Path(path)
        self.on_change = on_change
        self.interval = interval
        self.paths: tuple[Path, ...] = current.watch_paths if current else (self.path,)
        self.seen: Fingerprint | None = fingerprint(self.paths) if current else None
        self.reloads = 0  # accepted changes
        self.rejected = 0  # invalid changes kept out
        self.last_error: ConfigError | None = None

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.poll()
            except Exception:  # a watcher that dies silently would freeze the config
                log.exception("config watcher: poll failed")

    async def poll(self) -> bool:
        """Check once; True when a new config was handed to `on_change`."""
        current = await asyncio.to_thread(fingerprint, self.paths)
        if current == self.seen:
            return False
        self.seen = current
        try:
            config = await asyncio.to_thread(load, self.path)
        except ConfigError as e:
            self.rejected += 1
            self.last_error = e
            log.error("config change rejected, keeping the running config:")
            for problem in e.problems:
                log.error("%s", problem)
            return False
        self.last_error = None
        if config.watch_paths != self.paths:
            # A new keysDir: the next poll takes its fingerprint (and reloads once more).
            self.paths = config.watch_paths
            self.seen = None
        self.reloads += 1
        for warning in config.warnings:
            log.warning("%s", warning)
        self.on_change(config)
        return True
