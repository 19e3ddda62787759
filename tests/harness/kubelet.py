"""A ConfigMap or Secret volume as the kubelet writes it: `..data` links to a stamped
directory and each file is a symlink through `..data`; an update writes a new stamped
directory and swaps `..data` atomically, then removes the old one."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

_generation = itertools.count(1)


def project(volume: Path, files: dict[str, str]) -> None:
    """Writes or updates the volume at `volume` to hold exactly `files` (name -> text)."""
    volume.mkdir(parents=True, exist_ok=True)
    data = volume / f"..2026_01_01_00_00_{next(_generation):02d}.000000001"
    data.mkdir()
    for name, content in files.items():
        (data / name).write_text(content)
    old = (volume / "..data").resolve() if (volume / "..data").exists() else None
    tmp_link = volume / "..data_tmp"
    tmp_link.symlink_to(data.name)
    os.replace(tmp_link, volume / "..data")
    for name in files:
        if not (volume / name).is_symlink():
            (volume / name).symlink_to(Path("..data") / name)
    if old is not None:
        for f in old.iterdir():
            f.unlink()
        old.rmdir()


def key_files(keys: dict[str, str]) -> dict[str, str]:
    """keysDir files for {user: key}: each key's metadata names its user."""
    return {name: json.dumps({"key": key, "metadata": {"user_id": name}}) for name, key in keys.items()}
