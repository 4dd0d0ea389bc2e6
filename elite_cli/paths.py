"""Where elite keeps its data. Pure python: the CLI imports this for every command."""

from __future__ import annotations

import os
from pathlib import Path


def default_home() -> Path:
    """The library folder: `$ELITE_HOME` when set (and not empty), else the platform's user data dir.

    On Linux that is `~/.local/share/elite`, on macOS `~/Library/Application Support/elite`, on
    Windows `%LOCALAPPDATA%\\elite`. Every core entry point also takes an explicit `home`.
    """
    override = os.environ.get("ELITE_HOME", "").strip()
    if override:
        return Path(override).expanduser()
    import platformdirs  # only needed when no override is given

    return Path(platformdirs.user_data_dir("elite", appauthor=False))
