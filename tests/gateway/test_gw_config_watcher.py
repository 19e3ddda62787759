"""The watcher applies valid edits, keeps the running config on invalid ones, and sees
a mounted Secret's `..data` swap."""

import asyncio
import json
import logging
import os
from pathlib import Path

from gateway.config import load
from gateway.config.watcher import ConfigWatcher

CONFIG = """
llm:
  port: {port}
  policies:
    apiKey:
      keysDir: keys
  models: [{{name: "*", provider: openAI}}]
"""


def secret_dir(root: Path, stamp: str, keys: dict[str, str]) -> None:
    """(Re)publish keys the way kubelet updates a Secret volume: a new stamped
    directory, then an atomic rename of the `..data` link."""
    mount = root / "keys"
    mount.mkdir(exist_ok=True)
    target = mount / f"..{stamp}"
    target.mkdir()
    for name, key in keys.items():
        (target / name).write_text(json.dumps({"key": key, "metadata": {"user_id": name}}))
        link = mount / name
        if not link.is_symlink():
            link.symlink_to(Path("..data") / name)
    tmp = mount / "..data_tmp"
    tmp.symlink_to(target.name)
    os.replace(tmp, mount / "..data")


def user(config, key):
    policy = config.listeners[0].routes[0].policies.api_key
    identity = policy.store.find(key)
    return identity.metadata["user_id"] if identity else None


def setup(tmp_path: Path, port: int = 4000):
    secret_dir(tmp_path, "v1", {"mike": "sk-mike-1"})
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG.format(port=port))
    config = load(path)
    changes = []
    watcher = ConfigWatcher(path, changes.append, interval=0.02, current=config)
    return path, config, watcher, changes


async def test_unchanged_files_do_not_reload(tmp_path):
    _, _, watcher, changes = setup(tmp_path)
    assert await watcher.poll() is False
    assert changes == []


async def test_valid_edit_is_applied(tmp_path):
    path, _, watcher, changes = setup(tmp_path)
    path.write_text(CONFIG.format(port=4100))
    assert await watcher.poll() is True
    assert [c.listeners[0].port for c in changes] == [4100]
    assert await watcher.poll() is False  # applied once


async def test_invalid_edit_is_logged_and_ignored(tmp_path, caplog):
    path, _, watcher, changes = setup(tmp_path)
    path.write_text(CONFIG.format(port=4000).replace("port: 4000", "port: 4000\n  portt: 1"))
    with caplog.at_level(logging.ERROR, logger="tollgate.config"):
        assert await watcher.poll() is False
    assert changes == [] and watcher.rejected == 1
    assert f"{path}:4: llm: unknown field 'portt' (did you mean 'port'?)" in caplog.messages
    assert await watcher.poll() is False  # logged once, not on every poll
    path.write_text(CONFIG.format(port=4200))
    assert await watcher.poll() is True
    assert changes[-1].listeners[0].port == 4200 and watcher.last_error is None


async def test_secret_data_swap_is_seen(tmp_path):
    _, config, watcher, changes = setup(tmp_path)
    assert user(config, "sk-mike-1") == "mike"
    secret_dir(tmp_path, "v2", {"mike": "sk-mike-2", "bob": "sk-bob-1"})
    assert await watcher.poll() is True
    new = changes[-1]
    assert user(new, "sk-mike-1") is None
    assert user(new, "sk-mike-2") == "mike" and user(new, "sk-bob-1") == "bob"


async def test_invalid_key_file_keeps_old_keys(tmp_path, caplog):
    _, _, watcher, changes = setup(tmp_path)
    (tmp_path / "keys" / "stray.json").write_text("{oops")
    with caplog.at_level(logging.ERROR, logger="tollgate.config"):
        assert await watcher.poll() is False
    assert changes == []
    assert any(m.startswith(f"{tmp_path / 'keys' / 'stray.json'}:1: invalid JSON") for m in caplog.messages)


async def test_run_loop_picks_up_an_edit(tmp_path):
    path, _, watcher, changes = setup(tmp_path)
    task = asyncio.create_task(watcher.run())
    try:
        path.write_text(CONFIG.format(port=4300))
        for _ in range(250):  # bounded: 5 s at most
            if changes:
                break
            await asyncio.sleep(0.02)
        assert changes and changes[-1].listeners[0].port == 4300
    finally:
        task.cancel()


async def test_without_current_the_first_poll_loads(tmp_path):
    path, _, _, _ = setup(tmp_path)
    changes = []
    watcher = ConfigWatcher(path, changes.append, interval=0.02)
    assert await watcher.poll() is True  # loads, and learns the keysDir to watch
    assert len(watcher.paths) == 2
    await watcher.poll()  # fingerprints the keysDir
    assert await watcher.poll() is False
    assert user(changes[-1], "sk-mike-1") == "mike"

