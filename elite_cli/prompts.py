"""Finding concept placeholders (`<name>`) in prompts. Pure Python: the CLI uses it without torch."""

from __future__ import annotations

import re

from elite_cli.errors import InputError

# A placeholder is a concept name in angle brackets; names follow the library's rule
# (letters, digits, '-' and '_', 1-64 characters).
PLACEHOLDER = re.compile(r"<([A-Za-z0-9_-]{1,64})>")


# What a user meant as a placeholder: from '<' to the next bracket (or the end of the prompt).
BRACKETED = re.compile(r"<[^<>]*>?")


def check_placeholders(prompt: str) -> None:
    """Refuse angle brackets that do not form a `<name>` placeholder.

    Angle brackets have no other use in a prompt, so a stray one is a typo such as `<mycat on
    the beach` or `<my cat>`; generating anyway would quietly drop the concept.
    """
    rest = PLACEHOLDER.sub("", prompt)
    if "<" not in rest and ">" not in rest:
        return
    accepted = "name concepts as <name> (letters, digits, '-' and '_'), e.g. \"<mycat> on the beach\""
    for match in BRACKETED.finditer(prompt):
        text = match.group(0)
        if PLACEHOLDER.fullmatch(text):
            continue
        if not text.endswith(">"):
            raise InputError(f"the prompt {prompt!r} has a '<' without a closing '>'; {accepted}.")
        raise InputError(f"the prompt {prompt!r} has {text!r}, which is not a concept placeholder; {accepted}.")
    raise InputError(f"the prompt {prompt!r} has a '>' without an opening '<'; {accepted}.")


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
