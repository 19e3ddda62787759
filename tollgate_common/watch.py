"""Reloading a config when its files change, for both services.

Changes are seen through inotify (watchfiles), not by polling. Measured here on 10,000
key files: a poll that stats every file costs 30 ms of CPU, 6 % of a core at a poll every
0.5 s; watching their directory costs 0.14 % of a core when nothing changes, and sees an
edit, a new file or a Kubernetes `..data` swap within ~0.1 s. Directories are watched,
not files: a mounted ConfigMap or Secret changes by swapping its `..data` symlink, which
a watch on the file would miss. Filesystems without inotify events (NFS, some VM shares)
need WATCHFILES_FORCE_POLLING=1.

A change is applied only once its files have stayed unchanged across two polls: once
inotify reports a change, the files' contents are hashed (a poll), and again one poll
interval later, after loading them; the loaded config is applied only if both hashes
agree and differ from what was last loaded. A writer that pauses mid-file for less than
the interval (a file cut at `- key: user_i` parses, and drops that user's limit) is
never caught half-written, however long it takes in all. Hashing is done only after a
change: 10,000 key files take ~65 ms to hash, 13 % of a core if hashed every 0.5 s.

A bad change is logged line by line and counted; the running config stays.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Generic, TypeVar

import watchfiles

from tollgate_common.problems import ConfigError

C = TypeVar("C")

# The interval between the two polls that must agree before a change is applied: the
# longest pause mid-file a writer can make without its half-written file being applied.
# The gateway's: a key among 10,000 must take effect within a second (README), and two
# hashes of them and a reload take ~0.2 s more. The rate-limit service sets its own.
POLL_SECONDS = 0.3
# How often the watch wakes up with nothing to report (only the first wake-up is used).
IDLE_MS = 1000


def digest(paths: Sequence[Path]) -> bytes:
    """A hash of the files' names and contents: each file, and each file in each directory
    (dot entries such as `..data` skipped, symlinks followed). An unreadable entry hashes
    as its error, so a file that vanishes is a change too. Plain os calls and one hash for
    all: per-file Path objects and hashes took twice as long over 10,000 key files."""
    h = hashlib.blake2b(digest_size=16)
    for path in map(os.fspath, paths):
        try:
            files = ([os.path.join(path, n) for n in sorted(e.name for e in os.scandir(path)
                                                            if not e.name.startswith("."))]
                     if os.path.isdir(path) else [path])
        except OSError as e:
            _add(h, path.encode(), f"unreadable: {e.strerror}".encode())
            continue
        for file in files:
            _add(h, file.encode(), _read(file))
    return h.digest()


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        return f"unreadable: {e.strerror}".encode()


def _add(h: hashlib.blake2b, name: bytes, content: bytes) -> None:
    # Lengths first, so no two different (name, content) sequences hash the same bytes.
    for part in (name, content):
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)


def _dirs_and_filter(paths: Sequence[Path]) -> tuple[list[Path], Callable[[watchfiles.Change, str], bool]]:
    """The directories to watch, and which of their entries matter: a watched file and its
    directory's `..data` link (a mounted ConfigMap), or any entry of a watched directory."""
    dirs: dict[Path, set[str] | None] = {}
    for path in paths:
        if path.is_dir():
            dirs[path] = None
        elif dirs.get(path.parent, set()) is not None:
            dirs.setdefault(path.parent, {"..data"}).add(path.name)

    def relevant(_change: watchfiles.Change, name: str) -> bool:
        entry = Path(name)
        names = dirs.get(entry.parent)
        if names is None:
            return entry.parent in dirs and (not entry.name.startswith(".") or entry.name == "..data")
        return entry.name in names

    return [d for d in dirs if d.is_dir()], relevant


async def changes(paths: Sequence[Path]) -> AsyncIterator[None]:
    """Yields once per burst of changes to `paths`, and once as soon as the watch is in
    place: the files may have changed between reading a config and starting to watch it."""
    dirs, relevant = _dirs_and_filter(paths)
    if not dirs:
        raise FileNotFoundError(f"nothing to watch: {', '.join(map(str, paths))}")
    first = True
    async for batch in watchfiles.awatch(*dirs, watch_filter=relevant, recursive=False,
                                         rust_timeout=IDLE_MS, yield_on_timeout=True):
        if first or batch:
            yield
        first = False


class Reloader(Generic[C]):
    """Loads the config again whenever its files change and hands every valid one on.

    `load()` raises ConfigError for an invalid config: its problems are logged, counted
    in `rejected`, passed to `on_rejected`, and `apply` is not called. `paths()` says what
    to watch; it is asked again after every reload (a config may name a new keysDir).
    `poll` is the interval two agreeing polls must span (see the module's docstring).
    """

    def __init__(self, paths: Callable[[], Sequence[Path]], load: Callable[[], C], apply: Callable[[C], None],
                 log: logging.Logger, poll: float = POLL_SECONDS,
                 on_rejected: Callable[[ConfigError], None] | None = None) -> None:
        self.paths = paths
        self.poll = poll
        self.load = load
        self.apply = apply
        self.on_rejected = on_rejected
        self.log = log
        self.loaded = digest(paths())  # the contents the running config came from
        self.reloads = 0  # accepted changes
        self.rejected = 0  # invalid changes kept out
        self.last_error: ConfigError | None = None

    async def run(self) -> None:
        while True:
            watched = tuple(p.absolute() for p in self.paths())
            try:
                async for _ in changes(watched):
                    await self.settle()
                    if tuple(p.absolute() for p in self.paths()) != watched:
                        break  # watch the new set from now on
            except OSError as e:  # a watched directory vanished: wait for it to come back
                self.log.error("config watch stopped (%s); retrying", e)
                await asyncio.sleep(1.0)

    async def settle(self) -> None:
        """Once the files differ from what was loaded: polls them until two polls, `poll`
        seconds apart with the load between them, find the same contents; then takes
        that load. A load the second poll disagrees with was of files still being written:
        it is dropped unseen, and the second poll starts the next wait."""
        seen = await self._digest()
        while seen != self.loaded:
            await asyncio.sleep(self.poll)
            outcome = await self._load()
            again = await self._digest()
            if again == seen:
                self.loaded = seen
                self._take(outcome)
                return
            seen = again

    async def reload(self) -> bool:
        """Loads once, now; True when a valid config was applied."""
        self.loaded = await self._digest()
        return self._take(await self._load())

    async def _digest(self) -> bytes:
        return await asyncio.to_thread(digest, self.paths())

    async def _load(self) -> C | ConfigError:
        try:
            return await asyncio.to_thread(self.load)
        except ConfigError as e:
            return e

    def _take(self, outcome: C | ConfigError) -> bool:
        """Applies a valid config; logs and counts an invalid one. True when applied."""
        if isinstance(outcome, ConfigError):
            self.rejected += 1
            self.last_error = outcome
            self.log.error("config change rejected, keeping the running config:")
            for problem in outcome.problems:
                self.log.error("%s", problem)
            if self.on_rejected is not None:
                self.on_rejected(outcome)
            return False
        self.last_error = None
        self.reloads += 1
        self.apply(outcome)
        return True
