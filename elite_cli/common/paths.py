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


def usual_file_mode() -> int:
    """The permissions a new file gets from the user's umask (0644 under the common 022).

    Files written through tempfile.mkstemp start as 0600; without this, generated images and
    model files would stay private to the user (a web server, the group and other accounts
    could not read them), unlike every file made with ordinary tools.
    """
    umask = os.umask(0)  # the only way to read it; set straight back
    os.umask(umask)
    return 0o666 & ~umask


def check_file_exists(path: Path, what: str) -> None:
    """Fail before loading models when a path the user gave is missing."""
    from elite_cli.errors import InputError

    if not path.exists():
        raise InputError(f"{what} '{path}' does not exist; check the path.")
    if path.is_dir():
        raise InputError(f"{what} '{path}' is a folder; pass a file.")
