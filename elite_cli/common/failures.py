"""Turning exceptions into the one-line messages the CLI prints.

The core raises `EliteError`s whose text is already the message. A few problems surface as
other exceptions (CUDA out of memory, file-system errors on paths the user gave, PIL's
decompression-bomb guard); they are recognised here, by class name where the class lives in a
heavy module, so that reporting an error never imports torch or PIL.
"""

from __future__ import annotations

import errno

from elite_cli.errors import EliteError

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C

OUT_OF_MEMORY = (
    "the GPU ran out of memory; use a smaller --width/--height, fewer images (-n), "
    "--dtype float16, or --device cpu."
)


def user_message(error: BaseException) -> str | None:
    """The message for an error the user can fix, or None for a bug (which deserves a traceback)."""
    if isinstance(error, EliteError):
        return str(error)
    class_name = type(error).__name__
    if class_name == "OutOfMemoryError" or (isinstance(error, RuntimeError) and "out of memory" in str(error).lower()):
        return OUT_OF_MEMORY
    if class_name == "DecompressionBombError":
        return f"the image is too large to open safely ({error}); downscale it below 89 megapixels."
    if class_name == "DatabaseError" and type(error).__module__ == "sqlite3":
        # Only the library index is SQLite; a page can be damaged even when the file opens.
        return f"the library index is damaged ({error}); run `elite check --repair` to rebuild it from the concept files."
    if isinstance(error, IsADirectoryError):
        return f"'{error.filename}' is a folder; pass a file."
    if isinstance(error, NotADirectoryError):
        return f"'{error.filename}' is not a folder; pass a folder."
    if isinstance(error, FileNotFoundError):
        return f"'{error.filename}' does not exist; check the path."
    if isinstance(error, PermissionError):
        return f"permission denied for '{error.filename}'; choose a path you can write to."
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return "the disk is full; free some space or choose another output folder with -o."
    return None


def internal_message(error: BaseException) -> str:
    """The message for an unexpected error: still one line, with the way to learn more."""
    return f"unexpected {type(error).__name__}: {error}; rerun with -v for the traceback and report it."
