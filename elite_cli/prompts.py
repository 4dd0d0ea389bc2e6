"""Finding concept placeholders (`<name>`) in prompts. Pure Python: the CLI uses it without torch."""

from __future__ import annotations

import re

# A placeholder is a concept name in angle brackets; names follow the library's rule
# (letters, digits, '-' and '_', 1-64 characters).
PLACEHOLDER = re.compile(r"<([A-Za-z0-9_-]{1,64})>")


def concept_names(prompt: str) -> list[str]:
    """The concept names a prompt mentions, in order of first appearance, without repeats."""
    seen: dict[str, None] = {}
    for match in PLACEHOLDER.finditer(prompt):
        seen.setdefault(match.group(1), None)
    return list(seen)


def split_prompt(prompt: str) -> list[str | tuple[str]]:
    """Split a prompt into plain-text pieces and placeholders.

    Placeholders come back as one-element tuples `(name,)` so callers can tell them from text:
    `split_prompt("a <cat> toy") == ["a ", ("cat",), " toy"]`.
    """
    pieces: list[str | tuple[str]] = []
    position = 0
    for match in PLACEHOLDER.finditer(prompt):
        if match.start() > position:
            pieces.append(prompt[position : match.start()])
        pieces.append((match.group(1),))
        position = match.end()
    if position < len(prompt):
        pieces.append(prompt[position:])
    return pieces
