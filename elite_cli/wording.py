"""Small helpers that make messages read as sentences. Pure Python: used by the CLI and the core."""

from __future__ import annotations


def counted(count: int, singular: str, plural: str | None = None) -> str:
    """`1 image`, `2 images`, `2 processes` (with plural='processes')."""
    return f"{count} {singular if count == 1 else plural or singular + 's'}"
