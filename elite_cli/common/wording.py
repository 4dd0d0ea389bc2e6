"""Small helpers that make messages read as sentences. Pure Python: used by the CLI and the core."""

from __future__ import annotations


def counted(count: int, singular: str, plural: str | None = None) -> str:
    """`1 image`, `2 images`, `2 processes` (with plural='processes')."""
    return f"{count} {singular if count == 1 else plural or singular + 's'}"


def speed(count: int, seconds: float) -> str:
    """`2.50 images/s`, or below one a second `3.2 s per image` (not `0.31 images/s`)."""
    if count <= 0 or seconds <= 0:
        return "- images/s"
    rate = count / seconds
    return f"{rate:.2f} images/s" if rate >= 1 else f"{seconds / count:.1f} s per image"
