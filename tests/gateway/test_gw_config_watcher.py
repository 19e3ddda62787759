"""Config reload: valid edits take effect, invalid ones are logged and the running config
stays, and a mounted Secret's `..data` swap is seen, through the shared watcher."""

import asyncio
import json
import logging
from pathlib import Path

from gateway.config import load
from tests.harness.kubelet import key_files, project
from tollgate_common.watch import Reloader

CONFIG = """
llm:
  port: {port}
  policies:
    apiKey:
      keysDir: keys
  models: [{{name: "*", provider: openAI}}]
"""
LOG = logging.getLogger("tollgate.config")


def secret_dir(root: Path, stamp: str, keys: dict[str, str]) -> None:
    """(Re)publish keys the way kubelet updates a Secret volume (`stamp` names the version)."""
    project(root / "keys", key_files(keys))


def user(config, key):
    policy = config.listeners[0].routes[0].policies.api_key
    identity = policy.store.find(key)
    return identity.metadata["user_id"] if identity else None


class Running:
    """A replica's reload loop, as gateway/server.py wires it: what it applied, in order."""

    def __init__(self, tmp_path: Path, port: int = 4000) -> None:
        secret_dir(tmp_path, "v1", {"mike": "sk-mike-1"})
        self.path = tmp_path / "config.yaml"
        self.path.write_text(CONFIG.format(port=port))
        self.config = load(self.path)
        self.applied = []
        self.reloader = Reloader(lambda: self.config.watch_paths, lambda: load(self.path), self.apply, LOG)

    def apply(self, config) -> None:
        self.config = config
        self.applied.append(config)

    async def until(self, predicate, seconds: float = 5.0) -> bool:
        for _ in range(int(seconds / 0.02)):
            if predicate():
                return True
            await asyncio.sleep(0.02)
        return predicate()


async def test_valid_edit_is_applied_once(tmp_path):
    r = Running(tmp_path)
    task = asyncio.create_task(r.reloader.run())
    try:
        await asyncio.sleep(0.2)
        r.path.write_text(CONFIG.format(port=4100))
        assert await r.until(lambda: r.applied)
        await asyncio.sleep(1.2)  # past the watch's idle wake-up: nothing more to apply
        assert [c.listeners[0].port for c in r.applied] == [4100]
    finally:
        task.cancel()


async def test_a_change_made_before_the_watch_starts_is_not_missed(tmp_path):
    r = Running(tmp_path)
    r.path.write_text(CONFIG.format(port=4200))  # after the load, before any watch
    task = asyncio.create_task(r.reloader.run())
    try:
        assert await r.until(lambda: r.applied)
        assert r.applied[-1].listeners[0].port == 4200
    finally:
        task.cancel()


async def test_invalid_edit_is_logged_and_ignored(tmp_path, caplog):
    r = Running(tmp_path)
    r.path.write_text(CONFIG.format(port=4000).replace("port: 4000", "port: 4000\n  portt: 1"))
    with caplog.at_level(logging.ERROR, logger="tollgate.config"):
        assert await r.reloader.reload() is False
    assert r.applied == [] and r.reloader.rejected == 1
    assert f"{r.path}:4: llm: unknown field 'portt' (did you mean 'port'?)" in caplog.messages
    r.path.write_text(CONFIG.format(port=4200))
    assert await r.reloader.reload() is True
    assert r.applied[-1].listeners[0].port == 4200 and r.reloader.last_error is None


async def test_secret_data_swap_is_seen(tmp_path):
    r = Running(tmp_path)
    assert user(r.config, "sk-mike-1") == "mike"
    task = asyncio.create_task(r.reloader.run())
    try:
        await asyncio.sleep(0.2)
        secret_dir(tmp_path, "v2", {"mike": "sk-mike-2", "bob": "sk-bob-1"})
        assert await r.until(lambda: r.applied and user(r.applied[-1], "sk-bob-1") == "bob")
        new = r.applied[-1]
        assert user(new, "sk-mike-1") is None and user(new, "sk-mike-2") == "mike"
    finally:
        task.cancel()


async def test_invalid_key_file_keeps_old_keys(tmp_path, caplog):
    r = Running(tmp_path)
    (tmp_path / "keys" / "stray.json").write_text("{oops")
    with caplog.at_level(logging.ERROR, logger="tollgate.config"):
        assert await r.reloader.reload() is False
    assert r.applied == []
    assert any(m.startswith(f"{tmp_path / 'keys' / 'stray.json'}:1: invalid JSON") for m in caplog.messages)


async def test_a_new_keys_dir_is_watched_from_then_on(tmp_path):
    r = Running(tmp_path)
    other = tmp_path / "other-keys"
    other.mkdir()
    (other / "carol").write_text(json.dumps({"key": "sk-carol", "metadata": {"user_id": "carol"}}))
    task = asyncio.create_task(r.reloader.run())
    try:
        await asyncio.sleep(0.2)
        r.path.write_text(CONFIG.format(port=4000).replace("keysDir: keys", "keysDir: other-keys"))
        assert await r.until(lambda: r.applied and user(r.applied[-1], "sk-carol") == "carol")
        (other / "dave").write_text(json.dumps({"key": "sk-dave", "metadata": {"user_id": "dave"}}))
        assert await r.until(lambda: user(r.applied[-1], "sk-dave") == "dave")
    finally:
        task.cancel()
